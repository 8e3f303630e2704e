"""Kaggle: put the project on Kaggle (`push`), and rehearse the Kaggle notebook here (`rehearse`).

    python -m deploy kaggle push --username U [--hf-repo ORG/NAME] [--no-run] [--resume] [--dry-run] [--stage DIR]
    python -m deploy kaggle rehearse [--out DIR]

push      (deploy/kaggle_push.py) Stages the code dataset U/melanoma-triage-code (one zip of the files git
          would commit, no data) and the kernel U/melanoma-triage-train-2xt4 (the notebook; GPU T4 x2, internet
          on; --resume attaches its own previous output and pins the first session's image), then runs
          `kaggle datasets create|version`, waits until Kaggle has the new version ready, and runs
          `kaggle kernels push`, failing on what the CLI prints as well as on its exit code.
rehearse  (deploy/kaggle_rehearse.py) Runs the notebook three times as Kaggle sessions inside a Kaggle-image
          environment (deploy/kaggle_env.py: Python 3.12, torch 2.10.0 and Kaggle's package versions, built
          once and cached), with its real install cell, on Kaggle's mount layouts built from ../shared/data,
          2 CPU processes, a fake Hub: a run to completion, a time-limited run, its resumption. Writes
          DIR/rehearsal.json; exit 0 only if every check passes.

The notebook itself imports the kaggle_notebook package (standard library only) from the attached code.
"""

from __future__ import annotations

import argparse
import sys

from . import kaggle_env, kaggle_push, kaggle_rehearse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m deploy kaggle", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawTextHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    push = sub.add_parser("push", help="stage the code dataset and the kernel, then upload them with the kaggle CLI",
                          description="Stage U/melanoma-triage-code (the project's code, no data) and the kernel "
                                      "U/melanoma-triage-train-2xt4, then run `kaggle datasets create|version`, wait "
                                      "until the new version is ready, and `kaggle kernels push`. Credentials: an API "
                                      "token from https://www.kaggle.com/settings/api in ~/.kaggle/access_token or "
                                      "KAGGLE_API_TOKEN (or legacy kaggle.json / KAGGLE_USERNAME + KAGGLE_KEY).")
    push.add_argument("--username", required=True, help="your Kaggle user name (owner of the dataset and kernel)")
    push.add_argument("--dry-run", action="store_true", help="stage and print the exact kaggle commands; upload nothing")
    push.add_argument("--stage", help="folder to stage in (default: runs/kaggle-push); its code-dataset/ and kernel/ are "
                                      "replaced on every call")
    push.add_argument("--resume", action="store_true",
                      help="also attach the kernel's own previous output (kernel_sources), to continue a run that "
                           "the time limit stopped")
    push.add_argument("--hf-repo", help="Hub repo id the notebook pushes the model to (sets HF_REPO in its settings "
                                        "cell); the token comes from the kernel's HF_TOKEN secret")
    push.add_argument("--no-run", action="store_true",
                      help="save the kernel without starting it (kaggle kernels push --no-run): the first time, to "
                           "add the HF_TOKEN secret in the editor before the run")
    push.set_defaults(func=kaggle_push.cmd_push)
    rehearse = sub.add_parser("rehearse", help="run the notebook as 3 Kaggle sessions here, inside Kaggle's image",
                              description="Build (once, cached) the Kaggle-image environment from "
                                          "../shared/kaggle-image, then run the notebook with its install cell as 3 "
                                          "sessions on Kaggle-shaped input trees made from ../shared/data (or "
                                          "$MELANOMA_DATA) with symlinks: complete run, time-limited run, resumed "
                                          "run; 2 CPU processes; fake Hub. Writes DIR/rehearsal.json; exit 0 only "
                                          "if every check passes.")
    rehearse.add_argument("--out", help="rehearsal folder (default: runs/kaggle-rehearsal); an earlier rehearsal there "
                                        "is replaced, any other non-empty folder refused")
    rehearse.add_argument("--timeout", type=int, default=600, help="seconds allowed per notebook cell (default 600)")
    rehearse.set_defaults(func=kaggle_rehearse.cmd_rehearse)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (kaggle_push.KaggleCliError, kaggle_env.EnvError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
