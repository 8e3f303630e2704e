"""One patient's lesions assessed together (issue 32): `Predictor.predict_patient` on 20 real ISIC 2020 lesions of one
patient, as the Space serves it (8 views in runs of app.ROWS_PER_RUN, the guard and the bands), against a budget of
3 s, and against the same 20 images sent one by one to `Predictor.predict` (what a visitor would do without the tab).

    python bench/patient.py                       # output/default, 5 runs
    python bench/patient.py --model M --lesions 30 --runs 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pandas as pd  # noqa: E402

from inference import Predictor  # noqa: E402
from inference.layout import data_root  # noqa: E402

BUDGET_S = 3.0  # issue 32: 20 lesions answered in at most 3 s here
TOGETHER = "predict_patient, {n} lesions (as the Space)"
ONE_BY_ONE = "predict, the same {n} lesions one by one"


def one_patient(data: Path, n: int) -> tuple[list[str], float | None, str | None, list[str | None]]:
    """The paths, age, sex and sites of `n` lesions of the ISIC 2020 patient with the most images here."""
    rows = pd.read_csv(data / "isic2020" / "train.csv")
    rows = rows[rows.patient_id == rows.patient_id.value_counts().index[0]].head(n)
    if len(rows) < n:
        sys.exit(f"bench/patient.py: the largest patient in {data / 'isic2020'} has {len(rows)} images; ask for fewer")
    paths = [str(data / "isic2020" / "train" / f"{name}.jpg") for name in rows.image_name]
    sites = [None if pd.isna(s) else s for s in rows.anatom_site_general_challenge]
    age = None if pd.isna(rows.age_approx.iloc[0]) else float(rows.age_approx.iloc[0])
    return paths, age, rows.sex.iloc[0], sites


def seconds(fn, runs: int) -> tuple[float, float]:
    """(median, max) seconds of `runs` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), max(times)


def main() -> None:
    import app

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(REPO / "output" / "default"))
    parser.add_argument("--lesions", type=int, default=20)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--data", type=Path, default=data_root(REPO), help="default: $MELANOMA_DATA or ../shared/data")
    parser.add_argument("--json", type=Path, help="also write the headline figures to this JSON file")
    args = parser.parse_args()
    predictor = app.load_predictor(args.model)  # the Space's own loading: rows per run as served
    paths, age, sex, sites = one_patient(args.data, args.lesions)
    n = len(paths)
    rows = {TOGETHER.format(n=n): seconds(lambda: predictor.predict_patient(paths, age, sex, sites), args.runs),
            ONE_BY_ONE.format(n=n): seconds(lambda: [predictor.predict(p, age, sex, s) for p, s in zip(paths, sites)],
                                            args.runs)}
    print(f"\n{n} lesions of one ISIC 2020 patient, model {predictor.model_id}, {args.runs} runs after a warm-up")
    print(f"| {'what':<45} | median s | max s |\n| {'-' * 45} | -------: | ----: |")
    for name, (median, worst) in rows.items():
        print(f"| {name:<45} | {median:8.2f} | {worst:5.2f} |")
    together, alone = rows[TOGETHER.format(n=n)][0], rows[ONE_BY_ONE.format(n=n)][0]
    print(f"\n{n} lesions together: {together:.2f} s at the median = {together / BUDGET_S:.2f} of the {BUDGET_S:.0f} s "
          f"budget; one by one / together = {alone / together:.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"patient_s": together, "one_by_one_s": alone, "lesions": n}, indent=1) + "\n")


if __name__ == "__main__":
    main()
