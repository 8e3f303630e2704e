"""What the Kaggle notebook does, cell by cell, as functions (standard library only: it runs before anything is
installed). The notebook imports this file from the attached code; its cells are a few calls each.

Choices are deterministic and printed: the code (the code dataset wins over an earlier output's copy), what to
install (requirements*.txt, keeping Kaggle's torch), the data (resized JPEGs, never the DICOM competition
folder), the previous run to continue; the outcome is read from the run folder's status.json, never from the
launcher's exit code.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]  # the code this file belongs to
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from inference import layout  # noqa: E402  (standard library only)

SESSION_FILE = "session.json"  # the notebook writes it into /kaggle/working: marks a notebook output
CODE_MARKER = "CODE_VERSION.json"  # written by `kaggle.py push` into the code dataset
# How deep the searches below /kaggle/input go. Kaggle's current mounts put a previous run at
# notebooks/<owner>/<slug>/runs/<name> (depth 5) and the code at datasets/<owner>/<slug>/<zip folder> (4):
# 8 leaves room for a dataset that nests one folder more, and no search finds its target at the limit.
SEARCH_DEPTH = 8
NOT_DESCENDED = ("__pycache__", "states", "train", "test", "jpeg", "images")  # image and checkpoint folders

# requirements*.txt is what the notebook installs, minus these (the one place this is decided):
NOT_INSTALLED = {
    "torch": "Kaggle's own CUDA build is kept (a PyPI wheel would replace it with another CUDA)",
    "torchvision": "Kaggle's own build, matching its torch",
    "gradio": "the Space's web UI: training never imports it",
}
REQUIREMENTS = "requirements-train.txt"  # training = the Space's requirements (its -r) + the training stack


# --- the code -----------------------------------------------------------------------------------------------

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
        raise SystemExit(f"No project code below {input_root}: on your machine run `python notebooks/kaggle.py push "
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


# --- what to install ------------------------------------------------------------------------------------------

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


# --- the data -------------------------------------------------------------------------------------------------

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
ISIC_SIDES = (128, 192, 256, 384, 512, 768, 1024)  # the sizes cdeotte published as jpeg-melanoma-NxN
# cdeotte/jpeg-isic2019-NxN has the same layout and columns as jpeg-melanoma-NxN: only its diagnosis column tells
# it apart, in the ISIC 2019 abbreviations (ISIC 2020 spells diagnoses out: melanoma, nevus, unknown, ...).
ISIC2019_DIAGNOSES = {"mel", "nv", "bcc", "ak", "bkl", "df", "vasc", "scc"}
ISIC2019_SLUG = "cdeotte/jpeg-isic2019-{side}x{side}"


def default_isic_side(image_size: int) -> int:
    return next((s for s in ISIC_SIDES if s >= image_size), ISIC_SIDES[-1])


def isic_set(csv_path: Path) -> str:
    """'isic2019' if any diagnosis in the train.csv is a 2019 abbreviation, else 'isic2020' (a table with no
    diagnosis column cannot be the 2019 set, whose rows all have one). Read in full: the first rows of ISIC
    2020 and 2019 alike may be benign, and one pass over 33k rows takes a fraction of a second."""
    try:
        with open(csv_path, newline="") as f:
            for row in csv.DictReader(f):
                if (row.get("diagnosis") or "").strip().lower() in ISIC2019_DIAGNOSES:
                    return "isic2019"
    except (OSError, UnicodeDecodeError, csv.Error):
        pass
    return "isic2020"


def isic_candidates(input_root: Path, image_size: int, wanted: str = "isic2020") -> tuple[list[dict], list[str]]:
    """Every folder below input_root in the jpeg-melanoma layout holding the `wanted` set ("isic2020" or
    "isic2019", told apart by isic_set), best first, and why the others were skipped.

    Order (independent of the order the file system lists folders in):
    1. resized-JPEG layouts (cdeotte/jpeg-melanoma-NxN: train.csv + train/*.jpg) before the competition's
       full-size jpeg/train/ (slow to decode); a train/ holding no JPEG (the competition's DICOMs) never counts;
    2. among resized ones, the smallest side N >= image_size (no upscaling, least decoding), then larger N
       descending below it, then folders whose name has no NxN;
    3. the path, as a last tie-break.
    """
    found, skipped = [], []
    for folder, _ in walk_dirs(input_root):
        if not (folder / "train.csv").is_file() or not ISIC_COLUMNS <= _header(folder / "train.csv"):
            continue
        size = re.search(r"(\d+)x(\d+)", folder.name)
        side = int(size.group(1)) if size else None
        if (folder / "train").is_dir() and _holds_jpegs(folder / "train"):
            layout_name, rank = "resized JPEG (train/*.jpg)", 0
        elif (folder / "jpeg" / "train").is_dir() and _holds_jpegs(folder / "jpeg" / "train"):
            layout_name, rank = "competition full-size JPEG (jpeg/train/*.jpg)", 1
        else:
            skipped.append(f"{folder}: train.csv but no JPEG images in train/ or jpeg/train/ "
                           "(the competition's train/ holds DICOMs)")
            continue
        kind = isic_set(folder / "train.csv")
        if kind != wanted:
            skipped.append(f"{folder}: the {'ISIC 2019' if kind == 'isic2019' else 'ISIC 2020'} set (diagnoses "
                           f"{'in' if kind == 'isic2019' else 'not in'} the 2019 abbreviations)")
            continue
        size_key = (2, 0) if side is None else (0, side) if side >= image_size else (1, -side)
        found.append({"path": str(folder), "layout": layout_name, "side": side, "key": (rank, size_key, str(folder))})
    found.sort(key=lambda c: c["key"])
    return found, skipped


def _choice_lines(title: str, found: list[dict], image_size: int) -> list[str]:
    best = found[0]
    return ([f"{title}: {best['path']} ({best['layout']}" + (f", {best['side']} px" if best["side"] else "")
             + f", for {image_size} px training)"]
            + [f"  not chosen: {c['path']} ({c['layout']})" for c in found[1:]])


def choose_isic(input_root: Path, image_size: int) -> tuple[str, list[str]]:
    """The ISIC 2020 folder to train on and the lines to print about the choice. Raises SystemExit if none."""
    found, skipped = isic_candidates(input_root, image_size)
    if not found:
        side = default_isic_side(image_size)
        raise SystemExit(f"No ISIC 2020 images found below {input_root}: add the dataset "
                         f"cdeotte/jpeg-melanoma-{side}x{side} (Add data) and run again."
                         + (" (The ISIC 2019 set does not replace it: it has no ISIC 2020 images.)"
                            if any("the ISIC 2019 set" in s for s in skipped) else ""))
    lines = _choice_lines("ISIC 2020", found, image_size) + [f"  skipped: {s}" for s in skipped]
    if found[0]["key"][0] == 1:
        lines.append("WARNING: only the competition's full-size JPEGs were found; decoding them will starve the "
                     "GPUs. Add cdeotte/jpeg-melanoma-NxN.")
    return found[0]["path"], lines


def choose_isic2019(input_root: Path, image_size: int) -> tuple[list[str], list[str]]:
    """The ISIC 2019 set (cdeotte/jpeg-isic2019-NxN, the 1st place's external data) as [] or [its folder], and
    the lines to print. Optional: without it training runs on the other sources. Only the resized layout
    counts (the set has no competition folder); among several sizes, the same preference as ISIC 2020."""
    found, _ = isic_candidates(input_root, image_size, "isic2019")
    found = [c for c in found if c["key"][0] == 0]
    if not found:
        side = default_isic_side(image_size)
        return [], [(f"ISIC 2019: not attached (training continues without it; add "
                     f"{ISIC2019_SLUG.format(side=side)} for the 1st place's external data)")]
    return [found[0]["path"]], _choice_lines("ISIC 2019", found, image_size)


def choose_ham(input_root: Path) -> tuple[list[str], list[str]]:
    found = sorted(str(f) for f, _ in walk_dirs(input_root) if (f / "HAM10000_metadata.csv").is_file())
    if not found:
        return [], ["HAM10000: not attached (training continues without it)"]
    return [found[0]], [f"HAM10000: {found[0]}"] + [f"  not chosen: {p}" for p in found[1:]]


# --- resume ---------------------------------------------------------------------------------------------------

def choose_previous_run(input_root: Path, run_name: str) -> tuple[Path | None, list[str]]:
    """A previous session's run folder `runs/<run_name>` attached as notebook output, if any.

    Several (unusual: two outputs attached) → the one with the most finished folds, then the path."""
    found = []
    for folder, _ in walk_dirs(input_root):
        if folder.name == run_name and folder.parent.name == "runs" and (folder / layout.RUN_CONFIG).is_file():
            done = sum(1 for d in folder.glob("fold*/DONE"))
            found.append((-done, str(folder)))
    if not found:
        return None, [f"previous run: none attached (no runs/{run_name}/{layout.RUN_CONFIG} below {input_root})"]
    found.sort()
    best = Path(found[0][1])
    return best, [f"previous run: {best} ({-found[0][0]} fold(s) done)"] + [f"  not chosen: {p}" for _, p in found[1:]]


def resume(input_root: str | Path, working: str | Path, run_name: str) -> tuple[Path, list[str]]:
    """WORKING/runs/<run_name>, continuing an attached earlier session's run folder if there is one."""
    run_dir = Path(working) / "runs" / run_name
    previous, lines = choose_previous_run(Path(input_root), run_name)
    if previous is not None and not (run_dir / layout.RUN_CONFIG).exists():
        shutil.copytree(previous, run_dir, dirs_exist_ok=True)
        lines.append(f"continuing it in {run_dir}; its last session ended: {read_status(run_dir)['status']}")
    return run_dir, lines


# --- launching and the outcome --------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(code: Path, cpu: bool, processes: int) -> tuple[list[str], dict]:
    """`accelerate launch` with one process per GPU (fp16), or real CPU processes (gloo) for the rehearsal:
    `--cpu --num_processes 2` would start ONE process; --multi_gpu with ACCELERATE_USE_CPU=yes starts real ranks.
    The ranks meet on a free port, not the default 29500: on a shared machine another job's ranks may be there."""
    env = {**os.environ, "PYTHONPATH": str(code), "TQDM_MININTERVAL": "30", "PYTHONUNBUFFERED": "1"}
    if cpu:
        env.update(ACCELERATE_USE_CPU="yes", OMP_NUM_THREADS="1")
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1", "--num_processes",
              str(processes), "--mixed_precision", "no" if cpu else "fp16", "--dynamo_backend", "no",
              "--main_process_port", str(free_port())]
    return launch + (["--multi_gpu"] if processes > 1 else []), env


