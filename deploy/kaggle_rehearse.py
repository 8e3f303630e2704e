"""`python -m deploy kaggle rehearse`: run the Kaggle notebook here as Kaggle would (standard library only).

Inside the Kaggle-image environment (deploy/kaggle_env.py: Kaggle's Python, torch and package versions,
none of the project's requirement files), each notebook run is one Kaggle session: a fresh environment on top
of the image, the notebook's own install cell, papermill (which Kaggle's image has). The input tree is built
from the real data in ../shared/data with symlinks, in Kaggle's mount layouts; the code arrives as the zip
`push` makes, unpacked as Kaggle has been seen to (into a folder named after it, or at the dataset's root);
the ISIC table carries a `tfrecord` column, so the recipe's own fold source runs; the ISIC 2019 set
(cdeotte/jpeg-isic2019-384x384) is mocked with real ISIC 2017 images in its layout; a fake Hub records the upload.

Three sessions, 2 CPU processes each (ACCELERATE_USE_CPU=yes, gloo), a tiny recipe:
1. the old flat layout (/kaggle/input/<slug>), the zip unpacked at the dataset root: a run to completion;
2. the current layout (datasets/<owner>/<slug>, notebooks/<owner>/<slug>), the zip unpacked into a folder,
   session 1's output attached: a longer run that the time limit stops in its first fold;
3. the same, session 2's output attached: it resumes and finishes.
DIR/rehearsal.json says what ran (Python, torch, what the notebook installed, processes, layouts, code
delivery), each session's status, and `ok`.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

from inference import layout
from kaggle_notebook import SESSION_FILE

from . import kaggle_env
from .kaggle_inputs import ISIC2019, ISIC2019_ROWS, KERNEL_SLUG, REHEARSAL_USER, build_input_tree, mount, read_csv
from .kaggle_push import CODE_SLUG, CODE_ZIP, KaggleCliError, stage_code

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "melanoma_train_kaggle.ipynb"
HUB_REPO = "rehearsal/melanoma-triage"
EXPECTED_UPLOAD = {layout.CONFIG, layout.WEIGHTS, layout.ONNX, layout.CARD, layout.METRICS, layout.TRAINING_CONFIG,
                   *layout.PLOTS}
# The tiny recipe: the shipped Kaggle config (its tfrecord folds included) with a small model and little data.
TINY = {"backbone": "test_efficientnet", "backbone_weights": "none", "image_size": 64, "batch_size": 8,
        "epochs": 4, "folds": 2, "num_workers": 1, "mixed_precision": "no"}
LONG_EPOCHS = 40  # sessions 2 and 3: a run far longer than session 2's time limit (see rehearse)


def finish_session(root: Path, label: str) -> Path:
    """What Kaggle does after a session: /kaggle/working becomes that session's output; the next starts empty."""
    working, kept = root / "kaggle" / "working", root / "outputs" / label
    shutil.rmtree(kept, ignore_errors=True)
    kept.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(working), kept)
    working.mkdir()
    return kept


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


def run_session(root: Path, image: dict, label: str, parameters: dict, timeout: int) -> tuple[dict, str, float]:
    """One Kaggle session: a fresh environment on the image, the notebook executed by that environment's papermill."""
    python = kaggle_env.session_env(image, root / "sessions" / label)
    out_nb, params = root / f"executed-{label}.ipynb", root / f"parameters-{label}.json"
    params.write_text(json.dumps(parameters))  # JSON is YAML: papermill -f reads it
    start = time.monotonic()
    done = subprocess.run([str(python), "-m", "papermill", str(NOTEBOOK), str(out_nb), "-f", str(params), "--cwd",
                           str(root), "--execution-timeout", str(timeout), "--start-timeout", "120", "-k", "python3",
                           "--no-progress-bar"], env=kaggle_env.clean_environ(python), capture_output=True, text=True)
    seconds = time.monotonic() - start
    text = notebook_text(out_nb) if out_nb.is_file() else ""
    if done.returncode != 0:
        # the training log first: it holds the cause (a crash's traceback), which papermill's report never does
        log = root / "kaggle" / "working" / "train.log"
        tail = "\n".join(line.rsplit("\r", 1)[-1] for line in log.read_text(errors="replace").splitlines()[-60:]) \
            if log.is_file() else "(none)"
        raise KaggleCliError(f"notebook session '{label}' failed after {seconds:.0f} s; see {out_nb}\n--- train.log, "
                             f"last 60 lines ---\n{tail}\n--- the notebook's last output ---\n{text[-2500:]}\n"
                             f"--- papermill ---\n{done.stderr[-600:]}")
    return json.loads((root / "kaggle" / "working" / SESSION_FILE).read_text()), text, seconds


def _uploads(record: Path) -> list[dict]:
    return [c for c in json.loads(record.read_text())["calls"] if c["call"] == "upload_folder"] \
        if record.is_file() else []


