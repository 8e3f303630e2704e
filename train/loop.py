"""The accelerate training loop, in the shape of accelerate's `examples/cv_example.py`.

`training_function(cfg)` checks the recipe and the data, claims the run folder, trains each
requested fold (`train_fold`: `setup_fold`, then `run_epoch` + `save_epoch` per epoch, then
`finish_fold`), and the main process writes the OOF predictions, metrics, plots, card and final
model (`finalize`). `main()` turns bad input into one clear line and a non-zero exit.

Launch: `python -m train ...` (one process) or `accelerate launch -m train ...` (several).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pandas as pd
import torch
import torch.nn.functional as F
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import is_tensorboard_available

from inference import layout
from inference.layout import BEST, BEST_JSON, FOLD_DONE, RUN_LOG, STATES, VAL_PREDICTIONS, logit_columns
from inference.model import CLASSES, probabilities

from . import checkpoint, publish
from .checkpoint import FoldProgress
from .config import Config, resolve_config, with_backbone_defaults
from .epoch import Clock, train_one_epoch, validate
from .errors import LOST_PEER, ConfigError, TrainError, TrainingError, lost_peer
from .finalize import finalize
from .metrics import MEL, auc
from .ranks import any_rank, machines
from .run_folder import claim_run_folder, load_run_data, write_status
from .setup import FoldSetup, check_recipe, setup_fold

EXIT_TIME_LIMIT = 75  # EX_TEMPFAIL: stopped by --time_limit; `--resume` continues
Outcome = Literal["complete", "time_limit"]


@dataclass
class EpochResult:
    row: dict  # the fold's log.csv row
    improved: bool  # best validation melanoma AUC so far
    val_table: pd.DataFrame  # validation logits per image (saved with a best model)
    skipped: list[str]  # unreadable images met this epoch (bad_images: skip)


def run_epoch(accelerator: Accelerator, cfg: Config, fs: FoldSetup, progress: FoldProgress, clock: Clock,
              epoch: int) -> EpochResult | None:
    """Train and validate one epoch and record it in `progress`; None if the time limit cut it short
    (the partial epoch is dropped: the previous complete state stands)."""
    start = time.monotonic()
    fs.train_ds.set_epoch(epoch)
    fs.train_dl.set_epoch(epoch)
    stats = train_one_epoch(accelerator, fs.model, fs.train_dl, fs.optimizer, fs.scheduler, fs.class_weights, cfg,
                            clock, desc=f"fold {progress.fold} epoch {epoch + 1}/{cfg.epochs}", ema=fs.ema)
    if stats["stopped"]:
        return None
    val = validate(accelerator, fs.eval_model(), fs.val_dl, cfg.bad_images)
    val_auc = auc((val["label"] == MEL).astype(int), probabilities(val["logits"], 1.0)[:, MEL])
    skipped = stats["skipped"] + val["skipped"]
    row = {"fold": progress.fold, "epoch": epoch + 1, "train_loss": stats["loss"],
           "val_loss": float(F.cross_entropy(torch.from_numpy(val["logits"]), torch.from_numpy(val["label"]))),
           "val_melanoma_auc": val_auc, "lr": fs.scheduler.get_last_lr()[0],
           "train_images_per_s": stats["images"] / stats["seconds"], "epoch_seconds": time.monotonic() - start,
           "skipped_images": len(skipped)}
    improved = progress.record(row, val_auc)
    accelerator.log({f"fold{progress.fold}/{k}": v for k, v in row.items()
                     if k not in ("fold", "epoch") and v is not None}, step=epoch + 1)
    table = pd.DataFrame(val["logits"], columns=logit_columns(CLASSES))
    table.insert(0, "image_id", fs.val_rows["image_id"].to_numpy()[val["index"]])
    table.insert(1, "label", [CLASSES[i] for i in val["label"]])
    return EpochResult(row, improved, table.sort_values("image_id").reset_index(drop=True), skipped)


def save_epoch(accelerator: Accelerator, cfg: Config, fs: FoldSetup, progress: FoldProgress, result: EpochResult,
               fold_dir: Path, latest: Path | None) -> Path:
    """Write this epoch's resumable state (and the best model if it improved); returns the new state."""
    unwrapped = accelerator.unwrap_model(fs.eval_model())
    checkpoint.assert_finite(unwrapped, f"save the fold {progress.fold} epoch {progress.epochs_done} checkpoint")
    states, main = fold_dir / STATES, accelerator.is_main_process
    pending = checkpoint.begin(states, progress.epochs_done, main)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(pending.tmp))  # every process: accelerate saves per-process RNG states
    accelerator.wait_for_everyone()  # every process's files are in before rank 0 renames the folder
    if main:
        if fs.ema is not None:
            fs.ema.save(pending.tmp)
        if result.improved:
            unwrapped.save_pretrained(pending.tmp / BEST)  # config.json + model.safetensors, no `module.` prefixes
            result.val_table.to_csv(pending.tmp / BEST / VAL_PREDICTIONS, index=False)
            (pending.tmp / BEST / BEST_JSON).write_text(json.dumps(
                {"fold": progress.fold, "epoch": progress.best_epoch, "melanoma_auc": progress.best_auc}))
        checkpoint.commit(pending, progress, latest)
        checkpoint.prune(states, cfg.keep_states)
        pd.DataFrame(progress.history).to_csv(fold_dir / RUN_LOG, index=False)
        if result.skipped:
            with open(fold_dir / "skipped_images.txt", "a") as f:
                f.write("".join(f"epoch {progress.epochs_done}: {e}\n" for e in result.skipped))
    accelerator.wait_for_everyone()
    return pending.final


