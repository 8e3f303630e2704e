"""Does a lesion's patient help? The ugly-duckling measurement on ISIC 2020's whole patients (issue 32).

    python -m studies.patients --models output/default runs/cpu5/fold1/model ... --output_dir runs/patients [--readme README.md]

Each fold model scores its own held-out ISIC 2020 rows as the Space does (8 views, the guard): the melanoma
probability, and the lesion's features (`inference.patient.lesion_features`). Within each patient with at least
`MIN_LESIONS` lesions the guard keeps, three orders of the patient's lesions:
* probability: the melanoma probability alone (what a lesion-by-lesion model gives);
* outlier: how far the lesion lies from the patient's other lesions (`inference.patient.context`);
* combined: the probability's logit and the outlier score, each standardised within the patient, summed.
(a) In each patient with a melanoma, the melanomas' ranks under each order: top-1, top-3 and the mean reciprocal
rank, against a random order (chance), with 95 % intervals from a bootstrap **by patient**.
(b) Over all those patients' rows: melanoma AUC and pAUC above 80 % TPR of the probability against the
context-adjusted score (logit + outlier), paired bootstrap by patient.
The patients are few (ISIC 2020 in ../shared/data: 130, 39 melanomas): read the intervals before the points.
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
from inference import metadata as md
from inference.patient import MIN_LESIONS, context, lesion_features, logit, standardised

from train import metrics as M
from train.data import ages
from train.ensemble import fold_members
from train.errors import DataError
from train.fit_guard import model_rows

ORDERS = ("probability", "outlier", "combined")


def scored_rows(models: dict[int, Path]) -> tuple[pd.DataFrame, np.ndarray]:
    """Every fold model's held-out ISIC 2020 rows as served: (rows + probability + refused, lesion features)."""
    parts, feats = [], []
    for fold, folder in models.items():
        _, rows = model_rows(folder, fold)
        rows = rows[rows.source == "isic2020"].reset_index(drop=True)
        predictor = Predictor.from_pretrained(folder)
        metas = [md.normalize(a, s, t) for a, s, t in zip(ages(rows), rows.sex, rows.site)]
        probs, refused = [], []
        for start in tqdm(range(0, len(rows), 32), desc=f"fold {fold}", disable=None):
            squares = np.stack([predictor.square(p) for p in rows.path[start:start + 32]])
            batch = metas[start:start + 32]
            answers, views = predictor.assess(squares, np.stack([md.encode(m) for m in batch]), batch)  # as served
            probs += [a["melanoma_probability"] for a in answers]
            refused += [a["in_distribution"] is False for a in answers]
            feats.append(lesion_features(views))
        parts.append(rows[["image_id", "group", "target"]].assign(fold=fold, probability=probs, refused=refused))
    return pd.concat(parts, ignore_index=True), np.concatenate(feats)


def with_context(rows: pd.DataFrame, feats: np.ndarray) -> pd.DataFrame:
    """The rows of patients with ≥ MIN_LESIONS kept lesions, with each order's within-patient score."""
    out = []
    for _, patient in rows[~rows.refused].groupby("group"):
        if len(patient) < MIN_LESIONS:
            continue
        c = context(patient.probability.to_numpy(), feats[patient.index])
        z = logit(patient.probability.to_numpy())
        out.append(patient.assign(outlier=c["outlier"], combined=standardised(z) + c["outlier"],
                                  adjusted=z + c["outlier"]))
    return pd.concat(out).reset_index(drop=True)


