"""Join fold models into one model folder whose single ONNX graph runs them all: the five-fold ensemble.

    python -m train.ensemble --members output/default runs/cpu5/fold1/model ... --output_dir runs/ensemble5

Each member is a model folder validated on a different fold of one folds.csv. The ensemble's answer is the
mean of the members' calibrated logits (`train.network.FoldEnsemble`). One graph, not one onnxruntime session
per member: every session keeps its own memory arena (about 115 MB each for this backbone here), while one
graph runs the members one after the other in one arena (`python bench/inference.py --model FOLDER`).

What a bundled model needs beside the weights, and where it comes from:
* the out-of-scope guard: the first member's files, unchanged. The ensemble's embedding output is that member's,
  and that member's lines were set on its own held-out rows; no in-source row is held out from every member.
* the triage lines: set on the out-of-fold (OOF) answers, every training row scored by the one member that did
  not train on it, as served (8 views, that member's temperature): about five times the melanomas of one fold.
  The served answer averages the members, so the lines are those of one held-out member; `python -m
  studies.crosscheck` checks them on images no member saw.
* metrics.json (the OOF figures per source), oof_predictions.csv, folds.csv, training_config.yaml (the first
  member's) and a model card.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from inference import Predictor
from inference.layout import CARD, FOLDS, GUARD_ARRAYS, GUARD_JSON, METRICS, OPERATING_POINTS, TRAINING_CONFIG

from . import metrics as M
from .data import ages
from .errors import ConfigError, DataError
from .fit_guard import model_rows, operating_points
from .network import FoldEnsemble, MelanomaModel, load_model
from .onnx_export import export_onnx

OOF_TABLE = "oof_predictions.csv"


def fold_members(folders: list[Path]) -> dict[int, Path]:
    """{validation fold: model folder}, in the order given; the folders must share one folds.csv and each hold
    another fold (their held-out rows are then out of fold for all of them)."""
    first = pd.read_csv(folders[0] / FOLDS, usecols=["image_id", "fold"])
    out: dict[int, Path] = {}
    for folder in folders:
        if not (folder / METRICS).is_file():
            raise DataError(f"{folder} is not a trained model folder (no {METRICS}).")
        if not pd.read_csv(folder / FOLDS, usecols=["image_id", "fold"]).equals(first):
            raise DataError(f"{folder} was trained on another folds.csv than {folders[0]}: its held-out rows are "
                            "not out of fold for the others.")
        fold = json.loads((folder / METRICS).read_text())["published_fold"]
        if fold in out:
            raise DataError(f"{folder} and {out[fold]} were both validated on fold {fold}; give one model per fold.")
        out[fold] = folder
    return out


def held_out_answers(members: dict[int, Path], tta: bool = True) -> pd.DataFrame:
    """Every member's validation rows through that member's Predictor, as served: image_id, fold, source, target,
    probability (melanoma), refused (by the guard)."""
    parts = []
    for fold, folder in members.items():
        _, rows = model_rows(folder, fold)
        with tqdm(total=len(rows), unit="img", desc=f"fold {fold} held out", disable=None) as bar:
            answers = Predictor.from_pretrained(folder).predict_batch(
                list(rows.path), ages(rows), list(rows.sex), list(rows.site), tta=tta, progress=bar.update)
        parts.append(rows[["image_id", "source", "target"]].assign(
            fold=fold, probability=[a["melanoma_probability"] for a in answers],
            refused=[a["in_distribution"] is False for a in answers]))
    return pd.concat(parts, ignore_index=True)[["image_id", "fold", "source", "target", "probability", "refused"]]


def by_source(oof: pd.DataFrame) -> dict:
    """Melanoma AUC with its 95 % bootstrap interval, per source (never pooled) and per source and fold."""
    def figures(rows: pd.DataFrame) -> dict:
        y, p = rows.target.to_numpy(), rows.probability.to_numpy()
        return {"images": len(rows), "melanomas": int(y.sum()), "melanoma_auc": M.auc(y, p),
                "melanoma_auc_95ci": M.auc_interval(y, p)}

    return {source: {**figures(rows), "by_fold": {str(f): figures(r) for f, r in rows.groupby("fold")}}
            for source, rows in oof.groupby("source", sort=True)}


def card(members: dict[int, Path], oof: dict, points: dict, command: str) -> str:
    """A short model card: what the ensemble is, its OOF figures and where its guard and lines come from."""
    rows = "\n".join(f"| {s} | {f['images']} ({f['melanomas']}) | {f['melanoma_auc']:.3f} "
                     f"({f['melanoma_auc_95ci'][0]:.3f}–{f['melanoma_auc_95ci'][1]:.3f}) |" for s, f in oof.items())
    listed = "\n".join(f"- fold {fold}: `{folder}`" for fold, folder in members.items())
    low, high = points["low"], points["high"]
    return f"""---
