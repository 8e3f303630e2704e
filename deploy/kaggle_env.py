"""The Kaggle-image environment the rehearsal runs the notebook in (standard library only).

Kaggle's GPU image is Colab's runtime plus Kaggle's own packages; ../shared/kaggle-image/ holds the
public records of both (README there). `kaggle_image_env()` builds a venv from them, once, cached under
~/.cache/melanoma-triage/kaggle-env-<hash of its inputs>: the Python minor version Colab runs, torch and
torchvision at Colab's versions (PyPI's build of the same release: on a machine without a GPU it runs on the
CPU), and every package the project, its imports and the notebook touch at the version Colab pins (Kaggle's
own additions are unpinned: the newest resolve). Everything else Colab pins constrains what they pull in.
None of the project's requirement files go in: the notebook's own install cell adds those, as on Kaggle.

`session_env()` makes one notebook session's environment on top of it: an empty venv that sees the image's
packages behind its own, so what the install cell installs lands in the session and the cached image stays
as Kaggle ships it, for the next session.
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from inference import layout

REPO = Path(__file__).resolve().parents[1]

# ../shared/kaggle-image, beside the data the tests read (../shared/data, or wherever $MELANOMA_DATA points)
IMAGE_RECORDS = layout.data_root(REPO).parent / "kaggle-image"
FREEZE = "colab-pip-freeze.gpu.txt"  # Colab's `pip freeze`: the pins
KAGGLE_LIST = "kaggle_requirements.txt"  # what Kaggle adds on top (mostly unpinned)
OS_INFO = "colab-os-info.gpu.txt"  # Colab's Python version
# What the notebook, the project and their imports touch on Kaggle before its install cell runs.
# tensorflow + tensorboard: accelerate's TensorBoard tracker imports them when present, as on Kaggle.
PACKAGES = ("torch", "torchvision", "numpy", "pandas", "scikit-learn", "scipy", "pillow", "opencv-python-headless",
            "matplotlib", "timm", "accelerate", "huggingface-hub", "safetensors", "albumentations", "tqdm", "pyyaml",
            "onnx", "ipykernel", "papermill", "tensorboard", "tensorflow")
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "melanoma-triage"
MARKER = "kaggle-image.json"  # written last: an environment without it is a broken build and is rebuilt


class EnvError(RuntimeError):
    """The environment cannot be built here; the message says what to do."""


def _read(records: Path, name: str) -> str:
    if not (records / name).is_file():
        raise EnvError(f"Kaggle's image records are not at {records} (no {name}): they sit beside the data, in "
                       "../shared/kaggle-image (README there); set MELANOMA_DATA if the data is elsewhere")
    return (records / name).read_text()


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(records: Path = IMAGE_RECORDS) -> dict[str, str]:
    """Colab's `name==version` lines, local version labels dropped (torch 2.10.0+cu128 → 2.10.0: PyPI's build)."""
    pins = {}
    for line in _read(records, FREEZE).splitlines():
        found = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9_.\-]*)==([^\s+;]+)(\+\S+)?", line.strip())
        if found:
            pins[normalise(found.group(1))] = found.group(2)
    return pins


def kaggle_listed(records: Path = IMAGE_RECORDS) -> set[str]:
    """The packages Kaggle adds on top of Colab's (names only: its list is mostly unpinned)."""
    names = set()
    for line in _read(records, KAGGLE_LIST).splitlines():
        found = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9_.\-]*)", line.split("#")[0])
        if found:
            names.add(normalise(found.group(1)))
    return names


def image_packages(records: Path = IMAGE_RECORDS) -> set[str]:
    """Every distribution name Kaggle's image holds (Colab's freeze + Kaggle's list)."""
    return set(read_pins(records)) | kaggle_listed(records)


def python_version(records: Path = IMAGE_RECORDS) -> str:
    """Colab's Python as major.minor ("3.12")."""
    found = re.search(r"^Python (\d+\.\d+)\.\d+", _read(records, OS_INFO), re.M)
    if not found:
        raise EnvError(f"no 'Python X.Y.Z' line in {records / OS_INFO}")
    return found.group(1)


def find_python(minor: str) -> str:
    """A python<minor> interpreter: on PATH, or one of pyenv's (whose shims need a selected version)."""
    candidates = [shutil.which(f"python{minor}")] + sorted(
        glob.glob(str(Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions" / f"{minor}.*" / "bin"
                      / f"python{minor}")), reverse=True)
    for exe in filter(None, candidates):
        done = subprocess.run([exe, "-c", "import sys, venv; print('%d.%d' % sys.version_info[:2])"],
                              capture_output=True, text=True)
        if done.returncode == 0 and done.stdout.strip() == minor:
            return exe
    raise EnvError(f"no Python {minor} here (Kaggle's image runs {minor}): install it (apt-get install "
                   f"python{minor}-venv, or `pyenv install {minor}`) and run again")


