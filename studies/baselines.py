"""Metadata-only baselines: how much melanoma signal is in age, sex and site alone.

    python -m studies.baselines --run output/default     # the folds of a training run, scored like the model
    python -m studies.baselines --run output/default --blank_metadata   # + the fused model with blank fields
    python -m studies.baselines --run output/default --tta              # + the fused model with 8-view TTA
    python -m studies.baselines --run output/default --compare RUN      # paired AUC difference with another run
    python -m studies.baselines --isic_csv ../shared/data/isic2020/ISIC_2020_Training_GroundTruth_v2.csv

Both use the model's own encoding (`inference.metadata.encode`), so "metadata-only" means exactly
the information the fused model's metadata branch sees, and sklearn's HistGradientBoosting, which
finds age × site interactions a linear model would miss. `--run` reads the run's folds.csv and
training_config.yaml, fits on the other folds and scores each trained fold with the same metrics as
the model card. `--isic_csv` cross-validates on the full 33,126-row ISIC 2020 metadata (no images
needed), grouped by patient, to compare with the ~0.70 metadata-only AUC known from the competition.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.model_selection import StratifiedGroupKFold

from inference.layout import CONFIG, FOLDS, METRICS, MODEL_DIR, RUN_CONFIG, TRAINING_CONFIG
from inference.metadata import Metadata, encode, normalize
from inference.model import CLASSES

from train import metrics as M
from train.config import Config, resolve_config
from train.data import ages, config_sources
from train.errors import ConfigError, DataError


def encoded(frame: pd.DataFrame) -> np.ndarray:
    """(n, META_DIM) array of the model's metadata encoding of the frame's age, sex and site."""
    rows = [Metadata(age=a, sex=s, site=t) for a, s, t in zip(ages(frame), frame.sex, frame.site)]
    return np.stack([encode(meta) for meta in rows])


def classifier(seed: int) -> HistGradientBoostingClassifier:
    # Small and regularised: 12 binary-ish features, a few thousand rows per fold.
    return HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05, max_leaf_nodes=15,
                                          l2_regularization=1.0, random_state=seed)


def _run_files(run: Path) -> tuple[Path, Path]:
    config = next((p for p in (run / TRAINING_CONFIG, run / MODEL_DIR / TRAINING_CONFIG, run / RUN_CONFIG)
                   if p.is_file()), None)
    folds = run / FOLDS
    if config is None or not folds.is_file():
        raise DataError(f"{run} is not a run folder: it needs folds.csv and training_config.yaml (or config.yaml).")
    return config, folds


def run_rows(run: Path) -> tuple[Config, pd.DataFrame]:
    """A run's config and its rows (as `load_sources` gives them) with each row's fold from folds.csv."""
    config_path, folds_path = _run_files(run)
    cfg = resolve_config(["--config", str(config_path)])
    frame, _ = config_sources(cfg)
    fold_of = pd.read_csv(folds_path, dtype={"image_id": str}).set_index("image_id")["fold"]
    frame = frame[frame.image_id.isin(fold_of.index)].reset_index(drop=True)
    frame["fold"] = fold_of.loc[frame.image_id].to_numpy()
    return cfg, frame


def same_folds(run: Path) -> dict:
    """Metadata-only model on a training run's folds; metrics as in the model card."""
    cfg, frame = run_rows(run)
    x = encoded(frame)
    y = frame.label.map(CLASSES.index).to_numpy()
    parts = []
    for fold in cfg.folds_to_train:
        train, val = frame.fold != fold, frame.fold == fold
        model = classifier(cfg.seed).fit(x[train], y[train])
        probs = np.full((int(val.sum()), len(CLASSES)), 1e-7)
        probs[:, model.classes_] = model.predict_proba(x[val])
        parts.append(pd.DataFrame(np.log(probs / probs.sum(axis=1, keepdims=True)), index=frame.index[val]))
    oof = pd.concat(parts).sort_index()
    rows = frame.loc[oof.index]
    logits, labels = oof.to_numpy(), y[oof.index]
    temperature = M.fit_temperature(logits, labels)
    return M.evaluate(rows, logits, temperature)


