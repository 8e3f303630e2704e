"""What the Space needs, copied into one folder: app*.py, inference/, examples/, requirements.txt, a README
with the Space front matter, and the bundled model only when the Space serves it.

Everything else (tests, train/, bench/, notebooks/, data, run folders) stays out: the Space builder
installs requirements.txt and runs app.py, nothing more.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from inference.layout import SERVED_FILES  # standard library only: the model files serving reads

REPO = Path(__file__).resolve().parents[1]
BUNDLED = "output/default"  # app.py's DEFAULT_MODEL: served when $MELANOMA_MODEL is unset
CODE = ("app.py", "app_patient.py", "app_requests.py", "requirements.txt")  # app*.py: the Space's code
FOLDERS = ("inference", "examples")
STAGED_NAMES = {*CODE, *FOLDERS, "README.md", BUNDLED.split("/")[0]}  # what a staged folder holds at its top
SHA = re.compile(r"[0-9a-f]{40}")


class DeployError(RuntimeError):
    """A problem the person running `python -m deploy` must fix; printed as one line, no traceback."""


def parse_model(model: str) -> tuple[str, str]:
    """'org/name@<40-hex sha>' → ('org/name', sha). A branch or tag is refused: the Space must serve
    exactly the weights that were evaluated, and a branch moves under it."""
    repo_id, _, sha = model.partition("@")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise DeployError(f"--model {model!r}: expected ORG/MODEL@SHA, e.g. org/melanoma@3f2a... (40 hex digits)")
    if not SHA.fullmatch(sha):
        raise DeployError(f"--model {model!r} is not pinned to a commit: append @<the 40-hex commit sha> "
                          f"(the Hub shows it under Files and versions → History)")
    return repo_id, sha


def front_matter(readme: Path = REPO / "README.md") -> list[str]:
    """The YAML lines between the README's opening `---` fences (the Space settings), without the fences."""
    lines = readme.read_text(encoding="utf-8").splitlines()
    if not lines or lines[0] != "---" or "---" not in lines[1:]:
        raise DeployError(f"{readme} does not start with a `---` YAML front matter block (the Space settings)")
    return lines[1:lines.index("---", 1)]


def front_matter_value(lines: list[str], key: str) -> str | None:
    """A top-level scalar from front matter lines, quotes stripped (`python_version: "3.11"` → '3.11')."""
    for line in lines:
        found = re.fullmatch(rf"{re.escape(key)}:\s*(.*?)\s*", line)
        if found:
            return found.group(1).strip("'\"") or None
    return None


def front_matter_models(lines: list[str]) -> list[str]:
    """The `models:` list of front matter lines (`- org/name` items after a `models:` line)."""
    models, inside = [], False
    for line in lines:
        if re.fullmatch(r"models:\s*", line):
            inside = True
        elif inside and line.lstrip().startswith("- "):
            models.append(line.strip()[2:].strip().strip("'\""))
        else:
            inside = False
    return models


def space_readme(model_repo: str | None, project_url: str | None = None, readme: Path = REPO / "README.md") -> str:
    """The Space's README.md: the project's front matter (+ `models:` linking the Hub model it serves,
    which also lists the Space on the model's page) and a short body linking the project."""
    lines = [line for line in front_matter(readme) if not line.startswith("models:")]
    if model_repo:
        lines += ["models:", f"- {model_repo}"]
    title = front_matter_value(lines, "title") or "Melanoma triage"
    model = f"the Hub model [{model_repo}](https://huggingface.co/{model_repo}), pinned to one commit by the " \
            "Space variable `MELANOMA_MODEL`" if model_repo else "the model bundled in `output/default`"
    project = f"Code, training and evaluation: {project_url}" if project_url else \
        "The serving code is in this Space's files (`app.py`, `inference/`)."
    body = f"""# {title}

Melanoma probability, benign/malignant probability and a differential diagnosis (the seven HAM10000
classes) from one dermoscopic image plus optional age, sex and anatomical site, with a Grad-CAM heat map.
Images that do not look dermoscopic are refused. This Space serves {model}.

> **Research demo, not a medical device.** It has not been clinically validated and must not be used
> to diagnose anyone. Anyone worried about a skin lesion should see a doctor or dermatologist.

Programs call it with `gradio_client` (`api_name="/predict"`). {project}
"""
    return "\n".join(["---", *lines, "---", "", body])


def check_emptiable(dest: Path) -> None:
    """Staging empties `dest` first: refuse anything but a new or empty folder or an earlier stage."""
    dest = Path(dest).resolve()
    if REPO.resolve().is_relative_to(dest):
        raise DeployError(f"--stage {dest} holds this checkout; pass a new folder, e.g. /tmp/space")
    if dest.is_dir() and not {p.name for p in dest.iterdir()} <= STAGED_NAMES:
        raise DeployError(f"--stage {dest} is neither empty nor an earlier stage (staging empties it); "
                          "pass a new folder, e.g. /tmp/space")
    if dest.exists() and not dest.is_dir():
        raise DeployError(f"--stage {dest} is a file; pass a new folder, e.g. /tmp/space")


def stage(dest: Path, model_repo: str | None, bundled: bool, project_url: str | None = None,
          repo: Path = REPO) -> list[str]:
    """Fill `dest` (emptied first) with what the Space needs; returns the staged files, relative, sorted.

    `model_repo` (a Hub repo id) goes into the README's `models:`; `bundled` copies the model files that
    serving reads (inference.layout.SERVED_FILES) from output/default."""
    if bundled == bool(model_repo):
        raise DeployError("pass exactly one of --model ORG/MODEL@SHA (a Hub model) or --bundled (output/default)")
    dest = Path(dest)
    check_emptiable(dest)
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for name in CODE:
        shutil.copy2(repo / name, dest / name)
    for folder in FOLDERS:
        shutil.copytree(repo / folder, dest / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    if bundled:
        source = repo / BUNDLED
        missing = [f for f in SERVED_FILES[:3] if not (source / f).is_file()]  # config, weights, ONNX: required
        if missing:
            raise DeployError(f"{source} lacks {', '.join(missing)}: train it with "
                              "`python -m train --config train/configs/cpu_default.yaml`, or deploy with --model")
        (dest / BUNDLED).mkdir(parents=True)
        for name in SERVED_FILES:
            if (source / name).is_file():
                shutil.copy2(source / name, dest / BUNDLED / name)
    (dest / "README.md").write_text(space_readme(model_repo, project_url, repo / "README.md"), encoding="utf-8")
    return sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