license: cc-by-nc-4.0
pipeline_tag: image-classification
tags: [dermatology, dermoscopy, melanoma, medical-imaging, image-classification, timm, onnx]
---
# Melanoma triage: a {len(members)}-fold ensemble

{len(members)} models of one recipe, each validated on another fold of one `folds.csv`, run as one ONNX graph;
the answer is the mean of their calibrated logits. Built with `{command}`.

{listed}

## Out of fold, per source (each row scored by the member that did not train on it, 8 views)

| source | images (melanomas) | melanoma AUC (95 % CI) |
| --- | ---: | ---: |
{rows}

## Triage lines and guard

- Triage lines, set on those {points['n_melanoma']} melanomas and {points['n_other']} other lesions: low
  {low['threshold']:.4f} (sensitivity {low['sensitivity']:.3f}), high {high['threshold']:.4f} (specificity
  {high['specificity']:.3f}). They are one held-out member's lines; the ensemble averages five.
- Out-of-scope guard: fold {next(iter(members))}'s member's, unchanged (the embedding it reads is that member's).

Not a medical device. Images no member saw: `python -m studies.crosscheck --model <this folder>`.
"""


def build(folders: list[Path], output_dir: Path, command: str, oof_csv: Path | None = None) -> Path:
    """Write the ensemble model folder; returns it."""
    if len(folders) < 2:
        raise ConfigError("give two or more --members.")
    if output_dir.exists() and any(output_dir.iterdir()):
        raise ConfigError(f"{output_dir} is not empty; choose another --output_dir.")
    members = fold_members(folders)
    models = [load_model(f) for f in members.values()]
    if not all(isinstance(m, MelanomaModel) for m in models):
        raise ConfigError("members must be single models, not ensembles.")
    ensemble = FoldEnsemble(models)
    oof = pd.read_csv(oof_csv, dtype={"image_id": str}) if oof_csv else held_out_answers(members)
    expected = pd.read_csv(folders[0] / FOLDS, dtype={"image_id": str})
    expected = expected[expected.fold.isin(members)]
    if sorted(zip(oof.image_id, oof.fold)) != sorted(zip(expected.image_id, expected.fold)):
        raise DataError(f"{oof_csv} does not hold the members' held-out rows (one per row of their folds).")
    output_dir.mkdir(parents=True, exist_ok=True)
    ensemble.save_pretrained(output_dir)
    export_onnx(ensemble, output_dir)
    first = next(iter(members.values()))
    for name in (GUARD_ARRAYS, GUARD_JSON, FOLDS, TRAINING_CONFIG):
        shutil.copy(first / name, output_dir / name)
    what = f"{len(oof)} out-of-fold rows of folds {', '.join(map(str, members))} (8 views)"
    points = operating_points(oof.probability.to_numpy(), oof.target.to_numpy(), what, oof.source.to_numpy())
    points["views"] = 8
    (output_dir / OPERATING_POINTS).write_text(json.dumps(points, indent=1) + "\n")
    oof.to_csv(output_dir / OOF_TABLE, index=False)
    figures = by_source(oof)
    metrics = {"published_fold": next(iter(members)), "ensemble": {"members": {str(k): str(v) for k, v in members.items()},
               "command": command}, "out_of_fold_by_source": figures, "n_images": len(oof)}
    (output_dir / METRICS).write_text(json.dumps(metrics, indent=1) + "\n")
    (output_dir / CARD).write_text(card(members, figures, points, command))
    return output_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.ensemble", description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=Path, nargs="+", required=True, help="one model folder per fold")
    parser.add_argument("--output_dir", type=Path, required=True, help="a new folder: the ensemble model folder")
    parser.add_argument("--oof", type=Path, help="reuse the held-out answers `python -m studies.folds` wrote "
                                                "(its oof_predictions.csv) instead of scoring them again")
    args = parser.parse_args(argv)
    command = "python -m train.ensemble " + " ".join(argv if argv is not None else sys.argv[1:])
    try:
        folder = build(args.members, args.output_dir, command, args.oof)
    except (ConfigError, DataError, FileNotFoundError, ValueError) as err:
        print(f"ensemble: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    print(f"Ensemble, its lines and card: {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
