"""The run folder: the data and folds a run trains on, claiming the folder, and its status marker.

A run folder is claimed (config.yaml, folds.csv written) only after the recipe and the data have
passed every check, so a bad option or a missing file leaves nothing behind to clean up.
`status.json` says how the last session ended: "running" (it is, or it crashed), "complete", or
"time_limit" (run again with --resume), and how many processes on how many machines trained; the Kaggle notebook reads
it instead of exit codes, which `accelerate launch` turns into 1 for any non-zero rank.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml
from accelerate import Accelerator

from inference.layout import FOLDS, RUN_CONFIG, STATUS

from .config import Config, recipe_changes, to_yaml
from .data import config_sources
from .errors import ConfigError, DataError
from .folds import assign_folds, fold_table



@dataclass
class RunData:
    frame: pd.DataFrame  # every labelled row (train/data.py)
    fold_of: pd.Series  # each row's fold
    folds_csv: pd.DataFrame  # what folds.csv holds
    summary: str  # one line for the log


def load_run_data(cfg: Config) -> RunData:
    """Load and check every source, make the folds, and check each trained fold can be scored."""
    frame, duplicates = config_sources(cfg)
    fold_of = assign_folds(frame, cfg.folds, cfg.seed, duplicates, cfg.fold_source)
    for fold in cfg.folds_to_train:
        n_rows, n_mel = int((fold_of == fold).sum()), int(frame.target[fold_of == fold].sum())
        if n_mel in (0, n_rows):
            raise DataError(f"Validation fold {fold} has {n_mel} melanomas among {n_rows} images: "
                            "melanoma AUC is undefined. Use fewer folds or more data.")
    per_source = ", ".join(f"{s}: {n}" for s, n in frame.source.value_counts().items())
    summary = (f"{class_by_source(frame)}\n{len(frame)} images ({per_source}), {int(frame.target.sum())} melanomas; "
               f"{cfg.folds} folds, training {cfg.folds_to_train}")
    return RunData(frame, fold_of, fold_table(frame, fold_of, duplicates), summary)


def class_by_source(frame: pd.DataFrame) -> str:
    """The class × source table of the rows, and a warning for each class that only one source supplies:
    the model can then predict that class from the source's look (camera, clinic, resizing) instead of
    the lesion, which validation on the same sources rewards and images from other clinics expose."""
    counts = pd.crosstab(frame.label, frame.source)
    lines = ["class × source:", counts.to_string()]
    if counts.shape[1] > 1:
        for label, row in counts.iterrows():
            if (row > 0).sum() == 1:
                lines.append(f"warning: class {label!r} comes from one source only ({row.idxmax()}): the model can "
                             "learn it from that source's look rather than the lesion.")
    return "\n".join(lines)


def check_resumable(cfg: Config, run: Path, folds_csv: pd.DataFrame) -> None:
    """A folder holding a run is continued only with --resume, the same recipe and the same folds."""
    saved = run / RUN_CONFIG
    if not saved.is_file():
        return
    if not cfg.resume:
        raise ConfigError(f"{run} already holds a run; pass --resume to continue it or choose another output_dir.")
    changes = recipe_changes(yaml.safe_load(saved.read_text()), cfg)
    if changes:
        raise ConfigError(f"--resume: the recipe differs from the saved run in {', '.join(changes)}; "
                          f"resume with the same settings or start a new output_dir.")
    old = run / FOLDS
    if old.is_file() and not pd.read_csv(old, dtype={"image_id": str})[["image_id", "fold"]].equals(
            folds_csv[["image_id", "fold"]].reset_index(drop=True)):
        raise DataError(f"--resume: the data or folds differ from {old}; resume with the same data.")


def claim_run_folder(accelerator: Accelerator, cfg: Config, data: RunData, machines: int = 1) -> Path:
    """Check (every process: same files, same answer), then the main process writes config and folds."""
    run = Path(cfg.output_dir)
    check_resumable(cfg, run, data.folds_csv)
    accelerator.wait_for_everyone()  # every rank has checked the folder before rank 0 writes into it
    if accelerator.is_main_process:
        run.mkdir(parents=True, exist_ok=True)
        (run / RUN_CONFIG).write_text(to_yaml(cfg))
        data.folds_csv.to_csv(run / FOLDS, index=False)
        write_status(run, {"status": "running", "folds_done": [], "model_dir": None, "commit": None,
                           "processes": accelerator.num_processes, "machines": machines})
    accelerator.wait_for_everyone()
    if accelerator.log_with:  # TensorBoard only when it is installed; the CSV logs are always written
        accelerator.init_trackers("tensorboard")
    return run


def write_status(run: Path, status: dict) -> None:
    """Replace status.json atomically (a reader never sees half a file)."""
    tmp = run / f".{STATUS}.tmp"
    tmp.write_text(json.dumps(status, indent=1) + "\n")
    os.replace(tmp, run / STATUS)