def print_epoch(accelerator: Accelerator, cfg: Config, progress: FoldProgress, row: dict) -> None:
    def f(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.4f}"

    best = "n/a" if progress.best_auc is None else f"{f(progress.best_auc)} @ {progress.best_epoch}"
    skipped = f"  skipped {row['skipped_images']} unreadable images" if row["skipped_images"] else ""
    accelerator.print(
        f"fold {row['fold']} epoch {row['epoch']}/{cfg.epochs}  train_loss {row['train_loss']:.4f}  "
        f"val_loss {row['val_loss']:.4f}  val_mel_auc {f(row['val_melanoma_auc'])} (best {best})  "
        f"lr {row['lr']:.2e}  {row['train_images_per_s']:.1f} img/s  {row['epoch_seconds']:.0f}s{skipped}")
    if progress.patience_spent(cfg.patience):
        accelerator.print(f"fold {row['fold']}: early stop, no better validation AUC for {cfg.patience} epochs")


def resume_fold(accelerator: Accelerator, fs: FoldSetup, states: Path, fold: int) -> tuple[FoldProgress, Path | None]:
    """The fold's newest complete state loaded into the prepared objects, or a fresh start."""
    latest = checkpoint.latest_state(states)
    if latest is None:
        return FoldProgress(fold), None
    accelerator.load_state(str(latest))
    if fs.ema is not None:
        fs.ema.load(latest)
    progress = checkpoint.read_progress(latest)
    accelerator.print(f"fold {fold}: resumed from {latest} (epoch {progress.epochs_done} done)")
    return progress, latest


def finish_fold(accelerator: Accelerator, fold: int, fold_dir: Path, latest: Path | None) -> None:
    """Promote the best model of the last state to `fold_dir/best`, mark the fold DONE, free its states."""
    if latest is None or not (latest / BEST).is_dir():
        raise TrainingError(f"fold {fold}: finished without a best model (validation AUC was never defined).")
    if accelerator.is_main_process:
        tmp = fold_dir / ".tmp-best"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(latest / BEST, tmp)
        checkpoint.replace_dir(tmp, fold_dir / BEST)
        shutil.copy2(latest / checkpoint.PROGRESS, fold_dir / checkpoint.PROGRESS)
        (fold_dir / FOLD_DONE).write_text("ok\n")
        shutil.rmtree(fold_dir / STATES, ignore_errors=True)  # a finished fold is never resumed: free the disk
    accelerator.wait_for_everyone()


def train_fold(accelerator: Accelerator, cfg: Config, train_rows: pd.DataFrame, val_rows: pd.DataFrame, fold: int,
               run: Path, clock: Clock) -> Outcome:
    """Train one fold to its end (or early stop), resuming from its newest complete state."""
    fold_dir = layout.fold_dir(run, fold)
    if (fold_dir / FOLD_DONE).is_file():
        accelerator.print(f"fold {fold}: already done, skipping")
        return "complete"
    if accelerator.is_main_process and (removed := checkpoint.clean_incomplete(fold_dir / STATES)):
        accelerator.print(f"fold {fold}: removed incomplete state(s) {', '.join(removed)}")
    accelerator.wait_for_everyone()
    fs = setup_fold(accelerator, cfg, train_rows, val_rows, fold)
    progress, latest = resume_fold(accelerator, fs, fold_dir / STATES, fold)
    accelerator.print(f"fold {fold}: {len(fs.train_ds)} training / {len(val_rows)} validation images "
                      f"({int(val_rows.target.sum())} melanomas), {fs.steps_per_epoch} optimizer steps per epoch")
    outcome: Outcome = "complete"
    epoch_seconds = None
    for epoch in range(progress.epochs_done, cfg.epochs):
        if progress.patience_spent(cfg.patience):
            break
        if epoch_seconds is not None and any_rank(accelerator, clock.expired(margin=1.1 * epoch_seconds)):
            outcome = "time_limit"  # the next epoch would not finish in time: stop at a complete state
            break
        start = time.monotonic()
        result = run_epoch(accelerator, cfg, fs, progress, clock, epoch)
        if result is None:
            outcome = "time_limit"
            break
        latest = save_epoch(accelerator, cfg, fs, progress, result, fold_dir, latest)
        print_epoch(accelerator, cfg, progress, result.row)
        epoch_seconds = time.monotonic() - start
    if outcome == "complete":
        finish_fold(accelerator, fold, fold_dir, latest)
    accelerator.free_memory()  # drop this fold's model/optimizer from accelerate's lists before the next
    return outcome


