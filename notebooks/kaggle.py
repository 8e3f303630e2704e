"""Kaggle: put the project on Kaggle (`push`), and rehearse the Kaggle notebook here (`rehearse`).

    python notebooks/kaggle.py push --username U [--hf-repo ORG/NAME] [--no-run] [--resume] [--dry-run] [--stage DIR]
    python notebooks/kaggle.py rehearse [--out DIR]

push      Stages two folders and uploads them with the official `kaggle` CLI (PyPI `kaggle`):
          1. the code dataset U/melanoma-triage-code: every file git would commit (`git ls-files --cached
             --others --exclude-standard`, so new files not yet added count too) under one folder
             `melanoma-triage/`, plus CODE_VERSION.json (commit, modified files) and dataset-metadata.json.
             Left out: output/ (the bundled Space model: training never reads it, 28 MB per version),
             runs/, input/ data, and any image or DICOM file: the code dataset carries no data.
          2. the kernel U/melanoma-triage-train-2xt4: the notebook and a kernel-metadata.json made from
             the template notebooks/kernel-metadata.json (dataset_sources: the code dataset, ISIC 2020 as
             resized JPEGs, HAM10000; GPU T4 x2; internet on). --resume also attaches the kernel's own
             previous output (kernel_sources), which is how a time-limited run continues; --hf-repo
             sets the notebook's HF_REPO (the token is the kernel's HF_TOKEN secret, never staged).
          Then it runs `kaggle datasets create` (or `datasets version` when the dataset exists) and
          `kaggle kernels push`. --dry-run prints those exact commands and leaves the staged folders.
rehearse  Builds a Kaggle-shaped tree under DIR (DIR/kaggle/input, DIR/kaggle/working) from the real
          data in ../shared/data (symlinks only, no image is copied), with the code dataset exactly as
          `push` stages it and a decoy competition folder whose train/ holds DICOM-named files. It then
          executes the notebook itself three times with papermill on this CPU, 2 real processes
          (ACCELERATE_USE_CPU=yes, gloo) and a fake Hub that records what would be uploaded: (1) a run to
          completion; (2) a second run with (1)'s output attached and a time limit that stops it midway;
          (3) the same run again with (2)'s output attached, which resumes and finishes. Exit 0 only if
          every check passes.

The notebook also imports this file (from the attached code) for its data choice, resume detection,
status reading and the fake Hub; those helpers are at the top and need only the standard library.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
NOTEBOOK = HERE / "melanoma_train_kaggle.ipynb"
KERNEL_TEMPLATE = HERE / "kernel-metadata.json"
PLACEHOLDER = "YOUR_KAGGLE_USERNAME"
CODE_SLUG = "melanoma-triage-code"
CODE_TITLE = "Melanoma triage code"
CODE_ROOT = "melanoma-triage"     # the single folder inside the code dataset (one archive: layout kept)
CODE_MARKER = "CODE_VERSION.json"
SESSION_FILE = "session.json"     # written by the notebook into /kaggle/working: marks a notebook output
STATUS_FILE = "status.json"       # written by training (rank 0) into the run folder
KAGGLE_PIN = "kaggle==2.2.5"

# What the code dataset never holds, whatever git tracks: run folders, the bundled model, data.
EXCLUDE_DIRS = ("output/", "runs/", "input/")
DATA_SUFFIXES = (".jpg", ".jpeg", ".png", ".dcm", ".tfrec", ".tfrecord", ".safetensors", ".onnx", ".pth",
                 ".pt", ".zip", ".tar", ".gz", ".npy", ".npz", ".bmp", ".tif", ".tiff", ".webp", ".gif")


class KaggleCliError(RuntimeError):
    """A problem the person running this script must fix; printed as one line, no traceback."""


# --------------------------------------------------------------------------------------------------------
# Helpers the notebook uses (standard library only: they run before anything is installed)
# --------------------------------------------------------------------------------------------------------

def walk_dirs(root: Path, max_depth: int = 4):
    """Directories below root, sorted, at most max_depth levels deep; image folders are not descended."""
    root = Path(root)
    stack = [(root, 0)]
    while stack:
        folder, depth = stack.pop()
        yield folder
        if depth >= max_depth:
            continue
        try:
            children = sorted((e for e in os.scandir(folder) if e.is_dir()), key=lambda e: e.name, reverse=True)
        except OSError:
            continue
        for entry in children:
            if entry.name.startswith(".") or entry.name in ("__pycache__", "states"):
                continue
            stack.append((Path(entry.path), depth + 1))


def _header(csv_path: Path) -> set[str]:
    try:
        with open(csv_path, newline="") as f:
            return set(next(csv.reader(f), []))
    except (OSError, UnicodeDecodeError, csv.Error):
        return set()


def _holds_jpegs(folder: Path, look: int = 200) -> bool:
    """True if the first `look` entries of folder include a .jpg (a DICOM train/ has none)."""
    try:
        with os.scandir(folder) as it:
            for i, entry in enumerate(it):
                if entry.name.lower().endswith((".jpg", ".jpeg")):
                    return True
                if i >= look:
                    break
    except OSError:
        pass
    return False


ISIC_COLUMNS = {"image_name", "patient_id", "target"}


def isic_candidates(input_root: Path, image_size: int) -> tuple[list[dict], list[str]]:
    """Every ISIC 2020 folder below input_root, best first, and why the others were skipped.

    Order (deterministic, independent of the order the file system lists folders in):
    1. resized-JPEG layouts (cdeotte/jpeg-melanoma-NxN: train.csv + train/*.jpg) before the competition's
       full-size jpeg/train/ (slow to decode); a train/ holding no JPEG (the competition's DICOMs) never counts;
    2. among resized ones, the smallest side N >= image_size (no upscaling, least decoding), then larger N
       descending below it, then folders whose name has no NxN;
    3. the path, as a last tie-break.
    """
    found, skipped = [], []
    for folder in walk_dirs(input_root):
        if not (folder / "train.csv").is_file() or not ISIC_COLUMNS <= _header(folder / "train.csv"):
            continue
        size = re.search(r"(\d+)x(\d+)", folder.name)
        side = int(size.group(1)) if size else None
        if (folder / "train").is_dir() and _holds_jpegs(folder / "train"):
            layout, rank = "resized JPEG (train/*.jpg)", 0
        elif (folder / "jpeg" / "train").is_dir() and _holds_jpegs(folder / "jpeg" / "train"):
            layout, rank = "competition full-size JPEG (jpeg/train/*.jpg)", 1
        else:
            skipped.append(f"{folder}: train.csv but no JPEG images in train/ or jpeg/train/ "
                           "(the competition's train/ holds DICOMs)")
            continue
        if side is None:
            size_key = (2, 0)
        elif side >= image_size:
            size_key = (0, side)
        else:
            size_key = (1, -side)
        found.append({"path": str(folder), "layout": layout, "side": side, "key": (rank, size_key, str(folder))})
    found.sort(key=lambda c: c["key"])
    return found, skipped


def choose_isic(input_root: Path, image_size: int) -> tuple[str, list[str]]:
    """The ISIC 2020 folder to train on and the lines to print about the choice. Raises SystemExit if none."""
    found, skipped = isic_candidates(input_root, image_size)
    if not found:
        raise SystemExit(f"No ISIC 2020 images found below {input_root}: add the dataset "
                         f"cdeotte/jpeg-melanoma-{default_isic_side(image_size)}x{default_isic_side(image_size)} "
                         "(Add data) and run again.")
    best = found[0]
    lines = [f"ISIC 2020: {best['path']} ({best['layout']}" + (f", {best['side']} px" if best["side"] else "")
             + f", for {image_size} px training)"]
    lines += [f"  not chosen: {c['path']} ({c['layout']})" for c in found[1:]]
    lines += [f"  skipped: {s}" for s in skipped]
    if best["key"][0] == 1:
        lines.append("WARNING: only the competition's full-size JPEGs were found; decoding them will starve the "
                     "GPUs. Add cdeotte/jpeg-melanoma-NxN.")
    return best["path"], lines


def choose_ham(input_root: Path) -> tuple[list[str], list[str]]:
    found = sorted(str(f) for f in walk_dirs(input_root) if (f / "HAM10000_metadata.csv").is_file())
    if not found:
        return [], ["HAM10000: not attached (ISIC 2020 only)"]
    return [found[0]], [f"HAM10000: {found[0]}"] + [f"  not chosen: {p}" for p in found[1:]]


ISIC_SIDES = (128, 192, 256, 384, 512, 768, 1024)  # the sizes cdeotte published as jpeg-melanoma-NxN


def default_isic_side(image_size: int) -> int:
    return next((s for s in ISIC_SIDES if s >= image_size), ISIC_SIDES[-1])


def choose_previous_run(input_root: Path, run_name: str) -> tuple[Path | None, list[str]]:
    """A previous session's run folder `runs/<run_name>` attached as notebook output, if any.

    Several (unusual: two outputs attached) → the one with the most finished folds, then the path."""
    found = []
    for folder in walk_dirs(input_root, max_depth=5):
        if folder.name == run_name and folder.parent.name == "runs" and (folder / "config.yaml").is_file():
            done = sum(1 for d in folder.glob("fold*/DONE"))
            found.append((-done, str(folder)))
    if not found:
        return None, [f"previous run: none attached (no runs/{run_name}/config.yaml below {input_root})"]
    found.sort()
    best = Path(found[0][1])
    return best, [f"previous run: {best} ({-found[0][0]} fold(s) done)"] + [f"  not chosen: {p}" for _, p in found[1:]]


def read_status(run_dir: Path) -> dict:
    """Training's outcome from status.json in the run folder (rank 0 writes it when the run starts and ends).

    The launcher's exit code is never used: `accelerate launch` returns 1 when the ranks exit 75 (a
    clean time-limit stop). No file, or "running" after the launcher returned, is a failure (a crash)."""
    path = Path(run_dir) / STATUS_FILE
    try:
        status = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        status = {}
    if status.get("status") in ("complete", "time_limit"):
        return {**status, "source": str(path)}
    return {"status": "failed", "folds_done": status.get("folds_done"), "model_dir": None,
            "source": str(path) if status else None}


class RecordingHubApi:
    """Stands in for huggingface_hub.HfApi in the rehearsal: records what would be uploaded, sends nothing."""

    def __init__(self, record: str | Path) -> None:
        self.record = Path(record)  # appended to: one file collects every session's calls
        self.calls: list[dict] = json.loads(self.record.read_text())["calls"] if self.record.is_file() else []

    def _save(self) -> None:
        self.record.parent.mkdir(parents=True, exist_ok=True)
        self.record.write_text(json.dumps({"calls": self.calls}, indent=1))

    def create_repo(self, repo_id: str, repo_type: str = "model", exist_ok: bool = False, private: bool = False,
                    **kwargs):
        self.calls.append({"call": "create_repo", "repo_id": repo_id, "repo_type": repo_type, "private": private})
        self._save()
        return SimpleNamespace(repo_id=repo_id)

    def upload_folder(self, *, repo_id: str, folder_path: str, repo_type: str = "model", commit_message: str = "",
                      **kwargs):
        folder = Path(folder_path)
        files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        digest = hashlib.sha1()
        for name in files:
            digest.update(name.encode() + (folder / name).read_bytes())
        oid = digest.hexdigest()
        self.calls.append({"call": "upload_folder", "repo_id": repo_id, "repo_type": repo_type,
                           "commit_message": commit_message, "files": files, "oid": oid})
        self._save()
        return SimpleNamespace(oid=oid, commit_url=f"fake://{repo_id}/commit/{oid}")


# --------------------------------------------------------------------------------------------------------
# push
# --------------------------------------------------------------------------------------------------------

def code_files(repo: Path = REPO) -> list[str]:
    """Files of the code dataset: what git would commit, minus run folders, the bundled model and data."""
    try:
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=repo,
                                capture_output=True, text=True, check=True).stdout.split("\0")
    except (OSError, subprocess.CalledProcessError) as err:
        raise KaggleCliError(f"cannot list the project's files with git in {repo} ({err}); run this from a clone "
                             "of the repository") from None
    keep = []
    for name in sorted(set(n for n in listed if n)):
        if name.startswith(EXCLUDE_DIRS) or name.lower().endswith(DATA_SUFFIXES) or "/runs/" in name:
            continue
        if (repo / name).is_file():  # tracked but deleted in the work tree: not staged
            keep.append(name)
    return keep