def _predictions(run: Path, blank_metadata: bool = False, tta: bool = False, batch_size: int = 64):
    """The run's published model scored through the Predictor on its validation fold: (rows, probs)."""
    from tqdm.auto import tqdm

    from inference import Predictor

    cfg, frame = run_rows(run)
    model_dir = run / MODEL_DIR if (run / MODEL_DIR / CONFIG).is_file() else run
    predictor = Predictor.from_pretrained(model_dir)
    # only the published model's own validation fold: the other folds' rows trained it
    published = json.loads((model_dir / METRICS).read_text()).get("published_fold", cfg.folds_to_train[0])
    rows = frame[frame.fold == published].reset_index(drop=True)
    metadata = {} if blank_metadata else {"ages": ages(rows),
                                          "sexes": rows.sex.tolist(), "sites": rows.site.tolist()}
    desc = " + ".join(["blank metadata"] * blank_metadata + ["TTA"] * tta) or f"score {run}"
    with tqdm(total=len(rows), unit="img", desc=desc, disable=None) as bar:
        answers = predictor.predict_batch(rows.path.tolist(), **metadata, tta=tta, batch_size=batch_size,
                                          progress=bar.update)
    return rows, np.array([[a["diagnosis"][c] for c in CLASSES] for a in answers])


def rescore(run: Path, blank_metadata: bool = False, tta: bool = False) -> dict:
    """The run's published model re-scored on its validation folds through the Predictor, as the app scores:
    with every metadata field unknown (what a visitor who fills in nothing gets) and/or with 8-view
    test-time augmentation. Same rows and metrics as the model card."""
    rows, probs = _predictions(run, blank_metadata, tta)
    logits = np.log(np.clip(probs, 1e-12, None))  # already calibrated: the refitted temperature stays near 1
    labels = rows.label.map(CLASSES.index).to_numpy()
    return M.evaluate(rows, logits, M.fit_temperature(logits, labels))


def compare(run: Path, other: Path) -> dict:
    """Melanoma AUC of two runs' models on the same validation rows, with the 95 % paired-bootstrap interval
    of the difference (run − other), per source. The runs must share folds.csv (same data and seed)."""
    if _run_files(run)[1].read_text() != _run_files(other)[1].read_text():
        raise DataError(f"{run} and {other} were split into different folds; compare runs made with the same data "
                        "and seed.")
    (rows, a), (_, b) = _predictions(run), _predictions(other)
    return paired(rows, a, b)


def tta_gain(run: Path) -> dict:
    """The run's model with 8-view test-time augmentation against the single view, on the same validation rows:
    melanoma AUC per source with the 95 % paired-bootstrap interval of the difference (TTA − single)."""
    (rows, single), (_, views) = _predictions(run), _predictions(run, tta=True)
    return paired(rows, views, single)


def paired(rows: pd.DataFrame, a: np.ndarray, b: np.ndarray) -> dict:
    """Per source: melanoma AUC of class probabilities `a` and `b` for the same rows, their difference and its
    95 % paired-bootstrap interval."""
    result = {}
    for source in sorted(set(rows.source)):
        keep = (rows.source == source).to_numpy()
        y = (rows.label[keep] == "mel").to_numpy().astype(int)
        mel_a, mel_b = a[keep, CLASSES.index("mel")], b[keep, CLASSES.index("mel")]
        if M.auc(y, mel_a) is None:
            continue
        result[source] = {"melanomas": int(y.sum()), "rows": int(keep.sum()), "auc": M.auc(y, mel_a),
                          "auc_other": M.auc(y, mel_b), "difference": M.auc(y, mel_a) - M.auc(y, mel_b),
                          "difference_ci95": M.auc_interval(y, mel_a, other=mel_b)}
    return result


