"""Put the Space on the Hugging Face Hub or the training notebook on Kaggle, or rehearse either here.

    python -m deploy space --repo ORG/NAME (--model ORG/MODEL@SHA | --bundled) [--private]
                           [--dry-run] [--stage DIR] [--project-url URL]
    python -m deploy space rehearse --stage DIR [--model-folder DIR] [--report FILE] [--work DIR]
    python -m deploy kaggle push --username U [--hf-repo ORG/NAME] ...   (python -m deploy kaggle --help)
    python -m deploy kaggle rehearse [--out DIR]

space     Stages what the Space needs (app.py, inference/, examples/, requirements.txt, a README with the
          Space front matter; output/default only with --bundled) and, with huggingface_hub.HfApi, creates
          the Space if needed, uploads the folder as one commit (files no longer staged are deleted) and sets
          the Space variable MELANOMA_MODEL=ORG/MODEL@SHA (--model) or removes it (--bundled). Prints the
          Space URL and the commit. --dry-run prints the calls instead and leaves the staged folder.
rehearse  Does what the Space builder does with a staged folder (a fresh venv with its python_version,
          pip install -r requirements.txt, python app.py), serving the bundled model and then a Hub model
          pinned by sha from a local stand-in of the Hub, and checks /predict on every example. Writes a
          JSON report; exit 1 if any check failed.

Exit codes: 0 done, 1 a failure (one line), 2 no token or one without write access (one line).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from .rehearse import rehearse
from .space import AuthError, plan, run
from .stage import DeployError, parse_model, stage


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m deploy", description=__doc__.split("\n\n")[0])
    commands = top.add_subparsers(dest="command", required=True)
    commands.add_parser("kaggle", help="put the Kaggle notebook and the code on Kaggle, or rehearse it here "
                                       "(python -m deploy kaggle --help)", add_help=False)
    space = commands.add_parser("space", help="stage the Space and create or update it on the Hub")
    space.add_argument("--repo", help="the Space, ORG/NAME")
    source = space.add_mutually_exclusive_group()
    source.add_argument("--model", help="serve this Hub model, pinned: ORG/MODEL@<40-hex commit sha>")
    source.add_argument("--bundled", action="store_true", help="serve output/default, uploaded with the Space")
    space.add_argument("--private", action="store_true", help="create the Space private")
    space.add_argument("--dry-run", action="store_true", help="print the HfApi calls instead of making them")
    space.add_argument("--stage", type=Path, metavar="DIR",
                       help="stage into this folder (emptied first; default: a temporary one)")
    space.add_argument("--project-url", help="the project's home page, linked from the Space's README")
    actions = space.add_subparsers(dest="action")
    rehearsal = actions.add_parser("rehearse", help="build and serve a staged Space as the Hub's builder would")
    rehearsal.add_argument("--stage", type=Path, required=True, dest="rehearse_stage", metavar="DIR",
                           help="the staged folder (python -m deploy space ... --dry-run --stage DIR)")
    rehearsal.add_argument("--model-folder", type=Path, metavar="DIR",
                           help="model folder the Hub stand-in serves (default: the stage's output/default, "
                                "else this checkout's)")
    rehearsal.add_argument("--report", type=Path, metavar="FILE",
                           help="write the JSON report here (default: stdout only)")
    rehearsal.add_argument("--work", type=Path, metavar="DIR",
                           help="keep the venv and the app logs here (default: removed)")
    return top


def space(args: argparse.Namespace) -> int:
    if not args.repo or args.repo.count("/") != 1 or not all(args.repo.split("/")):
        raise DeployError("--repo: expected the Space as ORG/NAME")
    if not (args.model or args.bundled):
        raise DeployError("pass --model ORG/MODEL@SHA (a Hub model, pinned) or --bundled (output/default)")
    model_repo = parse_model(args.model)[0] if args.model else None
    folder = args.stage or Path(tempfile.mkdtemp(prefix="space-stage-"))
    try:
        files = stage(folder, model_repo, args.bundled, args.project_url)
        calls = plan(args.repo, folder.resolve(), args.model, args.private)
        print(f"staged {len(files)} files in {folder}")
        if args.dry_run:
            print("dry run, these calls are not made:")
            print("\n".join(f"  {c}" for c in calls))
            return 0
        from huggingface_hub import HfApi

        deployed = run(HfApi(), calls)
        print(f"Space: {deployed.url}\ncommit: {deployed.commit} ({deployed.commit_url})")
        return 0
    finally:
        if args.stage is None and not args.dry_run:  # a temporary stage is only kept to be looked at
            shutil.rmtree(folder, ignore_errors=True)


def rehearse_command(args: argparse.Namespace) -> int:
    report = rehearse(args.rehearse_stage, args.model_folder, args.work)
    text = json.dumps(report, indent=1)
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(text + "\n")
    summary = {k: report[k] for k in ("venv_mb", "pip_s", "wall_s")} | \
              {f"{name}_first_200_s": leg["first_200_s"] for name, leg in report["legs"].items()}
    print(text if not args.report else f"report: {args.report}")
    print(json.dumps(summary))
    for failure in report["failures"]:
        print(f"FAILED {failure}", file=sys.stderr)
    return 1 if report["failures"] else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["kaggle"]:  # its own parser (deploy/kaggle_cli.py): push, rehearse
        from .kaggle_cli import main as kaggle

        return kaggle(argv[1:])
    args = parser().parse_args(argv)
    try:
        return rehearse_command(args) if args.action == "rehearse" else space(args)
    except AuthError as err:
        print(f"deploy: {err}", file=sys.stderr)
        return 2
    except DeployError as err:
        print(f"deploy: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
