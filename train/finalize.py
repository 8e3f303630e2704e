"""After the folds: OOF predictions, temperature, metrics.json, plots, model card and the final model folder.

Main process only. The published model is the model of the first trained fold (a fixed rule: picking
the fold with the best score would publish a lucky draw); the out-of-fold metrics estimate how such
a single fold model does on patients it has not seen. The temperature is fitted on all OOF logits.
The published model also gets its out-of-scope guard and triage lines (train/fit_guard.py).
Everything is built in a temporary folder and renamed into `model/` at the end, so `model/` is
either the previous complete one or the new complete one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd

from inference.guard import GUARD_ARRAYS, GUARD_JSON
from inference.layout import (BEST, BEST_JSON, CARD, FOLDS, METRICS, MODEL_DIR, OOF, PLOTS, RUN_LOG, TRAINING_CONFIG,
                              VAL_PREDICTIONS, fold_dir, logit_columns)
from inference.model import CLASSES, probabilities
from inference.triage import OPERATING_POINTS

from . import metrics as M
from . import plots
from .card import model_card
from .checkpoint import assert_finite, replace_dir
from .config import Config, to_yaml
from .fit_guard import fit_guard
from .network import MelanomaModel
from .onnx_export import export_onnx
from .run_folder import RunData

LOGITS = logit_columns(CLASSES)


def out_of_fold(run: Path, frame: pd.DataFrame, folds: list[int]) -> pd.DataFrame:
    """Each trained fold's best-epoch validation logits, one row per image, with the image's metadata."""
    parts = []
    for fold in folds:
        part = pd.read_csv(fold_dir(run, fold) / BEST / VAL_PREDICTIONS, dtype={"image_id": str})
        part.insert(1, "fold", fold)
        parts.append(part)
    info = frame[["image_id", "source", "target", "age", "sex", "site"]]
    return pd.concat(parts, ignore_index=True).merge(info, on="image_id", how="left", validate="one_to_one")


def scored_oof(oof: pd.DataFrame, temperature: float) -> pd.DataFrame:
    """The OOF table with calibrated class, melanoma and malignant probabilities added."""
    probs = probabilities(oof[LOGITS].to_numpy(), temperature)
    out = oof.copy()
    for i, c in enumerate(CLASSES):
        out[f"prob_{c}"] = probs[:, i]
    out["melanoma_probability"] = probs[:, M.MEL]
    out["malignant_probability"] = probs[:, M.MALIGNANT_IDX].sum(axis=1)
    return out


def run_summary(cfg: Config, run: Path, folds_done: list[int], partial: bool, history: pd.DataFrame) -> dict:
    """What metrics.json says about the run itself (beside the scores)."""
    return {
        "complete": not partial and folds_done == cfg.folds_to_train,
        "folds_total": cfg.folds, "folds_requested": cfg.folds_to_train, "folds_trained": folds_done,
        "per_fold_best": {str(f): json.loads((fold_dir(run, f) / BEST / BEST_JSON).read_text())
                          for f in folds_done},
        "published_fold": folds_done[0],
        "model_selection_note": "Each fold's best epoch is chosen by melanoma AUC on that same validation fold, so "
                                "these out-of-fold figures are slightly optimistic.",
        "train_images_per_s_mean": float(history["train_images_per_s"].mean()),
        "weight_average": None,  # trained, not averaged: `studies.soup` lists the models it averaged here
    }


def write_plots(oof: pd.DataFrame, result: dict, history: pd.DataFrame | None, temperature: float,
                folder: Path) -> None:
    """ROC, reliability, confusion and (for a trained model, not a weight average) the training curves."""
    labels = oof["label"].map(CLASSES.index).to_numpy()
    roc, reliability, confusion, curves = (folder / name for name in PLOTS)
    plots.plot_roc(oof, roc)
    plots.plot_reliability(oof[LOGITS].to_numpy(), labels, temperature, reliability)
    matrices = [{**result["confusion_matrix"], "title": f"all rows, {len(CLASSES)} classes"}]
    if result["diagnosis_ham10000"]:
        matrices.insert(0, {**result["diagnosis_ham10000"]["confusion_matrix"], "title": "HAM10000 rows, 7 classes"})
    plots.plot_confusion(matrices, confusion)
    if history is not None:
        plots.plot_curves(history, curves)


def fit_guard_or_warn(model_dir: Path, data: RunData, fold: int, num_workers: int) -> None:
    """Out-of-scope guard and triage lines for the published model, from its own training and validation
    rows. Too few validation melanomas for the lines (a tiny run) is a warning: the model works without."""
    in_fold = data.fold_of == fold
    try:
        fit_guard(model_dir, data.frame[~in_fold], data.frame[in_fold], what=f"fold-{fold} validation rows",
                  num_workers=num_workers)
    except ValueError as err:
        print(f"warning: no out-of-scope guard or triage bands for this model: {err}", flush=True)
        for name in (GUARD_ARRAYS, GUARD_JSON, OPERATING_POINTS):
            (model_dir / name).unlink(missing_ok=True)


def finalize(cfg: Config, run: Path, data: RunData, folds_done: list[int], partial: bool) -> Path | None:
    """Build `run/model` from the trained folds; None when no fold has finished yet."""
    if not folds_done:
        return None
    history = pd.concat([pd.read_csv(fold_dir(run, f) / RUN_LOG) for f in folds_done], ignore_index=True)
    history.to_csv(run / RUN_LOG, index=False)
    return build_model_folder(cfg, run, data, folds_done, run_summary(cfg, run, folds_done, partial, history), history)


def build_model_folder(cfg: Config, run: Path, data: RunData, folds_done: list[int], summary: dict,
                       history: pd.DataFrame | None) -> Path:
    """`run/model` from each fold's `best/` (weights and validation logits): temperature, metrics.json (the
    scores plus `summary`), ONNX, guard and triage lines, plots, card. `studies.soup` calls it too."""
    frame = data.frame
    oof = out_of_fold(run, frame, folds_done)
    temperature = M.fit_temperature(oof[LOGITS].to_numpy(), oof["label"].map(CLASSES.index).to_numpy())
    result = M.evaluate(oof, oof[LOGITS].to_numpy(), temperature)
    oof = scored_oof(oof, temperature)
    oof.to_csv(run / OOF, index=False)
    result.update(summary)

    model = MelanomaModel.from_pretrained(str(fold_dir(run, result["published_fold"]) / BEST))
    model.set_temperature(temperature)
    assert_finite(model, "save the final model")
    tmp = run / ".tmp-model"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    export_onnx(model, tmp)  # model.onnx beside the weights: the Space's fast CPU backend, verified against torch
    fit_guard_or_warn(tmp, data, result["published_fold"], cfg.num_workers)
    write_plots(oof, result, history, temperature, tmp)
    (tmp / METRICS).write_text(json.dumps(result, indent=1))
    (tmp / TRAINING_CONFIG).write_text(to_yaml(cfg))
    shutil.copy2(run / FOLDS, tmp / FOLDS)  # which rows trained it: card, guard and baselines read it
    model_card(cfg, result, frame, tmp).save(tmp / CARD)
    replace_dir(tmp, run / MODEL_DIR)
    shutil.copy2(run / MODEL_DIR / METRICS, run / METRICS)
    return run / MODEL_DIR