def options(values: dict) -> list[str]:
    """{key: value} → training CLI options (values as YAML: lists [a, b], null, true)."""
    out = []
    for key, value in values.items():
        text = ("null" if value is None else "true" if value is True else "false" if value is False
                else "[" + ", ".join(map(str, value)) + "]" if isinstance(value, list) else str(value))
        out += [f"--{key}", text]
    return out


def run_logged(cmd: list[str], log_path: Path, cwd: Path, env: dict) -> tuple[int, str]:
    """Run cmd, echo its output as it comes and into log_path; (exit code, output).

    A progress bar redraws itself with carriage returns: only its last state before a newline is kept.
    A clean time-limit stop (every process exits 75) makes torch's launcher print a ChildFailedError report:
    it goes to the log file only."""
    print("$", " ".join(cmd), flush=True)
    lines, quiet = [], False
    with open(log_path, "a") as log, subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                                      stderr=subprocess.STDOUT) as proc:
        for raw in proc.stdout:  # bytes, split at b"\n" only
            shown = [part for part in raw.decode("utf-8", "replace").rstrip("\n").split("\r") if part.strip()]
            if shown:
                line = shown[-1] + "\n"
                quiet = quiet or ("torch/distributed/elastic" in line and "(exitcode: 75)" in line)
                if not quiet:
                    print(line, end="", flush=True)
                log.write(line)
                lines.append(line)
    if quiet:
        print(f"(a process exited 75, a clean time-limit stop: the launcher's ChildFailedError report is in "
              f"{log_path})")
    return proc.returncode, "".join(lines)


