"""Leave one source out: train the recipe on the other sources and score the source it never saw.

    python -m studies.loso --reference runs/ablate_sources/three_sources/model   # trains runs/loso/without_<source>
    python -m studies.loso --table                                               # the docs/model.md table (output/loso.json)

For each source of the recipe (`--config`, default the CPU recipe), a run without it is trained (`--epochs`,
short by default) and scored through the Predictor on the held-out source's rows that `--reference` (a model
trained on every source) was validated on. Both models are scored on the same images, so the table gives the
paired-bootstrap interval of the difference: how much of a source's AUC comes from having trained on its look.
The result is written to `output/loso.json` (committed: the docs/model.md table's source).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml

from inference import Predictor
from inference.layout import METRICS, MODEL_DIR, STATUS, TRAINING_CONFIG
from train import metrics as M
from train.errors import ConfigError, DataError
from train.fit_guard import model_rows

from .crosscheck import assess, source_figures

# source name → the config key that lists its folders
SOURCE_KEYS = {"ham10000": "ham_dirs", "isic2020": "isic_dirs", "isic2017": "challenge_dirs"}
RESULT = Path("output/loso.json")


def train_without(config: Path, source: str, epochs: int, runs: Path) -> Path:
    """Train (or resume, or skip when complete) the recipe without `source`; its run folder."""
    recipe = yaml.safe_load(config.read_text())
    key = SOURCE_KEYS[source]
    if not recipe.get(key):
        raise ConfigError(f"{config} has no {key}: nothing to leave out for {source}.")
    run = runs / f"without_{source}"
    status = run / STATUS
    state = json.loads(status.read_text())["status"] if status.is_file() else "not run"
    if state != "complete":
        argv = ["--config", str(config), f"--{key}", "[]", "--epochs", str(epochs), "--output_dir", str(run)]
        argv += ["--resume"] if state != "not run" else []
        print("python -m train " + " ".join(argv), flush=True)
        if subprocess.call([sys.executable, "-m", "train", *argv]) != 0:
            raise DataError(f"training without {source} failed; run the same command to resume.")
    return run / MODEL_DIR


def score(reference: Path, held_out: Path, source: str) -> dict:
    """Both models on the reference's validation rows of `source` (which the held-out model never saw)."""
    fold = json.loads((reference / METRICS).read_text()).get("published_fold")
    _, val = model_rows(reference, fold)
    rows = val[val.source == source].reset_index(drop=True)
    without = assess(Predictor.from_pretrained(held_out), rows, f"without {source}")
    with_it = assess(Predictor.from_pretrained(reference), rows, f"with {source}")
    y, a, b = rows.target.to_numpy(), without.probability.to_numpy(), with_it.probability.to_numpy()
    return {"source": source, "without": source_figures(without), "with": source_figures(with_it),
            "difference": None if M.auc(y, a) is None else M.auc(y, a) - M.auc(y, b),
            "difference_95ci": M.auc_interval(y, a, other=b), "reference": str(reference),
            "epochs": {"without": _epochs(held_out), "with": _epochs(reference)}}


def _epochs(model: Path) -> int | None:
    return yaml.safe_load((model / TRAINING_CONFIG).read_text()).get("epochs")


def table(results: list[dict]) -> str:
    lines = ["| source left out | its validation images (melanomas) | melanoma AUC, trained without it (95 % CI) | "
             "trained with it | difference (paired 95 % CI) | guard refuses, without / with |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        w, t = r["without"], r["with"]
        ci, d = w["melanoma_auc_95ci"], r["difference_95ci"]
        auc = "–" if w["melanoma_auc"] is None else f"{w['melanoma_auc']:.3f}" + (f" ({ci[0]:.3f}–{ci[1]:.3f})" if ci else "")
        diff = "–" if r["difference"] is None else f"{r['difference']:+.3f}" + (f" ({d[0]:+.3f} to {d[1]:+.3f})" if d else "")
        with_auc = "–" if t["melanoma_auc"] is None else f"{t['melanoma_auc']:.3f}"
        lines.append(f"| {r['source']} | {w['images']} ({w['melanomas']}) | {auc} | {with_auc} | {diff} | "
                     f"{w['guard_refuses']:.1%} / {t['guard_refuses']:.1%} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studies.loso", description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", type=Path, help="a model folder trained on every source with the same epochs")
    parser.add_argument("--config", type=Path, default=Path("train/configs/cpu_default.yaml"))
    parser.add_argument("--epochs", type=int, default=3, help="epochs of each run without a source (default: 3)")
    parser.add_argument("--runs", type=Path, default=Path("runs/loso"))
    parser.add_argument("--sources", nargs="*", default=list(SOURCE_KEYS), choices=list(SOURCE_KEYS))
    parser.add_argument("--json", type=Path, default=RESULT, help="where the results go (default: %(default)s)")
    parser.add_argument("--table", action="store_true", help="print the table of --json and stop")
    args = parser.parse_args(argv)
    try:
        if args.table:
            print(table(json.loads(args.json.read_text())))
            return 0
        if args.reference is None:
            raise ConfigError("--reference MODEL_FOLDER is required (a model trained on every source)")
        # rows of sources not asked for this time stay, so one missing row can be added without retraining the rest
        kept = json.loads(args.json.read_text()) if args.json.is_file() else []
        results = [r for r in kept if r["source"] not in args.sources]
        args.json.parent.mkdir(parents=True, exist_ok=True)
        for source in args.sources:  # each source's result is written as soon as it exists: a long run can stop
            results.append(score(args.reference, train_without(args.config, source, args.epochs, args.runs), source))
            args.json.write_text(json.dumps(results, indent=1) + "\n")
    except (ConfigError, DataError, FileNotFoundError, ValueError) as err:
        print(f"loso: {err}", file=sys.stderr)
        return 2
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