def spec(records: Path = IMAGE_RECORDS) -> dict:
    """What the environment is built from: requirements (pinned where Colab pins them) and constraints."""
    pins = read_pins(records)
    listed = kaggle_listed(records)
    missing = [p for p in PACKAGES if p not in pins and p not in listed]
    if missing:
        raise EnvError(f"{', '.join(missing)} neither pinned in {records / FREEZE} nor listed in "
                       f"{records / KAGGLE_LIST}: update the image records (../shared/kaggle-image/README.md)")
    requirements = [f"{p}=={pins[p]}" if p in pins else p for p in PACKAGES]
    constraints = [f"{name}=={version}" for name, version in sorted(pins.items()) if name not in PACKAGES]
    return {"python": python_version(records), "requirements": requirements, "constraints": constraints}


def env_dir(records: Path = IMAGE_RECORDS, cache: Path = CACHE) -> Path:
    """The cache folder, keyed by a hash of everything the build reads: the records and what is asked of them."""
    digest = hashlib.sha256()
    for name in (FREEZE, KAGGLE_LIST, OS_INFO):
        digest.update(_read(records, name).encode())
    digest.update(json.dumps(spec(records), sort_keys=True).encode())
    return cache / f"kaggle-env-{digest.hexdigest()[:16]}"


def kaggle_image_env(records: Path = IMAGE_RECORDS, cache: Path = CACHE, log=print) -> dict:
    """The cached environment's description (MARKER's content), building it first if needed."""
    folder = env_dir(records, cache)
    if (folder / MARKER).is_file():
        return json.loads((folder / MARKER).read_text())
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f"{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another rehearsal building this environment: wait for it, then use it
        if (folder / MARKER).is_file():
            return json.loads((folder / MARKER).read_text())
        return _build(folder, records, log)


def _build(folder: Path, records: Path, log) -> dict:
    shutil.rmtree(folder, ignore_errors=True)  # an interrupted build
    wanted = spec(records)
    python = find_python(wanted["python"])
    log(f"building the Kaggle-image environment in {folder} (Python {wanted['python']}, "
        f"{len(wanted['requirements'])} packages at Colab's pins; once, then cached)")
    start = time.monotonic()
    subprocess.run([python, "-m", "venv", str(folder)], check=True)
    (folder / "constraints.txt").write_text("\n".join(wanted["constraints"]) + "\n")
    pip = [str(folder / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    done = subprocess.run(pip + ["-c", str(folder / "constraints.txt"), *wanted["requirements"]],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise EnvError(f"pip could not build the Kaggle-image environment in {folder}:\n{done.stderr[-3000:]}")
    versions = json.loads(subprocess.run(
        [str(folder / "bin" / "python"), "-m", "pip", "list", "--format", "json", "--disable-pip-version-check"],
        capture_output=True, text=True, check=True).stdout)
    info = {"folder": str(folder), "base_interpreter": python,
            "site_packages": subprocess.run([str(folder / "bin" / "python"), "-c",
                                             "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                            capture_output=True, text=True, check=True).stdout.strip(),
            "build_seconds": round(time.monotonic() - start, 1), **wanted,
            "installed": {normalise(v["name"]): v["version"] for v in versions}}
    (folder / MARKER).write_text(json.dumps(info, indent=1) + "\n")
    log(f"built in {info['build_seconds']:.0f} s")
    return info


def session_env(image: dict, dest: Path) -> Path:
    """A fresh session on top of the image: an empty venv whose .pth adds the image's site-packages after its
    own (their .pth files included). pip installs into the session; the image is never written to. Returns
    the session's python."""
    shutil.rmtree(dest, ignore_errors=True)
    subprocess.run([image["base_interpreter"], "-m", "venv", "--without-pip", str(dest)], check=True)
    python = dest / "bin" / "python"
    own = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                         capture_output=True, text=True, check=True).stdout.strip()
    Path(own, "kaggle_image.pth").write_text(f"import site; site.addsitedir({image['site_packages']!r})\n")
    return python


def clean_environ(python: Path) -> dict:
    """os.environ for a process of that environment: its bin/ first, nothing from this one leaking in."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(PATH=os.pathsep.join([str(Path(python).parent), env.get("PATH", "")]), PYTHONNOUSERSITE="1",
               VIRTUAL_ENV=str(Path(python).parents[1]))
    return env


if __name__ == "__main__":  # `python -m deploy.kaggle_env`: build (or find) it and print where
    try:
        print(json.dumps({k: v for k, v in kaggle_image_env(log=lambda m: print(m, file=sys.stderr)).items()
                          if k not in ("installed", "constraints")}, indent=1))
    except EnvError as err:
        sys.exit(f"error: {err}")
