"""Judge a model on each source separately: the sources it trained on (its own validation rows) and one it
never saw (an external set from other clinics and devices).

    python -m train.crosscheck --model output/default
    python -m train.crosscheck --model output/default --external ../shared/data/isic2017:Validation --json out.json

For each source: melanoma ROC AUC with its 95 % bootstrap interval, sensitivity at 90 % specificity, the
share of images the out-of-scope guard refuses, and the share of melanomas that are refused or put in the
`low` triage band (what a visitor with a melanoma would be told). Pooled figures are not printed: pooling
sources rewards telling the sources apart, which is not the skill the Space needs. Everything goes
through the Predictor, as the Space scores.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from inference import Predictor
from inference.layout import METRICS

from . import metrics as M
from .data import ages
from .errors import DataError
from .fit_guard import model_rows
from .sources.isic_challenge import load_isic_challenge

DEFAULT_EXTERNAL = "../shared/data/isic2017:Validation"


def assess(predictor: Predictor, rows: pd.DataFrame, desc: str) -> pd.DataFrame:
    """`rows` with the Predictor's melanoma probability, guard verdict and triage band added."""
    with tqdm(total=len(rows), unit="img", desc=desc, disable=None) as bar:
        answers = predictor.predict_batch(list(rows.path), ages(rows), list(rows.sex), list(rows.site),
                                          progress=bar.update)
    return rows.assign(probability=[a["melanoma_probability"] for a in answers],
                       refused=[a["in_distribution"] is False for a in answers],
                       band=[(a["triage"] or {}).get("band") for a in answers])


def source_figures(rows: pd.DataFrame) -> dict:
    """The figures of one source's assessed rows."""
    y, p = rows.target.to_numpy(), rows.probability.to_numpy()
    mel = rows[rows.target == 1]
    return {"images": len(rows), "melanomas": int(y.sum()), "melanoma_auc": M.auc(y, p),
            "melanoma_auc_95ci": M.auc_interval(y, p), "sensitivity_at_90_specificity": M.sensitivity_at_specificity(
                y, p, 0.90)[0], "guard_refuses": float(rows.refused.mean()),
            "melanomas_refused_or_low": float((mel.refused | (mel.band == "low")).mean()) if len(mel) else None}


def external_rows(spec: str) -> tuple[str, pd.DataFrame]:
    """'FOLDER:PART' (the ISIC challenge layout) → (a name for the table, its rows)."""
    folder, _, part = spec.rpartition(":")
    if not folder:
        folder, part = spec, "Validation"
    rows = load_isic_challenge(Path(folder), part)
    return f"{rows.source.iloc[0]} {part.lower()} (external)", rows


def crosscheck(model: Path, externals: list[str]) -> dict[str, dict]:
    """{source name: figures} for the model's own validation rows by source, then each external set."""
    predictor = Predictor.from_pretrained(model)
    metrics = model / METRICS
    fold = json.loads(metrics.read_text()).get("published_fold") if metrics.is_file() else None
    _, val = model_rows(model, fold)  # the rows of the fold the published model was validated on
    sets = [(f"{source} validation (in-source)", rows) for source, rows in val.groupby("source", sort=True)]
    sets += [external_rows(spec) for spec in externals]
    return {name: source_figures(assess(predictor, rows, name)) for name, rows in sets}


def table(results: dict[str, dict]) -> str:
    def number(value, fmt="{:.3f}"):
        return "–" if value is None else fmt.format(value)

    lines = ["| set | images (melanomas) | melanoma AUC (95 % CI) | sensitivity at 90 % specificity | guard refuses | "
             "melanomas refused or low |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, f in results.items():
        ci = f["melanoma_auc_95ci"]
        auc = number(f["melanoma_auc"]) + (f" ({ci[0]:.3f}–{ci[1]:.3f})" if ci else "")
        lines.append(f"| {name} | {f['images']} ({f['melanomas']}) | {auc} | {number(f['sensitivity_at_90_specificity'])} "
                     f"| {f['guard_refuses']:.1%} | {number(f['melanomas_refused_or_low'], '{:.1%}')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.crosscheck", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="model folder with folds.csv and training_config.yaml")
    parser.add_argument("--external", nargs="*", default=[DEFAULT_EXTERNAL],
                        help="FOLDER:PART sets in the ISIC challenge layout, never trained on (default: %(default)s)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    try:
        results = crosscheck(args.model, args.external)
    except (DataError, FileNotFoundError, ValueError) as err:
        print(f"crosscheck: {err}", file=sys.stderr)
        return 2
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
