"""Judge a model on each source separately: the sources it trained on (its own validation rows) and one it
never saw (an external set from other clinics and devices).

    python -m studies.crosscheck --model output/default
    python -m studies.crosscheck --model output/default --external ../shared/data/isic2017:Validation --json out.json
    python -m studies.crosscheck --model runs/a/model --against runs/b/model   # paired, on the same images

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

import pandas as pd
from tqdm.auto import tqdm

from inference import Predictor
from inference.layout import METRICS

from train import metrics as M
from train.data import ages
from train.errors import DataError
from train.fit_guard import model_rows
from train.sources.isic_challenge import load_isic_challenge

DEFAULT_EXTERNAL = "../shared/data/isic2017:Validation"


def assess(predictor: Predictor, rows: pd.DataFrame, desc: str, tta: bool = True) -> pd.DataFrame:
    """`rows` with the Predictor's melanoma probability, guard verdict and triage band added (`tta`: the mean
    over the 8 dihedral views, as `Predictor.predict(..., tta=True)`)."""
    with tqdm(total=len(rows), unit="img", desc=desc, disable=None) as bar:
        answers = predictor.predict_batch(list(rows.path), ages(rows), list(rows.sex), list(rows.site),
                                          tta=tta, progress=bar.update)
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


def model_sets(model: Path, externals: list[str]) -> dict[str, pd.DataFrame]:
    """{set name: rows} for the model's own validation rows by source, then each external set without any image
    the model trained on (the ISIC 2019 set, for one, holds ISIC 2017 images): an external check must be unseen."""
    metrics = json.loads((model / METRICS).read_text()) if (model / METRICS).is_file() else {}
    train, val = model_rows(model, metrics.get("published_fold"))  # the rows of the fold it was validated on
    sets = {f"{source} validation (in-source)": rows for source, rows in val.groupby("source", sort=True)}
    if metrics.get("ensemble"):  # every in-source row trained some member: its held-out figures are its OOF table
        print(f"crosscheck: {model} is a fold ensemble; no in-source row is held out from all its members (their "
              f"out-of-fold figures: its {METRICS}).", file=sys.stderr)
        sets = {}
    for spec in externals:
        name, rows = external_rows(spec)
        seen = rows.image_id.isin(train.image_id) | rows.image_id.isin(val.image_id)
        if seen.any():
            print(f"crosscheck: {int(seen.sum())} of {len(rows)} images of {name} were in the model's data; "
                  "they are left out of it.", file=sys.stderr)
            name, rows = f"{name}, {int(seen.sum())} seen left out", rows[~seen].reset_index(drop=True)
        sets[name] = rows
    return sets


def assess_sets(model: Path, sets: dict[str, pd.DataFrame], tta: bool = True) -> dict[str, pd.DataFrame]:
    predictor = Predictor.from_pretrained(model)
    label = f"{model.name}{' (8 views)' if tta else ''}"
    return {name: assess(predictor, rows, f"{label}: {name}", tta) for name, rows in sets.items()}


def crosscheck(model: Path, externals: list[str], against: Path | None = None, tta: bool = True,
               against_tta: bool = True) -> dict[str, dict]:
    """{set name: figures} for the model's own validation rows by source, then each external set; with
    `against`, also that model's AUC on the same images and the paired-bootstrap 95 % interval of the
    difference (model − against). `tta` / `against_tta`: score that model with the 8 dihedral views
    (`--model M --against M --no-against_tta` measures what test-time augmentation buys)."""
    sets = model_sets(model, externals)
    mine = assess_sets(model, sets, tta)
    results = {name: {**source_figures(rows), "tta": tta} for name, rows in mine.items()}
    if against is not None:
        theirs = assess_sets(against, sets, against_tta)
        for name, rows in mine.items():
            y, a, b = rows.target.to_numpy(), rows.probability.to_numpy(), theirs[name].probability.to_numpy()
            if M.auc(y, a) is not None:
                results[name]["against"] = {"model": str(against), "melanoma_auc": M.auc(y, b),
                                            "difference": M.auc(y, a) - M.auc(y, b),
                                            "difference_95ci": M.auc_interval(y, a, other=b),
                                            "guard_refuses": float(theirs[name].refused.mean()),
                                            "tta": against_tta}
    return results


def table(results: dict[str, dict]) -> str:
    def number(value, fmt="{:.3f}"):
        return "–" if value is None else fmt.format(value)

    paired = any("against" in f for f in results.values())
    lines = ["| set | images (melanomas) | melanoma AUC (95 % CI) | sensitivity at 90 % specificity | guard refuses | "
             "melanomas refused or low |" + (" AUC of the other model | difference (paired 95 % CI) |" if paired else ""),
             "| --- | ---: | ---: | ---: | ---: | ---: |" + (" ---: | ---: |" if paired else "")]
    for name, f in results.items():
        ci = f["melanoma_auc_95ci"]
        auc = number(f["melanoma_auc"]) + (f" ({ci[0]:.3f}–{ci[1]:.3f})" if ci else "")
        line = (f"| {name} | {f['images']} ({f['melanomas']}) | {auc} | {number(f['sensitivity_at_90_specificity'])} "
                f"| {f['guard_refuses']:.1%} | {number(f['melanomas_refused_or_low'], '{:.1%}')} |")
        if paired:
            other = f.get("against")
            if other:
                lo, hi = other["difference_95ci"] or (float("nan"), float("nan"))
                line += f" {other['melanoma_auc']:.3f} | {other['difference']:+.3f} ({lo:+.3f} to {hi:+.3f}) |"
            else:
                line += " – | – |"
        lines.append(line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studies.crosscheck", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="model folder with folds.csv and training_config.yaml")
    parser.add_argument("--external", nargs="*", default=[DEFAULT_EXTERNAL],
                        help="FOLDER:PART sets in the ISIC challenge layout, never trained on (default: %(default)s)")
    parser.add_argument("--against", type=Path, help="a second model folder, scored on the same images: its AUC and "
                                                    "the paired-bootstrap interval of the difference")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=True,
                        help="score --model with the mean of the 8 dihedral views, as served (default)")
    parser.add_argument("--against_tta", action=argparse.BooleanOptionalAction, default=True,
                        help="the same for --against (--no-against_tta: one view)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    try:
        results = crosscheck(args.model, args.external, args.against, args.tta, args.against_tta)
    except (DataError, FileNotFoundError, ValueError) as err:
        print(f"crosscheck: {err}", file=sys.stderr)
        return 2
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
