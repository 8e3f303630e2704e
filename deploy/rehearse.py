"""The Space build, rehearsed here: what the Hugging Face builder does with a staged folder, then a visitor's
program calling every example.

1. A fresh venv with the front matter's `python_version`; `pip install -r requirements.txt` from the staged
   folder alone (nothing from this checkout is importable there).
2. `python app.py` in the staged folder on a free loopback port, once per leg:
   - bundled: $MELANOMA_MODEL unset, so the app serves the staged output/default (when the stage has it);
   - hub: MELANOMA_MODEL=org/name@<sha>, the model coming through huggingface_hub's own download and
     cache code (a fresh HF_HOME) from deploy.hub_standin serving a model folder as that pinned commit.
   Both legs run with HF_ENDPOINT on the stand-in, so no request leaves 127.0.0.1.
3. `/predict` through gradio_client on every row of examples/examples.csv, and checks on each answer.
A JSON report holds the answers, the venv's size, pip's seconds and each leg's seconds to first HTTP 200.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .hub_standin import LOOPBACK, HubStandin
from .stage import BUNDLED, REPO, DeployError, front_matter, front_matter_models, front_matter_value

# The answer's keys: the /predict API documented in docs/api.md.
ANSWER_KEYS = {"melanoma_probability", "malignant_probability", "diagnosis", "in_distribution", "caution", "ood_score",
               "colour_score", "guard", "triage", "metadata", "tta", "model_id", "model_revision", "backend"}
OUT_OF_SCOPE_DX = "not a lesion"  # examples.csv's dx for the example the guard must refuse
STANDIN_REPO = "rehearsal/melanoma-model"  # the Hub leg's repo id when the stage names no `models:`
PIP_TIMEOUT_S = 1200
START_TIMEOUT_S = 240  # `python app.py` → first HTTP 200 (imports gradio and loads the model on a busy CPU)
REQUEST_TIMEOUT_S = 120
STOP_TIMEOUT_S = 15
LOG_TAIL_LINES = 20


@dataclass
class Leg:
    """One `python app.py` run: its model source and what is expected of each answer's model fields."""

    name: str
    model_env: str | None  # MELANOMA_MODEL, None = unset (the bundled model)
    model_id: str
    revision: str | None
    answers: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    first_200_s: float | None = None
    hub_requests: int | None = None
    log_tail: list[str] = field(default_factory=list)  # the app's last output lines, kept when the leg failed


