"""The resume, launch, smoke and train cells: an earlier session's run folder, the `accelerate launch` command,
running it with its output echoed and logged, and the outcome read from the run folder's status.json (never from
the launcher's exit code)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from inference import layout

from .code import walk_dirs


def choose_previous_run(input_root: Path, run_name: str) -> tuple[Path | None, list[str]]:
    """A previous session's run folder `runs/<run_name>` attached as notebook output, if any.

    Several (unusual: two outputs attached) → the one with the most finished folds, then the path."""
    found = []
    for folder, _ in walk_dirs(input_root):
        if folder.name == run_name and folder.parent.name == "runs" and (folder / layout.RUN_CONFIG).is_file():
            done = sum(1 for d in folder.glob(f"fold*/{layout.FOLD_DONE}"))
            found.append((-done, str(folder)))
    if not found:
        return None, [f"previous run: none attached (no runs/{run_name}/{layout.RUN_CONFIG} below {input_root})"]
    found.sort()
    best = Path(found[0][1])
    return best, [f"previous run: {best} ({-found[0][0]} fold(s) done)"] + [f"  not chosen: {p}" for _, p in found[1:]]


def resume(input_root: str | Path, working: str | Path, run_name: str) -> tuple[Path, list[str]]:
    """WORKING/runs/<run_name>, continuing an attached earlier session's run folder if there is one."""
    run_dir = Path(working) / "runs" / run_name
    previous, lines = choose_previous_run(Path(input_root), run_name)
    if previous is not None and not (run_dir / layout.RUN_CONFIG).exists():
        shutil.copytree(previous, run_dir, dirs_exist_ok=True)
        lines.append(f"continuing it in {run_dir}; its last session ended: {read_status(run_dir)['status']}")
    return run_dir, lines


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(code: Path, cpu: bool, processes: int) -> tuple[list[str], dict]:
    """`accelerate launch` with one process per GPU (fp16), or real CPU processes (gloo) for the rehearsal:
    `--cpu --num_processes 2` would start ONE process; --multi_gpu with ACCELERATE_USE_CPU=yes starts real ranks.
    The ranks meet on a free port, not the default 29500: on a shared machine another job's ranks may be there."""
    env = {**os.environ, "PYTHONPATH": str(code), "TQDM_MININTERVAL": "30", "PYTHONUNBUFFERED": "1"}
    if cpu:
        env.update(ACCELERATE_USE_CPU="yes", OMP_NUM_THREADS="1")
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1", "--num_processes",
              str(processes), "--mixed_precision", "no" if cpu else "fp16", "--dynamo_backend", "no",
              "--main_process_port", str(free_port())]
    return launch + (["--multi_gpu"] if processes > 1 else []), env


def options(values: dict) -> list[str]:
    """{key: value} → training CLI options (values as YAML: lists [a, b], null, true)."""
    out = []
    for key, value in values.items():
        text = ("null" if value is None else "true" if value is True else "false" if value is False
                else "[" + ", ".join(map(str, value)) + "]" if isinstance(value, list) else str(value))
        out += [f"--{key}", text]
    return out


def run_logged(cmd: list[str], log_path: Path, cwd: Path, env: dict) -> tuple[int, str]:
    """Run cmd, echo its output as it comes and into log_path; (exit code, output).

    A progress bar redraws itself with carriage returns: only its last state before a newline is kept.
    A clean time-limit stop (every process exits 75) makes torch's launcher print a ChildFailedError report:
    it goes to the log file only."""
    print("$", " ".join(cmd), flush=True)
    lines, quiet = [], False
    with open(log_path, "a") as log, subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                                      stderr=subprocess.STDOUT) as proc:
        for raw in proc.stdout:  # bytes, split at b"\n" only
            shown = [part for part in raw.decode("utf-8", "replace").rstrip("\n").split("\r") if part.strip()]
            if shown:
                line = shown[-1] + "\n"
                quiet = quiet or ("torch/distributed/elastic" in line and "(exitcode: 75)" in line)
                if not quiet:
                    print(line, end="", flush=True)
                log.write(line)
                lines.append(line)
    if quiet:
        print(f"(a process exited 75, a clean time-limit stop: the launcher's ChildFailedError report is in "
              f"{log_path})")
    return proc.returncode, "".join(lines)


def read_status(run_dir: Path) -> dict:
    """Training's outcome from status.json in the run folder (rank 0 writes it when the run starts and ends).

    The launcher's exit code is never used: `accelerate launch` returns 1 when the ranks exit 75 (a
    clean time-limit stop). No file, or "running" after the launcher returned, is a failure (a crash)."""
    path = Path(run_dir) / layout.STATUS
    try:
        status = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        status = {}
    if status.get("status") in ("complete", "time_limit"):
        return {**status, "source": str(path)}
    return {"status": "failed", "folds_done": status.get("folds_done"), "model_dir": None,
            "processes": status.get("processes"), "source": str(path) if status else None}


def epoch_seconds_total(run_dir: Path) -> float:
    """The run's epochs so far (every session), from the per-fold logs."""
    total = 0.0
    for log_csv in sorted(Path(run_dir).glob(f"fold*/{layout.RUN_LOG}")):
        with open(log_csv, newline="") as f:
            total += sum(float(row["epoch_seconds"]) for row in csv.DictReader(f))
    return total
