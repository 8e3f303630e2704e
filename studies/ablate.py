"""Recipe ablations, one command each: train a variant on fold 0 and compare it with a reference on the same rows.

    python -m studies.ablate augment_flips     # train runs/ablate/augment_flips (resumes; skips if complete) + compare
    python -m studies.ablate --list            # the ablations of train/configs/ablations.yaml and their state
    python -m studies.ablate --table           # the docs/model.md table rows of every finished ablation

An ablation is `base` (a training config) + `common` + its own options, all in the plan file, so the
command that produced a row is its name. Its result, `results/NAME.json` (a folder of the plan that is
committed, unlike the run folders, which are scratch), holds the run's own validation metrics
(metrics.json) and the paired-bootstrap melanoma AUC difference with `against` on the same validation rows
(`studies.baselines.compare`), scored through the Predictor as the app scores.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

from inference.layout import METRICS, MODEL_DIR, RUN_LOG, STATUS
from train.errors import ConfigError, DataError

from .baselines import compare
from .crosscheck import crosscheck

PLAN = Path("train/configs/ablations.yaml")


def load_plan(path: Path = PLAN) -> dict:
    if not path.is_file():
        raise ConfigError(f"{path} does not exist; run from the repository root.")
    plan = yaml.safe_load(path.read_text())
    for key in ("base", "reference", "runs", "results", "ablations"):
        if key not in plan:
            raise ConfigError(f"{path} has no {key!r}.")
    return plan


def folder(plan: dict, name: str) -> Path:
    return Path(plan["runs"]) / name


def options(plan: dict, name: str) -> dict:
    """Ablation `name`'s own entry of the plan (its options, and `against`)."""
    if name not in plan["ablations"]:
        raise ConfigError(f"no ablation {name!r}; known: {', '.join(plan['ablations'])}.")
    return plan["ablations"][name]


def train_argv(plan: dict, name: str) -> list[str]:
    """The `python -m train` arguments of ablation `name`: base config, common options, its own options."""
    merged = {**plan.get("common", {}), **{k: v for k, v in options(plan, name).items() if k != "against"}}
    argv = ["--config", plan["base"]]
    for key, value in merged.items():
        argv += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
    return argv + ["--output_dir", str(folder(plan, name))]


def result_path(plan: dict, name: str) -> Path:
    return Path(plan["results"]) / f"{name}.json"


def against(plan: dict, name: str) -> Path | None:
    """The run `name` is compared with: its `against`, else the plan's `reference`; None when neither is set."""
    other = options(plan, name).get("against")
    if other:
        return folder(plan, other)
    return Path(plan["reference"]) if plan.get("reference") else None


def run_status(run_dir: Path) -> str:
    """The run folder's status.json: running (or crashed), complete, time_limit; or "not run"."""
    status = run_dir / STATUS
    return json.loads(status.read_text())["status"] if status.is_file() else "not run"


def state(plan: dict, name: str) -> str:
    return "compared" if result_path(plan, name).is_file() else run_status(folder(plan, name))


def run(plan: dict, name: str) -> dict:
    """Train (unless complete; --resume if started), then compare and write the result."""
    run_dir, other = folder(plan, name), against(plan, name)
    if other is not None and not other.is_dir():  # before training: the comparison is the point of the run
        how = (f"run `python -m studies.ablate {options(plan, name)['against']}` first"
               if "against" in options(plan, name) else "see the comment on `reference` in the plan file")
        raise DataError(f"{name} is compared with {other}, which does not exist; {how}.")
    if run_status(run_dir) != "complete":
        argv = train_argv(plan, name) + (["--resume"] if run_status(run_dir) != "not run" else [])
        print("python -m train " + " ".join(argv), flush=True)
        code = subprocess.call([sys.executable, "-m", "train", *argv])
        if code != 0:
            raise DataError(f"training {name} stopped with exit code {code}; run the same command to resume.")
    metrics = json.loads((run_dir / MODEL_DIR / METRICS).read_text())
    logs = [pd.read_csv(log) for log in sorted(run_dir.glob(f"fold*/{RUN_LOG}"))]
    externals = plan.get("externals", [])
    model, other_model = run_dir / MODEL_DIR, None if other is None else _model_dir(other)
    result = {"name": name, "options": plan["ablations"][name], "against": None if other is None else str(other),
              "train_minutes": float(sum(log.epoch_seconds.sum() for log in logs) / 60),
              "epochs": int(sum(len(log) for log in logs)),
              "metrics": {k: metrics.get(k) for k in ("melanoma_auc_ham10000", "melanoma_auc_isic2020",
                                                      "melanoma_auc_isic2017", "sensitivity_at_90_specificity",
                                                      "ece_after_temperature", "diagnosis_balanced_accuracy")},
              "compare": None if other is None else compare(run_dir, other),
              # every source's own validation rows and the external sets, through the Predictor (studies.crosscheck)
              "crosscheck": crosscheck(model, externals, other_model) if externals else None}
    result_path(plan, name).parent.mkdir(parents=True, exist_ok=True)
    result_path(plan, name).write_text(json.dumps(result, indent=1) + "\n")
    return result