def training_function(cfg: Config) -> dict:
    """Check, claim, train the requested folds, then report (and push) on the main process."""
    clock = Clock(cfg.time_limit_seconds)
    if cfg.push_to_hub and not os.environ.get("HF_TOKEN"):
        raise ConfigError("--push_to_hub needs a Hugging Face write token in the HF_TOKEN environment variable.")
    accelerator = Accelerator(
        mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.grad_accum,
        log_with="tensorboard" if is_tensorboard_available() else None, project_dir=cfg.output_dir,
        # shuffling seeded by data_seed + epoch: identical on every process and after a resume
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=cfg.seed))
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != accelerator.num_processes:
        raise ConfigError(f"{launched} processes were launched but each sees {accelerator.num_processes} "
                          f"(device {accelerator.device}): they would train side by side into one folder. On a CPU "
                          "machine launch with `ACCELERATE_USE_CPU=yes accelerate launch --multi_gpu --num_processes "
                          f"{launched} ...`; on GPUs check that CUDA sees them.", same_on_every_rank=False)
    check_recipe(cfg)
    data = load_run_data(cfg)
    spans = machines(accelerator)
    run = claim_run_folder(accelerator, cfg, data, spans)
    accelerator.print(f"{data.summary}; {accelerator.num_processes} process(es) on {accelerator.device}"
                      f"{f' across {spans} machines' if spans > 1 else ''}, mixed precision {accelerator.mixed_precision}")
    outcome: Outcome = "complete"
    for fold in cfg.folds_to_train:
        in_fold = data.fold_of == fold
        outcome = train_fold(accelerator, cfg, data.frame[~in_fold], data.frame[in_fold], fold, run, clock)
        if outcome != "complete":
            break
    done = [f for f in cfg.folds_to_train if (layout.fold_dir(run, f) / FOLD_DONE).is_file()]
    result = {"status": outcome, "folds_done": done, "model_dir": None, "commit": None,
              "processes": accelerator.num_processes, "machines": spans}
    # What is left is rank 0's alone (finalize: OOF table, guard fit, ONNX export; the Hub push): end the process
    # group first, so that no rank waits in a collective meanwhile. A waiting rank would hit the collective
    # timeout (NCCL's default is 10 minutes; finalize takes about that on a T4), die, and take the run down with
    # it, status.json still saying "running".
    accelerator.wait_for_everyone()
    accelerator.end_training()  # closes the trackers, destroys the process group
    if accelerator.is_main_process:
        if outcome != "complete":
            accelerator.print(f"Stopped by the time limit after folds {done or 'none'}; continue with --resume.")
        model_dir = finalize(cfg, run, data, done, partial=outcome != "complete")
        if model_dir is not None:
            result["model_dir"] = str(model_dir)
            accelerator.print(f"Model, metrics and card: {model_dir}")
            if cfg.push_to_hub:
                result["commit"] = publish.push(model_dir, cfg.push_to_hub, os.environ["HF_TOKEN"])
                accelerator.print(f"Pushed to https://huggingface.co/{cfg.push_to_hub}/tree/{result['commit']} "
                                  f"- pin it as {cfg.push_to_hub}@{result['commit']}")
        write_status(run, result)
    return result


def main(argv: list[str] | None = None) -> int:
    rank = int(os.environ.get("RANK", "0"))
    try:
        result = training_function(with_backbone_defaults(resolve_config(argv)))
    except TrainError as err:
        if rank == 0 or not err.same_on_every_rank:
            where = "" if rank == 0 else f" (rank {rank})"
            # one write of the whole line: ranks share the launcher's stderr, and print() writes the text and
            # its newline separately, so two ranks' lines could run together
            sys.stderr.write(f"error{where}: " + " ".join(str(err).split()) + "\n")
            sys.stderr.flush()
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted; continue with --resume", file=sys.stderr)
        return 130
    except RuntimeError as err:  # a machine or process of a multi-process run died: one line, not a traceback
        if int(os.environ.get("WORLD_SIZE", "1")) < 2 or not lost_peer(err):
            raise
        # on a line of its own: it usually cuts a progress bar short
        sys.stderr.write(f"\nerror (rank {rank}): {LOST_PEER} [{str(err).splitlines()[0][:200]}]\n")
        sys.stderr.flush()
        return 1
    # Only rank 0 says how the run ended. The other ranks' part is over once the process group has ended, and a
    # non-zero exit from one of them would make the launcher stop rank 0 in the middle of its finalize.
    return EXIT_TIME_LIMIT if rank == 0 and result["status"] == "time_limit" else 0
