"""The code cell: find the project code among the notebook's inputs and copy it to WORKING/code; session.json.

The code dataset that `python -m deploy kaggle push` uploads wins over an earlier output's code/ (what was pushed
last, not what an earlier session happened to run).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path


SESSION_FILE = "session.json"  # the notebook writes it into /kaggle/working: marks a notebook output
CODE_MARKER = "CODE_VERSION.json"  # written by `python -m deploy kaggle push` into the code dataset
# How deep the searches below /kaggle/input go. Kaggle's current mounts put a previous run at
# notebooks/<owner>/<slug>/runs/<name> (depth 5) and the code at datasets/<owner>/<slug>/<zip folder> (4):
# 8 leaves room for a dataset that nests one folder more, and no search finds its target at the limit.
SEARCH_DEPTH = 8
NOT_DESCENDED = ("__pycache__", "states", "train", "test", "jpeg", "images")  # image and checkpoint folders


def walk_dirs(root: Path, max_depth: int = SEARCH_DEPTH):
    """(folder, depth) below root, depth first in sorted order; image and checkpoint folders are not entered."""
    stack = [(Path(root), 0)]
    while stack:
        folder, depth = stack.pop()
        yield folder, depth
        if depth >= max_depth:
            continue
        try:
            children = sorted((e.name for e in os.scandir(folder) if e.is_dir()), reverse=True)
        except OSError:
            continue
        stack += [(folder / name, depth + 1) for name in children
                  if not name.startswith(".") and name not in NOT_DESCENDED]


def is_code(folder: Path) -> bool:
    return (folder / "train" / "__main__.py").is_file() and (folder / "inference" / "__init__.py").is_file()


def code_candidates(input_root: Path) -> list[tuple[int, str]]:
    """(1 if an earlier notebook output's copy else 0, path) of every project copy, best first."""
    found = []
    for folder, _ in walk_dirs(input_root):
        if is_code(folder):
            found.append((int((folder.parent / SESSION_FILE).is_file() or (folder.parent / "runs").is_dir()),
                          str(folder)))
    return sorted(found)


def use_code(input_root: str | Path, working: str | Path) -> tuple[Path, dict, list[str]]:
    """Copy the chosen code to WORKING/code (inputs are read-only; the copy is what runs and what the output
    keeps); (that folder, its CODE_VERSION.json, lines to print).

    The code dataset wins over an earlier output's code/: it is what was pushed last (a fix reaches Kaggle that
    way); resuming stays safe because training refuses to continue a run whose recipe changed."""
    found = code_candidates(Path(input_root))
    if not found:
        raise SystemExit(f"No project code below {input_root}: on your machine run `python -m deploy kaggle push "
                         "--username YOU`, then Add data → Your datasets → melanoma-triage-code, and run again.")
    kind, source = found[0]
    code = Path(working) / "code"
    shutil.rmtree(code, ignore_errors=True)
    shutil.copytree(source, code, ignore=shutil.ignore_patterns("__pycache__"))
    marker = code / CODE_MARKER
    code_version = json.loads(marker.read_text()) if marker.is_file() else {}
    lines = [f"code: {source} ({'the code dataset' if kind == 0 else 'an earlier output: no code dataset is attached'}"
             f"; commit {code_version.get('git_commit')}"
             + (", with local changes" if code_version.get("modified_or_new") else "") + ")"]
    lines += [f"  not used: {other} ({'code dataset' if k == 0 else 'earlier output'})" for k, other in found[1:]]
    return code, code_version, lines


class Session:
    """WORKING/session.json: what this session ran and how it ended (it also marks the output as a notebook's)."""

    def __init__(self, working: str | Path, **values) -> None:
        self.path = Path(working) / SESSION_FILE
        self.values = {"status": "started", **values}
        self.save()

    def save(self, **values) -> None:
        self.values.update(values)
        self.path.write_text(json.dumps(self.values, indent=1, default=str) + "\n")