def _model_dir(run: Path) -> Path:
    return run / MODEL_DIR if (run / MODEL_DIR).is_dir() else run


def _difference(figures: dict | None) -> str:
    """'+0.012 (-0.004 to +0.027)', or '–' without a comparison."""
    ci = (figures or {}).get("difference_ci95") or (figures or {}).get("difference_95ci")  # compare / crosscheck
    if ci is None:
        return "–"
    lo, hi = ci
    return f"{figures['difference']:+.3f} ({lo:+.3f} to {hi:+.3f})"


def row(result: dict, plan_path: Path = PLAN) -> str:
    """One docs/model.md table row; its command names `--plan` unless it is the default plan."""
    m = result["metrics"]
    ham = (result["compare"] or {}).get("ham10000", {"auc": m["melanoma_auc_ham10000"]})
    options = ", ".join(f"{k} {v}" for k, v in result["options"].items() if k != "against") or "the base recipe"
    versus = f" vs {Path(result['against']).name}" if result["against"] else ""
    line = (f"| {result['name']}: {options} | {ham['auc']:.3f} | {_difference(ham) if 'difference' in ham else '–'}"
            f"{versus} | {m['sensitivity_at_90_specificity']:.3f} | {m['diagnosis_balanced_accuracy']:.3f} |")
    external = next(((k, v) for k, v in (result.get("crosscheck") or {}).items() if "external" in k), None)
    if external:
        _, f = external
        line += (f" {f['melanoma_auc']:.3f} | {_difference(f.get('against'))} | {f['guard_refuses']:.1%} | "
                 f"{f['melanomas_refused_or_low']:.1%} |")
    else:
        line += " – | – | – | – |"
    plan_arg = "" if Path(plan_path) == PLAN else f"--plan {plan_path} "
    return line + f" {result['train_minutes']:.0f} | `python -m studies.ablate {plan_arg}{result['name']}` |"


def table(plan: dict, plan_path: Path = PLAN) -> str:
    lines = ["| ablation (3 epochs on fold 0 unless it says) | melanoma AUC, HAM rows (in-source) | difference, paired "
             "95 % CI | sens @ 90 % spec | balanced accuracy | melanoma AUC, external | difference, paired 95 % CI | "
             "guard refuses, external | melanomas refused or low, external | train min | command |",
             "| --- | ---: | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | --- |"]
    for name in plan["ablations"]:
        path = result_path(plan, name)
        if path.is_file():
            lines.append(row(json.loads(path.read_text()), plan_path))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studies.ablate", description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="ablations to run, in order (train/configs/ablations.yaml)")
    parser.add_argument("--plan", type=Path, default=PLAN, help="default: %(default)s; the cross-source decisions "
                                                                   "(issue 24) are train/configs/ablations_sources.yaml")
    parser.add_argument("--list", action="store_true", help="list the ablations and their state")
    parser.add_argument("--table", action="store_true", help="print the docs/model.md table of the finished ones")
    args = parser.parse_args(argv)
    try:
        plan = load_plan(args.plan)
        if args.list:
            for name, options in plan["ablations"].items():
                print(f"{name:24} {state(plan, name):10} {options}")
        for name in args.names:
            result = run(plan, name)
            print(row(result, args.plan))
        if args.table:
            print(table(plan, args.plan))
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not (args.names or args.list or args.table):
        parser.print_usage()
    return 0


if __name__ == "__main__":
    sys.exit(main())