def code_version(repo: Path = REPO) -> dict:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""
    modified = sorted(set(git("diff", "--name-only", "HEAD").splitlines())
                      | set(git("ls-files", "--others", "--exclude-standard").splitlines()))
    return {"git_commit": git("rev-parse", "HEAD") or None, "modified_or_new": modified,
            "staged_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def stage_code(username: str, dest: Path, repo: Path = REPO) -> Path:
    """dest/: dataset-metadata.json + melanoma-triage/<files>. Returns dest."""
    if dest.exists():
        shutil.rmtree(dest)
    root = dest / CODE_ROOT
    for name in code_files(repo):
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / name, target)
    (root / CODE_MARKER).write_text(json.dumps(code_version(repo), indent=1) + "\n")
    metadata = {
        "title": CODE_TITLE,
        "id": f"{username}/{CODE_SLUG}",
        "licenses": [{"name": "other"}],
        "subtitle": "Training code of the melanoma triage model",
        "description": "The melanoma-triage project's source (train/, inference/, notebooks/, ...), staged by "
                       "`python notebooks/kaggle.py push`. Code licence: Apache-2.0. No data, no images, no "
                       "weights: attach the ISIC 2020 and HAM10000 datasets separately.",
        "keywords": [],
    }
    (dest / "dataset-metadata.json").write_text(json.dumps(metadata, indent=1) + "\n")
    return dest