def ranks(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per melanoma: its patient, the patient's lesion count, its rank (1 = first) under each order."""
    out = []
    for group, patient in rows.groupby("group"):
        if patient.target.sum() == 0:
            continue
        r = {order: patient[order].rank(ascending=False, method="average") for order in ORDERS}
        for i in patient.index[patient.target == 1]:
            out.append({"group": group, "n": len(patient), **{order: float(r[order][i]) for order in ORDERS}})
    return pd.DataFrame(out)


def rank_figures(table: pd.DataFrame) -> dict[str, float]:
    n = table.n.to_numpy()
    chance_rr = np.array([np.mean(1.0 / np.arange(1, k + 1)) for k in n])
    out = {"chance_top1": float(np.mean(1.0 / n)), "chance_top3": float(np.mean(np.minimum(3, n) / n)),
           "chance_mrr": float(chance_rr.mean())}
    for order in ORDERS:
        rank = table[order].to_numpy()
        out |= {f"{order}_top1": float(np.mean(rank <= 1)), f"{order}_top3": float(np.mean(rank <= 3)),
                f"{order}_mrr": float(np.mean(1.0 / rank)), f"{order}_mrr_over_chance": float(np.mean(1.0 / rank - chance_rr))}
    return out


def by_patient_bootstrap(groups: np.ndarray, stat, rounds: int = 2000, seed: int = 0) -> list[float]:
    """95 % interval of `stat(chosen group ids)` over patients resampled with replacement."""
    rng = np.random.default_rng(seed)
    unique = np.unique(groups)
    values = [stat(rng.choice(unique, len(unique))) for _ in range(rounds)]
    values = [v for v in values if v is not None and np.isfinite(v)]
    return [float(np.quantile(values, 0.025)), float(np.quantile(values, 0.975))]


def measure(rows: pd.DataFrame) -> dict:
    table = ranks(rows)
    figures = {"patients": int(rows.group.nunique()), "lesions": len(rows), "melanomas": int(rows.target.sum()),
               "patients_with_melanoma": int(table.group.nunique()), "ranks": rank_figures(table)}

    def pick(frame: pd.DataFrame, chosen: np.ndarray) -> pd.DataFrame:
        return pd.concat([frame[frame.group == g] for g in chosen])

    intervals = {}
    for order in ORDERS:
        intervals[f"{order}_mrr_over_chance_95ci"] = by_patient_bootstrap(
            table.group.to_numpy(), lambda c, o=order: rank_figures(pick(table, c))[f"{o}_mrr_over_chance"])
        intervals[f"{order}_minus_probability_mrr_95ci"] = by_patient_bootstrap(
            table.group.to_numpy(), lambda c, o=order: (lambda f: f[f"{o}_mrr"] - f["probability_mrr"])(
                rank_figures(pick(table, c))))
    figures["ranks"] |= intervals
    y = rows.target.to_numpy()
    for name, score in (("probability", rows.probability.to_numpy()), ("context", rows.adjusted.to_numpy())):
        figures[f"{name}_auc"], figures[f"{name}_pauc80"] = M.auc(y, score), M.partial_auc_above_tpr(y, score, 0.8)

    def diff(chosen: np.ndarray, key=M.auc) -> float | None:
        s = pick(rows, chosen)
        a, b = key(s.target.to_numpy(), s.adjusted.to_numpy()), key(s.target.to_numpy(), s.probability.to_numpy())
        return None if a is None or b is None else a - b

    figures["context_minus_probability_auc_95ci"] = by_patient_bootstrap(rows.group.to_numpy(), diff, rounds=1000)
    figures["context_minus_probability_pauc80_95ci"] = by_patient_bootstrap(
        rows.group.to_numpy(), lambda c: diff(c, lambda y, s: M.partial_auc_above_tpr(y, s, 0.8)), rounds=1000)
    return figures


def markdown(f: dict, command: str) -> str:
    r = f["ranks"]
    ci = lambda v: f"{v[0]:+.3f} to {v[1]:+.3f}"  # noqa: E731
    lines = [f"`{command}`", "", f"{f['patients']} ISIC 2020 patients with ≥ {MIN_LESIONS} kept lesions, {f['lesions']} "
             f"lesions, {f['melanomas']} melanomas in {f['patients_with_melanoma']} patients.", "",
             "| order of a patient's lesions | melanoma first | in the first 3 | mean reciprocal rank | over chance "
             "(95 % CI, by patient) | minus probability's (95 % CI) |", "| --- | ---: | ---: | ---: | ---: | ---: |",
             f"| chance (a random order) | {r['chance_top1']:.2f} | {r['chance_top3']:.2f} | {r['chance_mrr']:.3f} | – | – |"]
    for o in ORDERS:
        lines.append(f"| {o} | {r[o + '_top1']:.2f} | {r[o + '_top3']:.2f} | {r[o + '_mrr']:.3f} | "
                     f"{r[o + '_mrr_over_chance']:+.3f} ({ci(r[o + '_mrr_over_chance_95ci'])}) | "
                     f"{ci(r[o + '_minus_probability_mrr_95ci']) if o != 'probability' else '–'} |")
    lines += ["", f"Melanoma AUC over those lesions: probability {f['probability_auc']:.3f}, with context (logit + outlier) "
              f"{f['context_auc']:.3f}, difference {ci(f['context_minus_probability_auc_95ci'])} (95 % CI by patient); "
              f"pAUC above 80 % TPR {f['probability_pauc80']:.3f} against {f['context_pauc80']:.3f}, difference "
              f"{ci(f['context_minus_probability_pauc80_95ci'])}."]
    return "\n".join(lines) + "\n"


def decision(f: dict) -> str:
    """What the figures allow (issue 32): a flag only if the outlier order beats chance with its interval above zero;
    an order other than probability only if it beats probability's with its interval above zero; a context-adjusted
    number only if its AUC gain's interval is above zero."""
    r = f["ranks"]
    flag = r["outlier_mrr_over_chance_95ci"][0] > 0
    better = [o for o in ORDERS[1:] if r[f"{o}_minus_probability_mrr_95ci"][0] > 0]
    adjust = f["context_minus_probability_auc_95ci"][0] > 0
    return ("Decision: " + ("the outlier order beats chance beyond its interval, so the most outlying lesion may be "
                            "flagged" if flag else "no lesion is flagged as the patient's outlier (its order does not "
                            "beat chance beyond its interval)") + "; " +
            (f"the {better[0]} order beats probability's beyond its interval and may replace it" if better else
             "the order stays by probability (no other order beats it beyond its interval)") + "; " +
            ("the context-adjusted score may replace the probability" if adjust else "the melanoma number stays the "
             "lesion's own, with the context shown beside it (the AUC difference's interval includes zero)") + ".")


def readme_block(readme: Path) -> tuple[str, str]:
    """README's text before and after its `<!-- studies.patients -->` ... `<!-- /studies.patients -->` block, markers
    kept; a ValueError that says what is missing."""
    start, end = "<!-- studies.patients -->\n", "<!-- /studies.patients -->"
    text = readme.read_text() if readme.is_file() else ""
    if start not in text or end not in text.split(start, 1)[-1]:
        raise ValueError(f"{readme} has no '{start.strip()}' line followed by '{end}' to put the table between")
    head, rest = text.split(start, 1)
    return head + start, rest[rest.index(end):]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studies.patients", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, nargs="+", required=True, help="one model folder per fold")
    parser.add_argument("--output_dir", type=Path, required=True, help="where the tables go")
    parser.add_argument("--readme", type=Path, help="also write the table into this file's studies.patients block")
    args = parser.parse_args(argv)
    command = "python -m studies.patients " + " ".join(argv if argv is not None else sys.argv[1:])
    try:
        block = readme_block(args.readme) if args.readme else None  # before the long part: no lost work
        rows, feats = scored_rows(fold_members(args.models))
        figures = measure(with_context(rows, feats))
    except (DataError, FileNotFoundError, ValueError) as err:
        print(f"patients: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    args.output_dir.mkdir(parents=True, exist_ok=True)
    rows.to_csv(args.output_dir / "isic2020_rows.csv", index=False)
    (args.output_dir / "patients.json").write_text(json.dumps({"command": command, **figures}, indent=1) + "\n")
    table = markdown(figures, command) + "\n" + decision(figures) + "\n"
    (args.output_dir / "patients.md").write_text(table)
    print(table)
    if block:
        args.readme.write_text(block[0] + table + block[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
