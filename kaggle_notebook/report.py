"""The train, push and results cells: what to say about the outcome and the smoke run, and the Hub push."""

from __future__ import annotations

import re
from pathlib import Path

from inference import layout


_EXCEPTION_LINE = re.compile(r"^(\[rank\d+\]: )?[A-Za-z_][\w.]*(Error|Exception|Interrupt)(: .*)?$")


def outcome_message(status: dict, run_dir: Path, minutes: float, exit_code: int, log_tail: str, log_path: Path) -> str:
    """What to print after training; raises SystemExit for a failed run (the run folder is kept: it resumes)."""
    if status["status"] == "complete":
        return f"Training complete ({minutes:.1f} min): {status.get('model_dir') or run_dir / layout.MODEL_DIR}"
    if status["status"] == "time_limit":
        return (f"Stopped by the time limit after folds {status.get('folds_done')} ({minutes:.1f} min), with a "
                f"resumable state in {run_dir}: run again with this output attached (Add data → Notebook output → "
                f"this notebook, or `python -m deploy kaggle push --username YOU --resume`). The launcher's exit "
                f"code {exit_code} is expected: each process exits 75 on a clean stop.")
    lines = log_tail.splitlines()
    errors = [line for line in lines if line.startswith(("error:", "error (rank"))]
    # a crash the training code did not expect ends in a traceback: its last line names the exception
    crashes = [line.strip() for line in lines if _EXCEPTION_LINE.match(line.strip())]
    raise SystemExit(f"Training failed (launcher exit code {exit_code}): "
                     + (errors[-1] if errors else f"{crashes[-1]} (the traceback is above and in {log_path})"
                        if crashes else f"see the output above and {log_path}")
                     + f". The run folder {run_dir} is kept: fix the cause and run again (it resumes).")


def smoke_verdict(smoke: dict, cpu: bool, plan: float) -> str:
    """One line of the smoke run's figures; SystemExit if a GPU trains at under half the plan."""
    slowest = min(r["images_per_s"] for r in smoke["ranks"])
    line = (f"smoke: {slowest:.1f} images/s per {'process' if cpu else 'GPU'} (slowest of {len(smoke['ranks'])}), "
            f"loader wait {max(r['loader_wait_share'] for r in smoke['ranks']):.0%} of step time, peak GPU memory "
            + (f"{max(r['peak_gpu_memory_gb'] for r in smoke['ranks']):.1f} GB" if not cpu else "n/a (CPU)"))
    if plan and slowest < 0.5 * plan:
        raise SystemExit(f"{line}\nSmoke run: {slowest:.1f} images/s per GPU is far below the plan's {plan:.0f}; the "
                         "5 folds would not fit the session. A loader wait share near 100 % means the CPUs cannot "
                         "decode fast enough (smaller image_size, the matching jpeg-melanoma-NxN dataset, lighter "
                         "augment); otherwise check that both GPUs are in use.")
    return line


def push_model(model_dir: Path, hf_repo: str, secret: str, fake_record: str = "") -> tuple[str | None, str]:
    """Push a complete model folder as ONE commit; (its sha or None, the line to print). The token comes from the
    Kaggle secret and is never printed or written; `fake_record` (rehearsal) records the upload instead."""
    from train import publish

    api, token = None, None
    if fake_record:  # the rehearsal's stand-in for the Hub: it records, uploads nothing
        from deploy.recording_hub import RecordingHubApi

        api, token = RecordingHubApi(fake_record), "rehearsal"
    else:
        try:
            from kaggle_secrets import UserSecretsClient
            token = UserSecretsClient().get_secret(secret)
        except Exception as err:  # not on Kaggle, or no such secret: the run's result is kept either way
            return None, (f"not pushing: no Kaggle secret {secret} ({err.__class__.__name__}); add it under "
                          "Add-ons → Secrets, then run this cell again")
    try:
        sha = publish.push(model_dir, hf_repo, token, api=api)
    except publish.PushError as err:
        return None, f"push failed: {err}"
    return sha, (f"Pushed to https://huggingface.co/{hf_repo}/tree/{sha} - pin it as {hf_repo}@{sha}"
                 + (f" (rehearsal: recorded in {fake_record}, nothing was uploaded)" if fake_record else ""))
