"""The install cell: what Kaggle's image lacks, at the project's pinned versions, and the check that it is there."""

from __future__ import annotations

import platform
import re
import subprocess
import sys
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path


# requirements*.txt is what the notebook installs, minus these (the one place this is decided):
NOT_INSTALLED = {
    "torch": "Kaggle's own CUDA build is kept (a PyPI wheel would replace it with another CUDA)",
    "torchvision": "Kaggle's own build, matching its torch",
    "gradio": "the Space's web UI: training never imports it",
}
REQUIREMENTS = "requirements-train.txt"  # training = the Space's requirements (its -r) + the training stack


def requirement_pins(path: Path) -> dict[str, str]:
    """name → pinned version of a requirements file, following `-r` includes."""
    pins = {}
    for line in Path(path).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line.startswith("-r"):
            pins.update(requirement_pins(Path(path).parent / line[2:].strip()))
        elif line:
            found = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9_.\-]*)\s*==\s*(\S+)", line)
            if not found:
                raise ValueError(f"{path}: {line!r} is not `name==version` (the notebook installs exact pins)")
            pins[re.sub(r"[-_.]+", "-", found.group(1)).lower()] = found.group(2)
    return pins


def to_install(code: Path) -> dict[str, str]:
    """What the notebook installs on top of Kaggle's image: the training requirements less NOT_INSTALLED."""
    return {name: pin for name, pin in requirement_pins(Path(code) / REQUIREMENTS).items() if name not in NOT_INSTALLED}


def installed(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def install(code: Path, run_pip: bool = True) -> dict[str, str]:
    """pip install the pins (Kaggle's torch and torchvision held where they are), then check every version:
    folds and training depend on them. Returns name → installed version."""
    pins = to_install(code)
    if run_pip:
        with tempfile.TemporaryDirectory() as tmp:
            held = Path(tmp) / "held.txt"  # what Kaggle ships of NOT_INSTALLED stays at its version
            held.write_text("".join(f"{name}=={installed(name)}\n" for name in NOT_INSTALLED if installed(name)))
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "-c",
                            str(held), *(f"{k}=={v}" for k, v in pins.items())], check=True)
    wrong = {name: installed(name) for name, pin in pins.items() if installed(name) != pin}
    if wrong:
        raise SystemExit("Not the pinned versions (folds and training depend on them): "
                         + ", ".join(f"{k} {v} (pinned {pins[k]})" for k, v in wrong.items()))
    return {name: installed(name) for name in pins}


def runtime() -> dict:
    """The Python and torch this session runs (torch read from its metadata: importing it is the next cell's)."""
    return {"python": platform.python_version(), "torch": installed("torch"), "executable": sys.executable}