def read_status(run_dir: Path) -> dict:
    """Training's outcome from status.json in the run folder (rank 0 writes it when the run starts and ends).

    The launcher's exit code is never used: `accelerate launch` returns 1 when the ranks exit 75 (a
    clean time-limit stop). No file, or "running" after the launcher returned, is a failure (a crash)."""
    path = Path(run_dir) / layout.STATUS
    try:
        status = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        status = {}
    if status.get("status") in ("complete", "time_limit"):
        return {**status, "source": str(path)}
    return {"status": "failed", "folds_done": status.get("folds_done"), "model_dir": None,
            "processes": status.get("processes"), "source": str(path) if status else None}


def epoch_seconds_total(run_dir: Path) -> float:
    """The run's epochs so far (every session), from the per-fold logs."""
    total = 0.0
    for log_csv in sorted(Path(run_dir).glob("fold*/log.csv")):
        with open(log_csv, newline="") as f:
            total += sum(float(row["epoch_seconds"]) for row in csv.DictReader(f))
    return total


_EXCEPTION_LINE = re.compile(r"^(\[rank\d+\]: )?[A-Za-z_][\w.]*(Error|Exception|Interrupt)(: .*)?$")


def outcome_message(status: dict, run_dir: Path, minutes: float, exit_code: int, log_tail: str, log_path: Path) -> str:
    """What to print after training; raises SystemExit for a failed run (the run folder is kept: it resumes)."""
    if status["status"] == "complete":
        return f"Training complete ({minutes:.1f} min): {status.get('model_dir') or run_dir / layout.MODEL_DIR}"
    if status["status"] == "time_limit":
        return (f"Stopped by the time limit after folds {status.get('folds_done')} ({minutes:.1f} min), with a "
                f"resumable state in {run_dir}: run again with this output attached (Add data → Notebook output → "
                f"this notebook, or `python notebooks/kaggle.py push --username YOU --resume`). The launcher's exit "
                f"code {exit_code} is expected: each process exits 75 on a clean stop.")
    lines = log_tail.splitlines()
    errors = [line for line in lines if line.startswith(("error:", "error (rank"))]
    # a crash the training code did not expect ends in a traceback: its last line names the exception
    crashes = [line.strip() for line in lines if _EXCEPTION_LINE.match(line.strip())]
    raise SystemExit(f"Training failed (launcher exit code {exit_code}): "
                     + (errors[-1] if errors else f"{crashes[-1]} (the traceback is above and in {log_path})"
                        if crashes else f"see the output above and {log_path}")
                     + f". The run folder {run_dir} is kept: fix the cause and run again (it resumes).")


