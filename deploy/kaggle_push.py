"""`python -m deploy kaggle push`: stage the code dataset and the kernel, upload them with the official
`kaggle` CLI, and say so only when Kaggle has taken them (standard library only).

1. The code dataset U/melanoma-triage-code: one zip, melanoma-triage.zip, of every file git would commit
   (`git ls-files --cached --others --exclude-standard`: new files not yet added count too) plus
   CODE_VERSION.json (commit, modified files). Left out: output/ (the bundled Space model: training never reads
   it, 28 MB per version), runs/, input/ data, and any image, DICOM or weights file. Kaggle unpacks the zip,
   into a folder named after it or at the dataset's root (both have been seen); the notebook finds either.
2. The kernel U/melanoma-triage-train-2xt4: the notebook and a kernel-metadata.json made from
   notebooks/kernel-metadata.json, whose dataset_sources attach the data: cdeotte/jpeg-melanoma-384x384 (ISIC
   2020), kmader/skin-cancer-mnist-ham10000 and cdeotte/jpeg-isic2019-384x384 (the 1st place's external data).
   --resume attaches the kernel's own previous output (kernel_sources) and pins the image the first session
   ran (a newer image could change what training computes mid-run).

`kaggle datasets create|version` only starts processing: push waits until the new version is ready before it
pushes the kernel (a kernel pushed earlier cannot see its code), and reads what the CLI prints as well as its
exit code: kaggle 2.2.5 prints "not valid dataset sources" and exits 0.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kaggle_notebook.code import CODE_MARKER

REPO = Path(__file__).resolve().parents[1]
HERE = REPO / "notebooks"  # the notebook and its kernel metadata
NOTEBOOK = HERE / "melanoma_train_kaggle.ipynb"
KERNEL_TEMPLATE = HERE / "kernel-metadata.json"
PLACEHOLDER = "YOUR_KAGGLE_USERNAME"
CODE_SLUG = "melanoma-triage-code"
CODE_TITLE = "Melanoma triage code"
CODE_ZIP = "melanoma-triage.zip"  # the code dataset's one file
KAGGLE_PIN = "kaggle==2.2.5"
# A resumed session runs the image the first one ran (kernel-metadata's docker_image_pinning_type).
PIN_ORIGINAL_IMAGE = "original"

# What the code dataset never holds, whatever git tracks: run folders, the bundled model, data.
EXCLUDE_DIRS = ("output/", "runs/", "input/")
DATA_SUFFIXES = (".jpg", ".jpeg", ".png", ".dcm", ".tfrec", ".tfrecord", ".safetensors", ".onnx", ".pth",
                 ".pt", ".zip", ".tar", ".gz", ".npy", ".npz", ".bmp", ".tif", ".tiff", ".webp", ".gif")
# What the kaggle CLI prints when it did not do what was asked, yet exits 0 (kaggle 2.2.5's wording).
CLI_FAILURES = ("error", "not valid", "failed", "could not")
READY_TIMEOUT_S = 900
POLL_S = 10


class KaggleCliError(RuntimeError):
    """A problem the person running this script must fix; printed as one line, no traceback."""


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
    """dest/: dataset-metadata.json + CODE_ZIP (the files at the zip's root). Returns dest."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name in code_files(repo):
            target = root / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(repo / name, target)
        (root / CODE_MARKER).write_text(json.dumps(code_version(repo), indent=1) + "\n")
        shutil.make_archive(str(dest / Path(CODE_ZIP).stem), "zip", root_dir=root)
    metadata = {
        "title": CODE_TITLE,
        "id": f"{username}/{CODE_SLUG}",
        "licenses": [{"name": "other"}],
        "subtitle": "Training code of the melanoma triage model",
        "description": "The melanoma-triage project's source (train/, inference/, notebooks/, ...), staged by "
                       "`python -m deploy kaggle push`. Code licence: Apache-2.0. No data, no images, no "
                       "weights: attach the ISIC 2020, HAM10000 and ISIC 2019 datasets separately.",
        "keywords": [],
    }
    (dest / "dataset-metadata.json").write_text(json.dumps(metadata, indent=1) + "\n")
    return dest


def kernel_metadata(username: str, resume: bool = False, template: Path = KERNEL_TEMPLATE) -> dict:
    meta = json.loads(template.read_text().replace(PLACEHOLDER, username))
    if resume:  # Add data → Notebook output: the kernel's own latest output (its run folder), on the same image
        meta["kernel_sources"] = sorted(set(meta.get("kernel_sources", [])) | {meta["id"]})
        meta["docker_image_pinning_type"] = PIN_ORIGINAL_IMAGE
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


def run_cli(command: list[str], what: str, fix: str) -> str:
    """Run a kaggle CLI command, show its output, and fail on a non-zero exit OR on output that says it did not
    do it (one line: what went wrong, and `fix`). Returns the output."""
    print("$ " + " ".join(_quote(c) for c in command), flush=True)
    done = subprocess.run(command, capture_output=True, text=True)
    output = (done.stdout + done.stderr).strip()
    if output:
        print(output, flush=True)
    bad = [line for line in output.splitlines() if any(word in line.lower() for word in CLI_FAILURES)]
    if done.returncode != 0 or bad:
        said = bad[0] if bad else f"exit {done.returncode}"
        raise KaggleCliError(f"{what} failed: kaggle said \"{said.strip()}\". {fix}")
    return output


def dataset_state(exe: str, ref: str) -> dict | None:
    """{"status": ..., "current_version_number": ...} of a dataset, or None if it does not exist."""
    done = subprocess.run([exe, "datasets", "status", ref, "--format", "json(status,current_version_number)"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        return None
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        raise KaggleCliError(f"`kaggle datasets status {ref}` answered {done.stdout.strip()!r}, not JSON: "
                             f"install {KAGGLE_PIN}") from None


def wait_until_ready(exe: str, ref: str, before: int | None, timeout: float = READY_TIMEOUT_S, poll: float = POLL_S,
                     sleep=time.sleep, clock=time.monotonic) -> int:
    """Wait until the dataset's version after `before` (None: its first) is ready; its number."""
    deadline = clock() + timeout
    while True:
        state = dataset_state(exe, ref) or {}
        number = state.get("current_version_number")
        newer = number is not None and (before is None or number > before)
        if newer and state.get("status") == "ready":
            print(f"the code dataset {ref} version {number} is ready", flush=True)
            return number
        if newer and state.get("status") in ("failed", "deleted"):
            raise KaggleCliError(f"Kaggle could not process the code dataset {ref} (status {state['status']}): "
                                 f"see https://www.kaggle.com/datasets/{ref} and push again")
        if clock() > deadline:
            raise KaggleCliError(f"the code dataset {ref} was not ready after {timeout / 60:.0f} min (status "
                                 f"{state.get('status')}, version {number}): wait until "
                                 f"https://www.kaggle.com/datasets/{ref} shows the new version, then push again")
        sleep(poll)


def push_commands(exe: str, code_dir: Path, kernel_dir: Path, exists: bool, message: str,
                  no_run: bool = False) -> list[list[str]]:
    if exists:
        dataset = [exe, "datasets", "version", "-p", str(code_dir), "-m", message]
    else:
        dataset = [exe, "datasets", "create", "-p", str(code_dir)]
    return [dataset, [exe, "kernels", "push", "-p", str(kernel_dir), *(["--no-run"] if no_run else [])]]


def push(exe: str, code_dir: Path, kernel_dir: Path, ref: str, message: str, no_run: bool,
         sleep=time.sleep) -> None:
    """The code dataset's new version, ready; then the kernel that reads it."""
    before = dataset_state(exe, ref)
    dataset, kernel = push_commands(exe, code_dir, kernel_dir, before is not None, message, no_run)
    run_cli(dataset, f"`kaggle datasets {dataset[2]}`", "Fix what it says and push again.")
    wait_until_ready(exe, ref, before.get("current_version_number") if before else None, sleep=sleep)
    run_cli(kernel, "`kaggle kernels push`",
            f"The kernel cannot see an input it names: check that https://www.kaggle.com/datasets/{ref} shows the "
            "new version and that you accepted the other datasets' terms, then push again.")


def cmd_push(args) -> int:
    check_username(args.username)
    stage = Path(args.stage or REPO / "runs" / "kaggle-push").resolve()
    code_dir = stage_code(args.username, stage / "code-dataset")
    if args.hf_repo and not re.fullmatch(r"[\w.\-]+/[\w.\-]+", args.hf_repo):
        raise KaggleCliError(f"--hf-repo {args.hf_repo!r} is not a Hub repo id like 'your-name/melanoma-triage-b3'")
    kernel_dir = stage_kernel(args.username, stage / "kernel", args.resume, args.hf_repo)
    print(f"staged the code dataset {args.username}/{CODE_SLUG}: {code_dir / CODE_ZIP} "
          f"({(code_dir / CODE_ZIP).stat().st_size / 1e6:.1f} MB)")
    meta = json.loads((kernel_dir / "kernel-metadata.json").read_text())
    print(f"staged the kernel {meta['id']}: {kernel_dir} (data: {', '.join(meta['dataset_sources'])}"
          + (f"; previous output: {', '.join(meta['kernel_sources'])}, image pinned to the first session's"
             if meta.get("kernel_sources") else "") + ")")
    message = f"code {code_version()['git_commit'] or 'unknown'}"
    if args.dry_run:
        exe = shutil.which("kaggle") or "kaggle"
        print("dry run: these commands would run (the first is `datasets version -p ... -m ...` instead when the "
              "dataset already exists; push waits for the new version to be ready before the second):")
        for command in push_commands(exe, code_dir, kernel_dir, False, message, args.no_run):
            print("  " + " ".join(_quote(c) for c in command))
        return 0
    if kaggle_credentials() is None:
        raise KaggleCliError(NO_CREDENTIALS)
    push(kaggle_exe(), code_dir, kernel_dir, f"{args.username}/{CODE_SLUG}", message, args.no_run)
    print(f"pushed{' (not started)' if args.no_run else ' and started'}. Open https://www.kaggle.com/code/{meta['id']}"
          ": accept the datasets' terms if asked and add the HF_TOKEN secret (Add-ons → Secrets) for the Hub push"
          + (", then Save Version → Save & Run All." if args.no_run else "."))
    return 0


def _quote(text: str) -> str:
    return text if re.fullmatch(r"[\w./:=@+,-]+", text) else "'" + text.replace("'", "'\\''") + "'"