def find_python(version: str) -> str:
    """An interpreter of `version` ('3.11'): python3.11 on PATH, a pyenv install, or this one."""
    pyenv = os.environ.get("PYENV_ROOT", str(Path.home() / ".pyenv"))
    candidates = [shutil.which(f"python{version}"), *sorted(glob.glob(f"{pyenv}/versions/{version}.*/bin/python")),
                  sys.executable]
    for candidate in filter(None, candidates):
        try:
            found = subprocess.run([candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                   capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            continue
        if found == version:
            return candidate
    raise DeployError(f"no Python {version} found (the Space's python_version): install it, e.g. "
                      f"`pyenv install {version}`, or put python{version} on PATH")


def build_venv(stage_dir: Path, work: Path, python: str, no_cache: bool = False) -> tuple[Path, float, float]:
    """(venv python, pip seconds, venv MB): a fresh venv with the staged requirements installed; `no_cache`
    keeps pip's cache out (a cold download, as the Space builder has)."""
    venv = work / "venv"
    subprocess.run([python, "-m", "venv", str(venv)], check=True, timeout=300, capture_output=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    start = time.perf_counter()
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                          "-r", "requirements.txt", *(["--no-cache-dir"] if no_cache else [])], cwd=stage_dir,
                         env=env, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    seconds = time.perf_counter() - start
    if pip.returncode != 0:
        raise DeployError(f"pip install -r requirements.txt failed in the fresh venv: {pip.stderr.strip()[-600:]}")
    size = sum(p.stat().st_size for p in venv.rglob("*") if p.is_file() and not p.is_symlink())
    return venv / "bin" / "python", seconds, size / 1e6


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def app_env(port: int, work: Path, leg: Leg, hub_endpoint: str, venv_python: Path) -> dict[str, str]:
    """The app's environment: this one without anything Python, Gradio or Hub related, plus the leg's."""
    drop = ("PYTHON", "VIRTUAL_ENV", "GRADIO_", "HF_", "HUGGINGFACE", "MELANOMA_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(PATH=f"{venv_python.parent}{os.pathsep}{env.get('PATH', '')}", GRADIO_SERVER_NAME=LOOPBACK,
               GRADIO_SERVER_PORT=str(port), GRADIO_ANALYTICS_ENABLED="False",
               GRADIO_TEMP_DIR=str(work / leg.name / "gradio"), HF_HOME=str(work / leg.name / "hf_home"),
               HF_ENDPOINT=hub_endpoint, HF_HUB_DISABLE_TELEMETRY="1",
               # bytecode is written (the second leg starts as a restarted Space would) but outside the
               # stage, which must stay exactly what `deploy space` uploads
               PYTHONPYCACHEPREFIX=str(work / "pycache"))
    if leg.model_env:
        env["MELANOMA_MODEL"] = leg.model_env
    return env


def wait_for_200(url: str, server: subprocess.Popen, timeout: float) -> float:
    """Seconds until GET url answers 200; DeployError if the server exits or the time runs out."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if server.poll() is not None:
            raise DeployError(f"python app.py exited with code {server.returncode} before answering")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return time.perf_counter() - start
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise DeployError(f"python app.py did not answer {url} within {timeout:.0f} s")


def stop(server: subprocess.Popen) -> None:
    """End the app and anything it started (its own process group)."""
    if server.poll() is None:
        with contextlib.suppress(ProcessLookupError):  # it may exit between the poll and the signal
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(STOP_TIMEOUT_S)


def examples(stage_dir: Path) -> list[dict[str, str]]:
    with open(stage_dir / "examples" / "examples.csv", newline="") as f:
        return list(csv.DictReader(f))


def check_answer(answer: Any, row: dict[str, str], leg: Leg) -> list[str]:
    """What is wrong with one /predict answer (empty when it is right)."""
    if not isinstance(answer, dict):
        return [f"answer is {type(answer).__name__}, not a dict"]
    problems = []
    if set(answer) != ANSWER_KEYS:
        problems.append(f"keys differ: missing {sorted(ANSWER_KEYS - set(answer))}, "
                        f"extra {sorted(set(answer) - ANSWER_KEYS)}")
    diagnosis = answer.get("diagnosis") or {}
    values = [answer.get("melanoma_probability"), answer.get("malignant_probability"), *diagnosis.values()]
    if not diagnosis or not all(isinstance(v, (int, float)) and 0 <= v <= 1 for v in values):
        problems.append(f"probabilities not all in [0, 1]: {values}")
    elif not math.isclose(sum(diagnosis.values()), 1, abs_tol=1e-4):
        problems.append(f"diagnosis sums to {sum(diagnosis.values())}, not 1")
    expected = row["dx"] != OUT_OF_SCOPE_DX
    if answer.get("in_distribution") is not expected:
        problems.append(f"in_distribution {answer.get('in_distribution')!r}, expected {expected}")
    if (answer.get("model_id"), answer.get("model_revision")) != (leg.model_id, leg.revision):
        problems.append(f"model {answer.get('model_id')!r}@{answer.get('model_revision')!r}, expected "
                        f"{leg.model_id!r}@{leg.revision!r}")
    return problems


def run_leg(leg: Leg, stage_dir: Path, work: Path, venv_python: Path, hub: HubStandin) -> None:
    """Start the staged app for `leg`, call /predict on every example, record answers and failures."""
    port = free_port()
    url = f"http://{LOOPBACK}:{port}/"
    (work / leg.name).mkdir(parents=True, exist_ok=True)
    requests_before = len(hub.requests)
    with open(work / leg.name / "app.log", "wb") as log:
        server = subprocess.Popen([str(venv_python), "app.py"], cwd=stage_dir, stdout=log, stderr=subprocess.STDOUT,
                                  env=app_env(port, work, leg, hub.endpoint, venv_python), start_new_session=True)
        try:
            leg.first_200_s = wait_for_200(url, server, START_TIMEOUT_S)
            call_examples(leg, url, stage_dir)
        except DeployError as err:
            leg.failures.append(f"{leg.name}: {err}")
        finally:
            stop(server)
            leg.hub_requests = len(hub.requests) - requests_before
    if leg.failures:  # the work folder may be removed: the report carries the end of the app's output
        leg.log_tail = (work / leg.name / "app.log").read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]


def call_examples(leg: Leg, url: str, stage_dir: Path) -> None:
    """/predict through gradio_client on every example, as a visitor's program calls the Space."""
    from gradio_client import Client, handle_file

    try:
        client = Client(url, verbose=False)
    except Exception as err:  # noqa: BLE001 - reported as the leg's failure, on one line
        leg.failures.append(f"{leg.name}: gradio_client cannot connect to {url}: {type(err).__name__}: {err}")
        return
    for row in examples(stage_dir):
        age = float(row["age"]) if row["age"] else None
        job = client.submit(handle_file(str(stage_dir / "examples" / row["file"])), age, row["sex"] or None,
                            row["site"] or None, api_name="/predict")
        try:
            answer = job.result(timeout=REQUEST_TIMEOUT_S)
        except Exception as err:  # noqa: BLE001 - any failed call is a failed check, reported on one line
            answer, problems = None, [f"/predict failed: {type(err).__name__}: {' '.join(str(err).split())[:300]}"]
        else:
            problems = check_answer(answer, row, leg)
        leg.answers[row["file"]] = answer
        leg.failures += [f"{leg.name} {row['file']}: {p}" for p in problems]


def close(a: Any, b: Any, tol: float = 1e-6) -> bool:
    """a equals b, numbers within `tol` (two processes may sum in another order), dicts key by key."""
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(close(a[k], b[k], tol) for k in a)
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, abs_tol=tol)
    return a == b


def same_answers(a: Leg, b: Leg) -> list[str]:
    """Differences between two legs' answers beyond the model's name (they served the same files)."""
    ignore = {"model_id", "model_revision"}
    return [f"{b.name} {name}: answer differs from {a.name}" for name, answer in a.answers.items()
            if isinstance(answer, dict) and isinstance(b.answers.get(name), dict)
            and not close({k: v for k, v in answer.items() if k not in ignore},
                          {k: v for k, v in b.answers[name].items() if k not in ignore})]


def rehearse(stage_dir: Path, model_folder: Path | None = None, work: Path | None = None) -> dict[str, Any]:
    """Build and serve the staged Space both ways; returns the report (its `failures` empty on success).

    `model_folder` is what the stand-in serves for the Hub leg (default: the stage's output/default, else
    this checkout's); `work` keeps the venv and logs (default: a temporary folder, removed after)."""
    started = time.perf_counter()
    stage_dir = Path(stage_dir).resolve()
    if not (stage_dir / "app.py").is_file():
        raise DeployError(f"{stage_dir} is not a staged Space (no app.py): stage one with "
                          "`python -m deploy space --repo ORG/NAME --bundled --dry-run --stage DIR`")
    matter = front_matter(stage_dir / "README.md")
    version = front_matter_value(matter, "python_version") or "3.10"  # the builder's default when unset
    bundled = stage_dir / BUNDLED
    model_folder = Path(model_folder or (bundled if bundled.is_dir() else REPO / BUNDLED)).resolve()
    repo_id = (front_matter_models(matter) or [STANDIN_REPO])[0]
    keep = work is not None
    if keep and Path(work).exists() and any(Path(work).iterdir()):
        raise DeployError(f"--work {work} is not empty: pass a new folder (the venv must be fresh)")
    work = Path(work or tempfile.mkdtemp(prefix="space-rehearsal-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    try:
        python = find_python(version)
        venv_python, pip_s, venv_mb = build_venv(stage_dir, work, python)
        with HubStandin(model_folder, repo_id) as hub:
            legs = ([Leg("bundled", None, BUNDLED, None)] if bundled.is_dir() else []) + \
                   [Leg("hub", f"{repo_id}@{hub.sha}", repo_id, hub.sha)]
            for leg in legs:
                run_leg(leg, stage_dir, work, venv_python, hub)
        failures = [f for leg in legs for f in leg.failures]
        if len(legs) == 2 and model_folder == bundled.resolve():
            failures += same_answers(*legs)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    return {
        "stage": str(stage_dir), "python_version": version, "python": python,
        "venv_mb": round(venv_mb, 1), "pip_s": round(pip_s, 1),
        "hub_model": {"repo_id": repo_id, "sha": hub.sha, "folder": str(model_folder)},
        "legs": {leg.name: {"model": leg.model_env or BUNDLED,
                            "first_200_s": leg.first_200_s and round(leg.first_200_s, 2),
                            "hub_requests": leg.hub_requests, "answers": leg.answers, "failures": leg.failures,
                            "app_log_tail": leg.log_tail}
                 for leg in legs},
        "failures": failures, "wall_s": round(time.perf_counter() - started, 1), "work": str(work) if keep else None,
    }
