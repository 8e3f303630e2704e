"""Five folds, judged: every row's out-of-fold answer, and the fold models together on a set none of them saw.

    python -m studies.folds --models output/default runs/cpu5/fold1/model runs/cpu5/fold2/model ... \\
        --output_dir runs/folds5

Each model folder is one fold of the same folds.csv (the fold it was validated on: its metrics.json). Its own
validation rows are scored through the Predictor, as the Space scores (8 views by default): together they are
the out-of-fold (OOF) table, one held-out answer per row, and the melanoma AUC per source with its 95 %
bootstrap interval (sources are never pooled: pooling rewards telling them apart). Rows of a fold with no model
are listed as missing, never filled in.

Then the candidates for the bundled model on the external set (default ISIC 2017 validation, never trained on):
each fold model alone, their ensemble as `python -m train.ensemble` builds it (the mean of the members' calibrated
logits) and, with `--average`, the weight average of all the members (`studies.soup.average_weights`), both run in
torch, each with its interval and the paired interval of its difference from the first model (today's bundled one). Written to OUTPUT_DIR: oof_predictions.csv,
folds.json and folds.md (both tables, with the command).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from inference import Predictor
from inference.layout import FOLDS

from studies.crosscheck import DEFAULT_EXTERNAL, assess, external_rows
from train import metrics as M
from train.ensemble import by_source, fold_members, held_out_answers
from train.errors import DataError


def eager(model) -> Predictor:
    """A torch model (an ensemble, a weight average) served through the Predictor, answers only."""
    from inference.model import ModelConfig
    from train.network import EagerSession

    return Predictor(ModelConfig.from_dict(model.config), EagerSession(model))


def candidates(models: dict[int, Path], spec: str, tta: bool, average: bool) -> tuple[str, dict]:
    """(external set's name, {candidate: figures}): each member, their ensemble and (`average`) their weight
    average, with the paired difference from the first member."""
    from studies.soup import average_weights
    from train.network import FoldEnsemble, load_model

    name, rows = external_rows(spec)
    y = rows.target.to_numpy()
    probs = {f"fold {fold} ({folder})": assess(Predictor.from_pretrained(folder), rows, f"fold {fold}", tta)
             .probability.to_numpy() for fold, folder in models.items()}
    if len(models) > 1:  # as `python -m train.ensemble` builds it: the mean of the calibrated logits
        ensemble = FoldEnsemble([load_model(f) for f in models.values()])
        probs[f"ensemble of folds {', '.join(map(str, models))}"] = assess(eager(ensemble), rows, "ensemble",
                                                                           tta).probability.to_numpy()
    if average and len(models) > 1:
        model = load_model(next(iter(models.values())))
        model.load_state_dict(average_weights(list(models.values()), [1.0] * len(models)))
        probs["weight average of the same"] = assess(eager(model), rows, "average", tta).probability.to_numpy()
    first = next(iter(probs.values()))
    out = {}
    for candidate, p in probs.items():
        out[candidate] = {"images": len(y), "melanomas": int(y.sum()), "melanoma_auc": M.auc(y, p),
                          "melanoma_auc_95ci": M.auc_interval(y, p),
                          "difference_from_first": M.auc(y, p) - M.auc(y, first), "difference_95ci": M.auc_interval(y, p, other=first) if p is not first else None}
    return name, out


def markdown(result: dict) -> str:
    ci = lambda f: f"{f['melanoma_auc']:.3f} ({f['melanoma_auc_95ci'][0]:.3f}–{f['melanoma_auc_95ci'][1]:.3f})"  # noqa: E731
    lines = [f"`{result['command']}`", "", f"Out of fold ({result['views']} view(s) per image; folds "
             f"{', '.join(map(str, result['folds']))}; rows of other folds: {result['missing_rows']} not scored):", "",
             "| source | images (melanomas) | melanoma AUC (95 % CI) | per fold |", "| --- | ---: | ---: | --- |"]
    for source, f in result["oof"].items():
        folds = ", ".join(f"{k}: {v['melanoma_auc']:.3f}" if v["melanoma_auc"] is not None else f"{k}: –"
                          for k, v in f["by_fold"].items())
        lines.append(f"| {source} | {f['images']} ({f['melanomas']}) | {ci(f)} | {folds} |")
    lines += ["", f"Candidates on {result['external']}:", "",
              "| candidate | melanoma AUC (95 % CI) | difference from the first (paired 95 % CI) |", "| --- | ---: | ---: |"]
    for name, f in result["candidates"].items():
        d = f["difference_95ci"]
        diff = f"{f['difference_from_first']:+.3f} ({d[0]:+.3f} to {d[1]:+.3f})" if d else "–"
        lines.append(f"| {name} | {ci(f)} | {diff} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studies.folds", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, nargs="+", required=True, help="one model folder per fold")
    parser.add_argument("--output_dir", type=Path, required=True, help="where the tables go")
    parser.add_argument("--external", default=DEFAULT_EXTERNAL, help="FOLDER:PART never trained on (default: %(default)s)")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=True,
                        help="the mean of the 8 dihedral views, as served (default)")
    parser.add_argument("--average", action="store_true", help="also the weight average of the members (torch)")
    args = parser.parse_args(argv)
    try:
        models = fold_members(args.models)
        oof = held_out_answers(models, args.tta)
        total = len(pd.read_csv(args.models[0] / FOLDS))
        external, choice = candidates(models, args.external, args.tta, args.average)
    except (DataError, FileNotFoundError, ValueError) as err:
        print(f"folds: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    result = {"command": "python -m studies.folds " + " ".join(argv if argv is not None else sys.argv[1:]),
              "views": 8 if args.tta else 1, "folds": list(models), "missing_rows": total - len(oof),
              "oof": by_source(oof), "external": external, "candidates": choice}
    args.output_dir.mkdir(parents=True, exist_ok=True)
    oof.to_csv(args.output_dir / "oof_predictions.csv", index=False)
    (args.output_dir / "folds.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.output_dir / "folds.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