class Checks:
    def __init__(self) -> None:
        self.done: list[dict] = []

    def __call__(self, ok: bool, what: str) -> None:
        print(("  ok    " if ok else "  FAIL  ") + what, flush=True)
        self.done.append({"check": what, "ok": bool(ok)})

    @property
    def failures(self) -> list[str]:
        return [c["check"] for c in self.done if not c["ok"]]


def check_isic2019(check: Checks, report: dict, values: dict, text: str, run: Path, mock: Path) -> None:
    """The ISIC 2019 mock was told apart from ISIC 2020 and trained on: the data cell chose it, every one of its
    rows is in the run's folds (none of its images is in another source) and the class × source table has it."""
    sources = [r["source"] for r in read_csv(run / layout.FOLDS)]
    report["trained_rows_by_source"] = {s: sources.count(s) for s in sorted(set(sources))}
    table = re.search(r"^source\s+ham10000\s+isic2019\s+isic2020\s*$", text, re.M)
    check(values.get("isic2019_dirs") == [str(mock)] and table is not None
          and report["trained_rows_by_source"].get("isic2019") == sum(ISIC2019_ROWS.values()),
          f"session 1: ISIC 2019 found apart from ISIC 2020 and trained on (rows by source "
          f"{report['trained_rows_by_source']}; the class × source table has an isic2019 column)")


class Rehearsal:
    """What the three sessions share: the Kaggle-image environment, the staged code zip, the working folder, the
    recording Hub, the checks and the report."""

    def __init__(self, root: Path, timeout: int) -> None:
        cached = kaggle_env.env_dir().joinpath(kaggle_env.MARKER).is_file()
        self.root, self.timeout, self.image = root, timeout, kaggle_env.kaggle_image_env()
        self.report = {"kaggle_image_env": {"folder": self.image["folder"], "cached": cached,
                                            "build_seconds": None if cached else self.image["build_seconds"]},
                       "layouts": [], "code_delivery": "zip", "code_unpacked": [], "sessions": [], "ok": False}
        self.code_zip = stage_code(REHEARSAL_USER, root / "stage" / "code-dataset") / CODE_ZIP
        self.record, self.working, self.check = root / "hub-record.json", root / "kaggle" / "working", Checks()

    def session(self, label: str, layout_name: str, unpack: str, output: Path | None, parameters: dict):
        """One Kaggle session on a fresh input tree: (its /kaggle/input, session.json's values, its output text)."""
        inp = build_input_tree(self.root, layout_name, self.code_zip, unpack, output)
        base = {"INPUT_ROOT": str(inp), "WORKING": str(self.working), "INSTALL": True, "CPU": True, "NUM_PROCESSES": 2,
                "HF_REPO": HUB_REPO, "FAKE_HUB_RECORD": str(self.record), "TIME_LIMIT": "", "SMOKE_IMAGES": 64,
                "PLAN_IMAGES_PER_S_PER_GPU": 0.0}
        values, text, seconds = run_session(self.root, self.image, label, {**base, **parameters}, self.timeout)
        for key, value in (("layouts", layout_name), ("code_unpacked", unpack)):
            if value not in self.report[key]:
                self.report[key].append(value)
        self.report["sessions"].append({"label": label, "layout": layout_name, "code_unpacked": unpack,
                                        "status": values["status"], "seconds": round(seconds, 1)})
        print(f"session {label} ({layout_name} layout, code zip unpacked "
              f"{'into a folder' if unpack == 'folder' else 'at the dataset root'}): {seconds:.0f} s, "
              f"status {values['status']}", flush=True)
        return inp, values, text


def first_session(r: Rehearsal) -> tuple[Path, dict]:
    """The old flat layout, the zip unpacked at the dataset root: a run to completion, pushed to the fake Hub."""
    check, image = r.check, r.image
    inp, s1, text1 = r.session("1-complete", "flat", "root", None,
                               {"RUN_NAME": "rehearsal-a", "OVERRIDES": {**TINY, "epochs": 1}})
    r.report.update(python=s1["python"], torch=s1["torch"], installed_by_notebook=s1["installed_by_notebook"],
                    processes=s1.get("processes"))
    check(s1["python"].startswith(image["python"] + ".") and s1["torch"].startswith(image["installed"]["torch"])
          and Path(s1["executable"]).is_relative_to(r.root / "sessions"),
          f"session 1: ran Python {s1['python']} and torch {s1['torch']} of the Kaggle-image environment")
    check(set(s1["installed_by_notebook"]) >= {"simplejpeg", "onnxruntime"},
          "session 1: the install cell installed what Kaggle lacks (simplejpeg, onnxruntime, ...)")
    check(s1["status"] == "complete" and s1.get("processes") == 2 and str(s1.get("status_source")).endswith(
        layout.STATUS), "session 1: training complete on 2 processes, read from the run folder's status.json")
    check("smoke: " in text1 and "images/s per" in text1, "session 1: the smoke cell printed its figures")
    run1 = r.working / "runs" / "rehearsal-a"
    check(any(run1.rglob("events.out.tfevents*")), "session 1: TensorBoard wrote its logs (the image's tensorboard "
                                                   "and tensorflow, after the install cell's numpy)")
    upload = _uploads(r.record)
    check(len(upload) == 1 and EXPECTED_UPLOAD <= set(upload[0]["files"]) and upload[0]["repo_id"] == HUB_REPO,
          f"session 1: one recorded upload to {HUB_REPO} holding the complete model folder")
    check_isic2019(check, r.report, s1, text1, run1, mount(inp, "dataset", "flat", *ISIC2019))
    return finish_session(r.root, "1-complete"), s1