def isic_full(csv: Path, n_folds: int = 5, seed: int = 42) -> dict:
    """Patient-grouped cross-validated melanoma AUC from metadata alone on the official ISIC 2020 CSV."""
    if not csv.is_file():
        raise DataError(f"{csv} does not exist.")
    df = pd.read_csv(csv)
    missing = [c for c in ("patient_id", "sex", "age_approx", "anatom_site_general_challenge", "target")
               if c not in df.columns]
    if missing:
        raise DataError(f"{csv} lacks column(s) {', '.join(missing)}.")
    metas = [normalize(a, s, t) for a, s, t in zip(df.age_approx, df.sex, df.anatom_site_general_challenge)]
    x = np.stack([encode(meta) for meta in metas])
    y = df.target.to_numpy().astype(int)
    oof = np.zeros(len(df))
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for train, val in splitter.split(x, y, df.patient_id):
        oof[val] = classifier(seed).fit(x[train], y[train]).predict_proba(x[val])[:, 1]
    sens90, _ = M.sensitivity_at_specificity(y, oof, 0.90)
    return {"rows": int(len(df)), "patients": int(df.patient_id.nunique()), "melanomas": int(y.sum()),
            "folds": n_folds, "melanoma_auc": M.auc(y, oof),
            "melanoma_pauc_above_80_tpr": M.partial_auc_above_tpr(y, oof, 0.8),
            "sensitivity_at_90_specificity": sens90}


def summary(what: str, metrics: dict) -> str:
    per_source = ", ".join(f"{key.removeprefix('melanoma_auc_')} {value:.3f}" for key, value in metrics.items()
                           if key.startswith("melanoma_auc_") and isinstance(value, float)
                           and key != "melanoma_auc_uncalibrated")
    return (f"{what}: melanoma AUC {metrics['melanoma_auc']:.3f} ({per_source}), "
            f"pAUC {metrics['melanoma_pauc_above_80_tpr']:.3f}, "
            f"sens@90%spec {metrics['sensitivity_at_90_specificity']:.3f}, "
            f"ECE after T {metrics['ece_after_temperature']:.3f}, "
            f"diagnosis balanced accuracy {metrics['diagnosis_balanced_accuracy']:.3f}")


def print_paired(result: dict, a: str, b: str) -> None:
    for source, r in result.items():
        lo, hi = r["difference_ci95"]
        print(f"melanoma AUC on {source} rows ({r['melanomas']} melanomas): {a} {r['auc']:.3f}, {b} "
              f"{r['auc_other']:.3f}, difference {r['difference']:+.3f} (paired bootstrap 95 % CI {lo:+.3f} to {hi:+.3f})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studies.baselines", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="a training run folder (or output/default)")
    parser.add_argument("--blank_metadata", action="store_true",
                        help="also score the run's model on its validation folds with all metadata unknown")
    parser.add_argument("--tta", action="store_true",
                        help="also score the run's model on its validation folds with 8-view test-time augmentation, "
                             "and its AUC gain over the single view with a paired-bootstrap 95 %% CI")
    parser.add_argument("--compare", type=Path, metavar="RUN",
                        help="another run on the same folds: melanoma AUC difference with a paired-bootstrap 95 %% CI")
    parser.add_argument("--isic_csv", type=Path, help="ISIC_2020_Training_GroundTruth_v2.csv (33,126 rows)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if not args.run and not args.isic_csv:
        parser.error("give --run and/or --isic_csv")
    results = {}
    try:
        if args.run:
            results["same_folds"] = scores = same_folds(args.run)
            print(summary(f"metadata-only on {args.run} folds", scores))
        if args.run and args.blank_metadata:
            results["fused_blank_metadata"] = scores = rescore(args.run, blank_metadata=True)
            print(summary(f"fused model, metadata all unknown, on {args.run} folds", scores))
        if args.run and args.tta:
            results["fused_tta"] = scores = rescore(args.run, tta=True)
            print(summary(f"fused model, 8-view TTA, on {args.run} folds", scores))
        if args.run and args.tta:
            results["tta_gain"] = gain = tta_gain(args.run)
            print_paired(gain, "8-view TTA", "single view")
        if args.run and args.compare:
            results["compare"] = c = compare(args.run, args.compare)
            print_paired(c, str(args.run), str(args.compare))
        if args.isic_csv:
            results["isic_full"] = r = isic_full(args.isic_csv)
            print(f"metadata-only on {r['rows']} ISIC 2020 rows ({r['melanomas']} melanomas, {r['patients']} patients, "
                  f"{r['folds']}-fold patient-grouped CV): melanoma AUC {r['melanoma_auc']:.3f}, "
                  f"pAUC {r['melanoma_pauc_above_80_tpr']:.3f}, sens@90%spec {r['sensitivity_at_90_specificity']:.3f}")
    except (DataError, ConfigError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