def smoke_verdict(smoke: dict, cpu: bool, plan: float) -> str:
    """One line of the smoke run's figures; SystemExit if a GPU trains at under half the plan."""
    slowest = min(r["images_per_s"] for r in smoke["ranks"])
    line = (f"smoke: {slowest:.1f} images/s per {'process' if cpu else 'GPU'} (slowest of {len(smoke['ranks'])}), "
            f"loader wait {max(r['loader_wait_share'] for r in smoke['ranks']):.0%} of step time, peak GPU memory "
            + (f"{max(r['peak_gpu_memory_gb'] for r in smoke['ranks']):.1f} GB" if not cpu else "n/a (CPU)"))
    if plan and slowest < 0.5 * plan:
        raise SystemExit(f"{line}\nSmoke run: {slowest:.1f} images/s per GPU is far below the plan's {plan:.0f}; the "
                         "5 folds would not fit the session. A loader wait share near 100 % means the CPUs cannot "
                         "decode fast enough (smaller image_size, the matching jpeg-melanoma-NxN dataset, lighter "
                         "augment); otherwise check that both GPUs are in use.")
    return line


# --- the Hub push ----------------------------------------------------------------------------------------------

def push_model(model_dir: Path, hf_repo: str, secret: str, fake_record: str = "") -> tuple[str | None, str]:
    """Push a complete model folder as ONE commit; (its sha or None, the line to print). The token comes from the
    Kaggle secret and is never printed or written; `fake_record` (rehearsal) records the upload instead."""
    from train import publish

    api, token = None, None
    if fake_record:
        api, token = RecordingHubApi(fake_record), "rehearsal"
    else:
        try:
            from kaggle_secrets import UserSecretsClient
            token = UserSecretsClient().get_secret(secret)
        except Exception as err:  # not on Kaggle, or no such secret: the run's result is kept either way
            return None, (f"not pushing: no Kaggle secret {secret} ({err.__class__.__name__}); add it under "
                          "Add-ons → Secrets, then run this cell again")
    try:
        sha = publish.push(model_dir, hf_repo, token, api=api)
    except publish.PushError as err:
        return None, f"push failed: {err}"
    return sha, (f"Pushed to https://huggingface.co/{hf_repo}/tree/{sha} - pin it as {hf_repo}@{sha}"
                 + (f" (rehearsal: recorded in {fake_record}, nothing was uploaded)" if fake_record else ""))


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