def second_session(r: Rehearsal, out1: Path, s1: dict, long_run: dict) -> Path:
    """The current layout, session 1's output attached, stopped by the time limit in its first fold. The limit
    falls after the first saved state and long before the end: 20 s for the setup before the first epoch (3 s on
    an idle machine; an 8 s limit once ran out before the first epoch ended on a loaded one, and session 3 then
    had nothing to resume) plus session 1's time for both of its epochs, against 2 folds x LONG_EPOCHS."""
    limit = 20.0 + (s1.get("epoch_seconds_total") or 10.0)
    inp, s2, text2 = r.session("2-time-limit", "current", "folder", out1, {**long_run, "TIME_LIMIT": f"{limit:.0f}s"})
    code_dataset = mount(inp, "dataset", "current", REHEARSAL_USER, CODE_SLUG) / Path(CODE_ZIP).stem
    r.check(s2["status"] == "time_limit" and s2.get("launcher_exit_code") != 0,
            f"session 2: stopped by the time limit ({limit:.0f} s), read from status.json (the launcher said "
            f"{s2.get('launcher_exit_code')})")
    r.check("run again with this output attached" in text2 and "Traceback" not in text2,
            "session 2: says to run again with this output attached, and shows no traceback")
    r.check(f"code: {code_dataset} (the code dataset" in text2,
            "session 2: the code dataset (unpacked into a folder) wins over the attached output's code/")
    r.check(s2.get("pushed") is None and len(_uploads(r.record)) == 1,
            "session 2: nothing pushed from an unfinished run")
    return finish_session(r.root, "2-time-limit")


def third_session(r: Rehearsal, out2: Path, long_run: dict) -> None:
    """The same run again, session 2's output attached: it resumes and finishes."""
    inp, s3, text3 = r.session("3-resume", "current", "folder", out2, long_run)
    previous = mount(inp, "output", "current", REHEARSAL_USER, KERNEL_SLUG) / "runs" / "rehearsal-b"
    r.check(f"previous run: {previous}" in text3, "session 3: found session 2's run folder in notebooks/<owner>/<slug>")
    r.check(s3["status"] == "complete" and ("already done" in text3 or "resumed from" in text3),
            "session 3: resumed (kept what session 2 finished) and complete")
    uploads = _uploads(r.record)
    r.check(len(uploads) == 2 and EXPECTED_UPLOAD <= set(uploads[-1]["files"]),
            "session 3: a second recorded upload with the complete model folder")


def rehearse(root: Path, timeout: int) -> dict:
    """The three sessions and their checks; the report that rehearsal.json holds."""
    t0 = time.monotonic()
    r = Rehearsal(root, timeout)
    out1, s1 = first_session(r)
    long_run = {"RUN_NAME": "rehearsal-b", "OVERRIDES": {**TINY, "epochs": LONG_EPOCHS, "num_workers": 0}}
    third_session(r, second_session(r, out1, s1, long_run), long_run)
    r.report.update(checks=r.check.done, failures=r.check.failures, ok=not r.check.failures,
                    seconds=round(time.monotonic() - t0, 1))
    return r.report


def cmd_rehearse(args) -> int:
    root = Path(args.out or REPO / "runs" / "kaggle-rehearsal").resolve()
    if root.exists() and any(root.iterdir()) and not (root / "rehearsal.json").is_file() \
            and not (root / "kaggle").is_dir():
        raise KaggleCliError(f"--out {root} exists and is not an earlier rehearsal folder; choose a new or empty one")
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    print(f"rehearsal in {root}: 3 Kaggle sessions in the Kaggle-image environment, 2 CPU processes each",
          flush=True)
    try:
        report = rehearse(root, args.timeout)
    except (KaggleCliError, kaggle_env.EnvError) as err:
        (root / "rehearsal.json").write_text(json.dumps({"ok": False, "error": str(err)}, indent=1) + "\n")
        raise
    (root / "rehearsal.json").write_text(json.dumps(report, indent=1) + "\n")
    if report["ok"]:
        shutil.rmtree(root / "sessions")  # ~0.6 GB each of installed packages; kept when something failed
    runs = " + ".join(f"{s['seconds']:.0f}" for s in report["sessions"])
    print(f"rehearsal: {'FAILED: ' + '; '.join(report['failures']) if report['failures'] else 'passed'} in "
          f"{report['seconds']:.0f} s (sessions {runs} s); {root / 'rehearsal.json'}", flush=True)
    return 0 if report["ok"] else 1