def kernel_metadata(username: str, resume: bool = False, template: Path = KERNEL_TEMPLATE) -> dict:
    meta = json.loads(template.read_text().replace(PLACEHOLDER, username))
    if resume:  # Add data → Notebook output: the kernel's own latest output (its run folder)
        meta["kernel_sources"] = sorted(set(meta.get("kernel_sources", [])) | {meta["id"]})
    return meta


def stage_kernel(username: str, dest: Path, resume: bool = False, hf_repo: str | None = None) -> Path:
    """dest/: kernel-metadata.json + the notebook (with HF_REPO set in its settings cell if given)."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    meta = kernel_metadata(username, resume)
    notebook = json.loads(NOTEBOOK.read_text())
    if hf_repo:
        settings = next(c for c in notebook["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
        text = "".join(settings["source"])
        if not re.search(r'^HF_REPO = ""', text, re.M):
            raise KaggleCliError("the notebook's settings cell has no `HF_REPO = \"\"` line to fill in")
        settings["source"] = re.sub(r'^HF_REPO = ""', f"HF_REPO = {json.dumps(hf_repo)}", text, count=1, flags=re.M)
    (dest / meta["code_file"]).write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n")
    (dest / "kernel-metadata.json").write_text(json.dumps(meta, indent=1) + "\n")
    return dest


def check_username(username: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{1,48}", username or "") or username == PLACEHOLDER:
        raise KaggleCliError(f"--username {username!r} is not a Kaggle user name (letters, digits, - and _)")


def kaggle_credentials() -> str | None:
    """Where the kaggle CLI will find credentials (as kaggle 2.x looks for them), or None."""
    if os.environ.get("KAGGLE_API_TOKEN"):
        return "KAGGLE_API_TOKEN"
    home = Path.home()
    for token in (home / ".kaggle" / "access_token", home / ".kaggle" / "access_token.txt"):
        if token.is_file() and token.read_text().strip():
            return str(token)
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return "KAGGLE_USERNAME/KAGGLE_KEY"
    dirs = [Path(os.environ["KAGGLE_CONFIG_DIR"])] if os.environ.get("KAGGLE_CONFIG_DIR") else [
        home / ".kaggle", Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config") / "kaggle"]
    for folder in dirs:
        legacy = folder / "kaggle.json"
        try:
            values = json.loads(legacy.read_text()) if legacy.is_file() else {}
        except (OSError, json.JSONDecodeError):
            values = {}
        if values.get("username") and values.get("key"):
            return str(legacy)
    if (home / ".kaggle" / "credentials.json").is_file():  # `kaggle auth login` (OAuth)
        return str(home / ".kaggle" / "credentials.json")
    return None


NO_CREDENTIALS = ("no Kaggle credentials: create an API token at https://www.kaggle.com/settings/api "
                  "(\"Generate New Token\") and save it to ~/.kaggle/access_token or export KAGGLE_API_TOKEN "
                  "(a legacy ~/.kaggle/kaggle.json or KAGGLE_USERNAME + KAGGLE_KEY also works)")


def kaggle_exe() -> str:
    exe = shutil.which("kaggle", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if exe is None:
        raise KaggleCliError(f"the kaggle CLI is not installed: pip install {KAGGLE_PIN} (or -r requirements-dev.txt)")
    return exe


def dataset_exists(exe: str, ref: str) -> bool:
    """`kaggle datasets status` succeeds only for an existing dataset (a missing one is a 404)."""
    done = subprocess.run([exe, "datasets", "status", ref], capture_output=True, text=True)
    return done.returncode == 0


def push_commands(exe: str, code_dir: Path, kernel_dir: Path, exists: bool | None, message: str,
                  no_run: bool = False) -> list[list[str]]:
    if exists:
        dataset = [exe, "datasets", "version", "-p", str(code_dir), "-m", message, "--dir-mode", "zip"]
    else:
        dataset = [exe, "datasets", "create", "-p", str(code_dir), "--dir-mode", "zip"]
    return [dataset, [exe, "kernels", "push", "-p", str(kernel_dir), *(["--no-run"] if no_run else [])]]


def cmd_push(args: argparse.Namespace) -> int:
    check_username(args.username)
    stage = Path(args.stage or REPO / "runs" / "kaggle-push").resolve()
    code_dir = stage_code(args.username, stage / "code-dataset")
    if args.hf_repo and not re.fullmatch(r"[\w.\-]+/[\w.\-]+", args.hf_repo):
        raise KaggleCliError(f"--hf-repo {args.hf_repo!r} is not a Hub repo id like 'your-name/melanoma-triage-b3'")
    kernel_dir = stage_kernel(args.username, stage / "kernel", args.resume, args.hf_repo)
    n_files = sum(1 for p in (code_dir / CODE_ROOT).rglob("*") if p.is_file())
    print(f"staged the code dataset {args.username}/{CODE_SLUG}: {code_dir} ({n_files} files)")
    meta = json.loads((kernel_dir / "kernel-metadata.json").read_text())
    print(f"staged the kernel {meta['id']}: {kernel_dir} (data: {', '.join(meta['dataset_sources'])}"
          + (f"; previous output: {', '.join(meta['kernel_sources'])}" if meta.get("kernel_sources") else "") + ")")
    message = f"code {code_version()['git_commit'] or 'unknown'}"
    if args.dry_run:
        exe = shutil.which("kaggle") or "kaggle"
        print("dry run: these commands would run (the first is `datasets version -p ... -m ...` instead when the "
              "dataset already exists):")
        for command in push_commands(exe, code_dir, kernel_dir, False, message, args.no_run):
            print("  " + " ".join(_quote(c) for c in command))
        return 0
    where = kaggle_credentials()
    if where is None:
        raise KaggleCliError(NO_CREDENTIALS)
    exe = kaggle_exe()
    exists = dataset_exists(exe, f"{args.username}/{CODE_SLUG}")
    for command in push_commands(exe, code_dir, kernel_dir, exists, message, args.no_run):
        print("$ " + " ".join(_quote(c) for c in command), flush=True)
        done = subprocess.run(command)
        if done.returncode != 0:
            raise KaggleCliError(f"`{' '.join(command[1:3])}` failed (exit {done.returncode}); see its message above")
    print(f"pushed{' (not started)' if args.no_run else ' and started'}. Open https://www.kaggle.com/code/{meta['id']}"
          ": accept the datasets' terms if asked and add the HF_TOKEN secret (Add-ons → Secrets) for the Hub push"
          + (", then Save Version → Save & Run All." if args.no_run else "."))
    return 0


def _quote(text: str) -> str:
    return text if re.fullmatch(r"[\w./:=@+,-]+", text) else "'" + text.replace("'", "'\\''") + "'"


# --------------------------------------------------------------------------------------------------------
# rehearse
# --------------------------------------------------------------------------------------------------------

DATA = Path(os.environ.get("MELANOMA_DATA", REPO.parent / "shared" / "data"))
KERNEL_SLUG = "melanoma-triage-train-2xt4"
REHEARSAL_USER = "rehearsal"
HUB_REPO = "rehearsal/melanoma-triage"
EXPECTED_UPLOAD = {"config.json", "model.safetensors", "model.onnx", "README.md", "metrics.json",
                   "training_config.yaml", "roc.png", "reliability.png", "confusion_matrix.png",
                   "training_curves.png"}
# The tiny recipe: the shipped Kaggle config with a small model and little data. fold_source: the
# rehearsal's ISIC table comes from ../shared/data, whose train.csv has no tfrecord column.
TINY = {"backbone": "test_efficientnet", "backbone_weights": "none", "image_size": 64, "batch_size": 8,
        "epochs": 4, "folds": 2, "fold_source": "stratified_group", "num_workers": 1, "mixed_precision": "no"}
LONG_EPOCHS = 40  # runs 2 and 3: a run far longer than run 2's time limit (see cmd_rehearse)


def build_input_tree(root: Path, data: Path = DATA, isic_benign: int = 90, ham_per_dx: int = 14) -> Path:
    """root/kaggle/{input,working}: jpeg-melanoma-256x256, HAM10000, the code dataset, a decoy competition."""
    import pandas as pd

    if not (data / "isic2020" / "train.csv").is_file():
        raise KaggleCliError(f"real data not found at {data}; set MELANOMA_DATA (layout: ../shared/data/README.md)")
    inp = root / "kaggle" / "input"
    if inp.exists():
        shutil.rmtree(inp)
    inp.mkdir(parents=True)
    (root / "kaggle" / "working").mkdir(parents=True, exist_ok=True)

    isic = pd.read_csv(data / "isic2020" / "train.csv")
    rows = pd.concat([isic[isic.target == 1], isic[isic.target == 0].sample(isic_benign, random_state=0)])
    jpeg = inp / "jpeg-melanoma-256x256"
    jpeg.mkdir()
    rows.to_csv(jpeg / "train.csv", index=False)
    os.symlink(data / "isic2020" / "train", jpeg / "train")
    os.symlink(data / "isic2020" / "ISIC_2020_Training_Duplicates.csv", jpeg / "ISIC_2020_Training_Duplicates.csv")

    ham = pd.read_csv(data / "ham10000" / "HAM10000_metadata.csv")
    picked = pd.concat([g.sample(min(len(g), ham_per_dx), random_state=0) for _, g in ham.groupby("dx")])
    hdir = inp / "skin-cancer-mnist-ham10000"
    hdir.mkdir()
    picked.to_csv(hdir / "HAM10000_metadata.csv", index=False)
    os.symlink(data / "ham10000" / "images", hdir / "HAM10000_images_part_1")

    # The competition folder: its train.csv has the same columns, but train/ holds DICOMs, not JPEGs.
    comp = inp / "siim-isic-melanoma-classification"
    (comp / "train").mkdir(parents=True)
    rows.to_csv(comp / "train.csv", index=False)
    for name in rows.image_name:
        (comp / "train" / f"{name}.dcm").write_bytes(b"\0" * 128 + b"DICM")  # a DICOM preamble, no pixels

    # The code dataset as Kaggle serves it: what push stages, without the metadata file it consumes.
    staged = stage_code(REHEARSAL_USER, root / "stage" / "code-dataset")
    shutil.copytree(staged / CODE_ROOT, inp / CODE_SLUG / CODE_ROOT)
    return inp


def attach_output(root: Path) -> Path:
    """What Kaggle does between sessions: the finished session's /kaggle/working becomes an input
    (/kaggle/input/<kernel-slug>/, read-only as far as the notebook is concerned) and /kaggle/working starts empty."""
    working, target = root / "kaggle" / "working", root / "kaggle" / "input" / KERNEL_SLUG
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(working, target, symlinks=True)
    shutil.rmtree(working)
    working.mkdir()
    return target


def run_notebook(root: Path, label: str, parameters: dict, timeout: int) -> tuple[dict, str, float]:
    """One Kaggle session: a fresh environment on top of the Kaggle image, the notebook run by its papermill."""
    import kaggle_env

    image = kaggle_env.kaggle_image_env()
    python = kaggle_env.session_env(image, root / "sessions" / label)
    out_nb = root / f"executed-{label}.ipynb"
    params = root / f"parameters-{label}.json"
    params.write_text(json.dumps(parameters))
    start = time.monotonic()
    done = subprocess.run([str(python), "-m", "papermill", str(NOTEBOOK), str(out_nb), "-f", str(params), "--cwd",
                           str(root), "--execution-timeout", str(timeout), "--start-timeout", "120", "-k", "python3",
                           "--no-progress-bar"], env=kaggle_env.clean_environ(python), capture_output=True, text=True)
    seconds = time.monotonic() - start
    text = notebook_text(out_nb) if out_nb.is_file() else ""
    if done.returncode != 0:
        raise KaggleCliError(f"notebook run '{label}' failed after {seconds:.0f} s; see {out_nb}\n--- last output "
                             f"---\n{text[-3000:]}\n--- papermill ---\n{done.stderr[-2000:]}")
    session = json.loads((root / "kaggle" / "working" / SESSION_FILE).read_text())
    return session, text, seconds


def notebook_text(path: Path) -> str:
    nb = json.loads(path.read_text())
    parts = []
    for cell in nb["cells"]:
        for output in cell.get("outputs", []):
            if "text" in output:
                parts.append("".join(output["text"]))
            elif output.get("output_type") == "error":
                parts.append(f"{output['ename']}: {output['evalue']}")
    return "".join(parts)


def _uploads(record: Path) -> list[dict]:
    return [c for c in json.loads(record.read_text())["calls"] if c["call"] == "upload_folder"] \
        if record.is_file() else []


def _check(ok: bool, what: str, failures: list[str]) -> None:
    print(("  ok    " if ok else "  FAIL  ") + what, flush=True)
    if not ok:
        failures.append(what)


def cmd_rehearse(args: argparse.Namespace) -> int:
    root = Path(args.out or REPO / "runs" / "kaggle-rehearsal").resolve()
    if root.exists() and any(root.iterdir()) and not (root / "kaggle" / "input").is_dir():
        raise KaggleCliError(f"--out {root} exists and is not an earlier rehearsal folder; choose a new or empty one")
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    t0 = time.monotonic()
    inp = build_input_tree(root)
    working = root / "kaggle" / "working"
    record = root / "hub-record.json"
    base = {"INPUT_ROOT": str(inp), "WORKING": str(working), "INSTALL": True, "CPU": True, "NUM_PROCESSES": 2,
            "HF_REPO": HUB_REPO, "FAKE_HUB_RECORD": str(record), "OVERRIDES": dict(TINY), "TIME_LIMIT": "",
            "SMOKE_IMAGES": 64, "PLAN_IMAGES_PER_S_PER_GPU": 0.0}
    failures: list[str] = []
    print(f"rehearsal in {root}: input tree {inp} (symlinks to {DATA}); 3 notebook runs, 2 CPU processes each",
          flush=True)

    # 1. A run to completion, pushed to the fake Hub.
    s1, text1, w1 = run_notebook(root, "1-complete",
                                 {**base, "RUN_NAME": "rehearsal-a", "OVERRIDES": {**TINY, "epochs": 1}}, args.timeout)
    print(f"run 1 (to completion): {w1:.0f} s, status {s1['status']}", flush=True)
    upload = _uploads(record)
    _check(s1["status"] == "complete" and str(s1.get("status_source")).endswith(STATUS_FILE),
           "run 1: training complete, read from the run folder's status.json", failures)
    _check("ISIC 2020: " + str(inp / "jpeg-melanoma-256x256") in text1,
           "run 1: chose jpeg-melanoma-256x256, not the DICOM competition folder", failures)
    _check("smoke: " in text1 and "images/s per" in text1, "run 1: the smoke cell printed its figures", failures)
    _check(len(upload) == 1 and EXPECTED_UPLOAD <= set(upload[0]["files"]) and upload[0]["repo_id"] == HUB_REPO,
           f"run 1: one recorded upload to {HUB_REPO} holding {', '.join(sorted(EXPECTED_UPLOAD))}", failures)
    model1 = working / "runs" / "rehearsal-a" / "model"
    _check(all((model1 / f).is_file() for f in EXPECTED_UPLOAD), "run 1: the model folder is complete", failures)

    # 2. A second run, with run 1's output attached, stopped by the time limit in its first fold. The limit must
    # fall after the first saved state and long before the end, whatever this machine's speed: it is twice run
    # 1's time to its first state (~3 s of setup, then one first epoch, which pays the loader worker's start),
    # and this run is 2 folds x LONG_EPOCHS short epochs (no worker), many times longer than that.
    limit = 2 * (3.0 + 0.5 * (s1.get("epoch_seconds_total") or 10.0))
    long_run = {**base, "RUN_NAME": "rehearsal-b", "OVERRIDES": {**TINY, "epochs": LONG_EPOCHS, "num_workers": 0}}
    attach_output(root)
    s2, text2, w2 = run_notebook(root, "2-time-limit", {**long_run, "TIME_LIMIT": f"{limit:.0f}s"}, args.timeout)
    print(f"run 2 (time limit {limit:.0f} s): {w2:.0f} s, status {s2['status']}, folds done {s2.get('folds_done')}",
          flush=True)
    _check(s2["status"] == "time_limit" and str(s2.get("status_source")).endswith(STATUS_FILE)
           and s2.get("launcher_exit_code") != 0,
           "run 2: stopped by the time limit, read from status.json (the launcher said "
           f"{s2.get('launcher_exit_code')})", failures)
    _check("run again with this output attached" in text2 and "Traceback" not in text2,
           "run 2: says to run again with this output attached, and shows no traceback", failures)
    _check(f"code: {inp / CODE_SLUG / CODE_ROOT} (the code dataset" in text2,
           "run 2: the code dataset wins over the attached output's code/", failures)
    _check(s2.get("pushed") is None and len(_uploads(record)) == 1, "run 2: nothing pushed from an unfinished run",
           failures)

    # 3. The same run again, with run 2's output attached: resumes and finishes.
    attach_output(root)
    s3, text3, w3 = run_notebook(root, "3-resume", long_run, args.timeout)
    print(f"run 3 (resume): {w3:.0f} s, status {s3['status']}", flush=True)
    uploads = _uploads(record)
    model3 = working / "runs" / "rehearsal-b" / "model"
    _check("previous run: " + str(inp / KERNEL_SLUG / "runs" / "rehearsal-b") in text3,
           "run 3: found run 2's run folder in the attached output", failures)
    _check(s3["status"] == "complete" and ("already done" in text3 or "resumed from" in text3),
           "run 3: resumed (kept what run 2 finished) and complete", failures)
    _check(all((model3 / f).is_file() for f in EXPECTED_UPLOAD), "run 3: the model folder is complete", failures)
    _check(len(uploads) == 2 and EXPECTED_UPLOAD <= set(uploads[-1]["files"]),
           "run 3: a second recorded upload with the expected files", failures)
    total = time.monotonic() - t0
    print(f"rehearsal: {'FAILED: ' + '; '.join(failures) if failures else 'passed'} in {total:.0f} s "
          f"(runs {w1:.0f} + {w2:.0f} + {w3:.0f} s); executed notebooks in {root}", flush=True)
    return 1 if failures else 0


# --------------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python notebooks/kaggle.py", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawTextHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    push = sub.add_parser("push", help="stage the code dataset and the kernel, then upload them with the kaggle CLI",
                          description="Stage U/melanoma-triage-code (the project's code, no data) and the kernel "
                                      "U/melanoma-triage-train-2xt4, then run `kaggle datasets create|version` and "
                                      "`kaggle kernels push`. Credentials: an API token from "
                                      "https://www.kaggle.com/settings/api in ~/.kaggle/access_token or "
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
    push.set_defaults(func=cmd_push)
    rehearse = sub.add_parser("rehearse", help="execute the notebook 3 times here on a Kaggle-shaped input tree",
                              description="Build DIR/kaggle/input from ../shared/data (or $MELANOMA_DATA) with "
                                          "symlinks, then run the notebook with papermill: complete run, "
                                          "time-limited run, resumed run; 2 CPU processes; fake Hub. Exit 0 only "
                                          "if every check passes.")
    rehearse.add_argument("--out", help="rehearsal folder (default: runs/kaggle-rehearsal); an earlier rehearsal there "
                                               "is replaced, any other non-empty folder refused")
    rehearse.add_argument("--timeout", type=int, default=600, help="seconds allowed per notebook cell (default 600)")
    rehearse.set_defaults(func=cmd_rehearse)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KaggleCliError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
