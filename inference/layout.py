"""Where things are: the file names of a model folder and of a training run folder, in one place.

Standard library only, and `inference/__init__.py` imports nothing eagerly, so `import inference.layout`
works before anything is installed (the Kaggle notebook's helper module reads it in its install cell).
Every other file asks this module instead of spelling a name out.
"""

from __future__ import annotations

import os
from pathlib import Path

# --- a model folder: what `save_pretrained` + finalize write, what the Space downloads -------------------
CONFIG = "config.json"  # the model's constructor arguments (PyTorchModelHubMixin)
WEIGHTS = "model.safetensors"
ONNX = "model.onnx"  # what the Space runs (onnxruntime)
CARD = "README.md"  # the model card
GUARD_ARRAYS = "guard.safetensors"  # out-of-scope guard statistics (inference/guard.py)
GUARD_JSON = "guard.json"
OPERATING_POINTS = "operating_points.json"  # triage lines (inference/triage.py)
METRICS = "metrics.json"
PLOTS = ("roc.png", "reliability.png", "confusion_matrix.png", "training_curves.png")  # finalize draws them
TRAINING_CONFIG = "training_config.yaml"  # the recipe that trained it
# What serving downloads; the guard and operating-point files are optional (answers then say so).
SERVED_FILES = (CONFIG, WEIGHTS, ONNX, CARD, GUARD_ARRAYS, GUARD_JSON, OPERATING_POINTS)

# --- a training run folder (train/run_folder.py claims it) -------------------------------------------------
STATUS = "status.json"  # "running" / "complete" / "time_limit", folds done, processes; the notebook reads it
RUN_CONFIG = "config.yaml"
FOLDS = "folds.csv"
MODEL_DIR = "model"  # the final model folder inside a run folder
OOF = "oof_predictions.csv"  # every trained fold's validation rows, with logits and calibrated probabilities
RUN_LOG = "log.csv"  # one row per epoch (each fold folder's own, and all folds' in the run folder)
LOGIT_PREFIX = "logit_"  # out-of-fold tables: one column per class, "logit_mel", ...
# --- inside a fold folder, fold_dir(run, n) ---------------------------------------------------------------------
STATES = "states"  # resumable epoch states (train/checkpoint.py); removed when the fold is done
BEST = "best"  # the fold's best model so far: CONFIG + WEIGHTS + BEST_JSON + VAL_PREDICTIONS
BEST_JSON = "best.json"  # {"fold", "epoch", "melanoma_auc"} of that model
VAL_PREDICTIONS = "val_predictions.csv"  # its validation logits, one row per image
FOLD_DONE = "DONE"  # written last: the fold is finished and is never resumed

# --- the data: one default for the tests, benches and rehearsals ------------------------------------------------
DATA_ENV = "MELANOMA_DATA"  # where the real data sets are; default: ../shared/data beside the repository


def fold_dir(run: Path | str, fold: int) -> Path:
    """A run folder's folder for one fold: `fold0`, `fold1`, ..."""
    return Path(run) / f"fold{fold}"


def data_root(repo: Path | str) -> Path:
    """$MELANOMA_DATA, else ../shared/data beside the repository at `repo` (its layout: that folder's README.md)."""
    return Path(os.environ.get(DATA_ENV) or Path(repo).resolve().parent / "shared" / "data")


def logit_columns(classes: tuple[str, ...] | list[str]) -> list[str]:
    """The out-of-fold table's logit column names, in class order."""
    return [f"{LOGIT_PREFIX}{c}" for c in classes]
