"""`python notebooks/kaggle.py rehearse`: run the Kaggle notebook here as Kaggle would (standard library only).

Inside the Kaggle-image environment (notebooks/kaggle_env.py: Kaggle's Python, torch and package versions,
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

import csv
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import kaggle_env
from kaggle_push import CODE_SLUG, CODE_ZIP, KaggleCliError, stage_code
from kaggle_session import SESSION_FILE, layout

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = Path(__file__).resolve().parent / "melanoma_train_kaggle.ipynb"
DATA = layout.data_root(REPO)
KERNEL_SLUG = "melanoma-triage-train-2xt4"
REHEARSAL_USER = "rehearsal"
HUB_REPO = "rehearsal/melanoma-triage"
EXPECTED_UPLOAD = {layout.CONFIG, layout.WEIGHTS, layout.ONNX, layout.CARD, layout.METRICS, layout.TRAINING_CONFIG,
                   *layout.PLOTS}
# Where Kaggle mounts a dataset and a notebook's output: today, and before (the notebook must find both).
LAYOUTS = {"current": {"dataset": "datasets/{owner}/{slug}", "output": "notebooks/{owner}/{slug}",
                       "competition": "competitions/{slug}"},
           "flat": {"dataset": "{slug}", "output": "{slug}", "competition": "{slug}"}}
ISIC = ("cdeotte", "jpeg-melanoma-256x256")
HAM = ("kmader", "skin-cancer-mnist-ham10000")
ISIC2019 = ("cdeotte", "jpeg-isic2019-384x384")
# The mock ISIC 2019 set: real ISIC 2017 training images per 2019 diagnosis (melanomas included, so every fold
# validates some), with the 2019 table's finer site words; ISIC 2017 has no site.
ISIC2019_ROWS = {"MEL": 12, "BKL": 8, "NV": 20}
ISIC2019_SITES = ("anterior torso", "posterior torso", "lateral torso", "upper extremity", "lower extremity",
                  "head/neck", "palms/soles", "")
COMPETITION = "siim-isic-melanoma-classification"
# The tiny recipe: the shipped Kaggle config (its tfrecord folds included) with a small model and little data.
TINY = {"backbone": "test_efficientnet", "backbone_weights": "none", "image_size": 64, "batch_size": 8,
        "epochs": 4, "folds": 2, "num_workers": 1, "mixed_precision": "no"}
LONG_EPOCHS = 40  # sessions 2 and 3: a run far longer than session 2's time limit (see rehearse)
TFRECORDS = 15  # cdeotte's jpeg-melanoma tables spread patients over 15 tfrecords
ISIC2019_TFRECORDS = 30  # his 2019 table numbers its tfrecords past 15 (ISIC_0000001 is in tfrecord 18)


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def isic_rows(data: Path, benign: int) -> list[dict]:
    """Every melanoma and `benign` benign rows of the real table, with a patient-grouped `tfrecord` column
    as cdeotte's tables have (patients in sorted order, round robin over 15 tfrecords)."""
    rows = _read_csv(data / "isic2020" / "train.csv")
    picked = [r for r in rows if r["target"] == "1"]
    picked += random.Random(0).sample([r for r in rows if r["target"] == "0"], benign)
    record = {p: i % TFRECORDS for i, p in enumerate(sorted({r["patient_id"] for r in picked}))}
    return [{**r, "tfrecord": record[r["patient_id"]]} for r in picked]


def ham_rows(data: Path, per_dx: int) -> list[dict]:
    rows = _read_csv(data / "ham10000" / "HAM10000_metadata.csv")
    by_dx: dict[str, list[dict]] = {}
    for r in rows:
        by_dx.setdefault(r["dx"], []).append(r)
    return [r for dx in sorted(by_dx) for r in random.Random(0).sample(by_dx[dx], min(per_dx, len(by_dx[dx])))]


def isic2019_rows(data: Path, per_dx: dict[str, int] = ISIC2019_ROWS) -> list[dict]:
    """Real ISIC 2017 training rows written as cdeotte's jpeg-isic2019 train.csv has them: the 2019 diagnosis
    abbreviations, patient_id -1 (the 2019 set has no patient ids), blank unknowns, a typical original's width and
    height (the 256 px copies here keep no other), and a tfrecord (round robin: each image is its own group)."""
    folder = data / "isic2017"
    meta = {r["image_id"]: r for r in _read_csv(folder / "ISIC-2017_Training_Data_metadata.csv")}
    by_dx: dict[str, list[dict]] = {}
    for r in _read_csv(folder / "ISIC-2017_Training_Part3_GroundTruth.csv"):
        dx = "MEL" if float(r["melanoma"]) else "BKL" if float(r["seborrheic_keratosis"]) else "NV"
        by_dx.setdefault(dx, []).append({**meta[r["image_id"]], "dx": dx})
    picked = [r for dx, n in per_dx.items() for r in random.Random(0).sample(by_dx[dx], n)]
    return [{"image_name": r["image_id"], "patient_id": -1, "sex": "" if r["sex"] == "unknown" else r["sex"],
             "age_approx": "" if r["age_approximate"] == "unknown" else float(r["age_approximate"]),
             "anatom_site_general_challenge": ISIC2019_SITES[i % len(ISIC2019_SITES)],
             "diagnosis": r["dx"], "benign_malignant": "malignant" if r["dx"] == "MEL" else "benign",
             "target": int(r["dx"] == "MEL"), "tfrecord": i % ISIC2019_TFRECORDS, "width": 1022, "height": 767}
            for i, r in enumerate(picked)]


def mount(inp: Path, kind: str, layout_name: str, owner: str, slug: str) -> Path:
    return inp / LAYOUTS[layout_name][kind].format(owner=owner, slug=slug)


def build_input_tree(root: Path, layout_name: str, code_zip: Path, unpack: str, output: Path | None = None,
                     data: Path = DATA, isic_benign: int = 90, ham_per_dx: int = 14) -> Path:
    """root/kaggle/input as Kaggle mounts it for one session: ISIC 2020 as jpeg-melanoma-256x256, HAM10000, ISIC
    2019 as jpeg-isic2019-384x384 (same layout and columns as ISIC 2020: the notebook must tell them apart), the
    code zip unpacked `unpack` ("folder": into melanoma-triage/, "root": at the dataset root), a decoy
    competition folder whose train/ holds DICOMs, and `output` (an earlier session's /kaggle/working)."""
    if not all((data / name).exists() for name in ("isic2020/train.csv", "ham10000", "isic2017")):
        raise KaggleCliError(f"real data not found at {data}; set MELANOMA_DATA (layout: ../shared/data/README.md)")
    inp = root / "kaggle" / "input"
    shutil.rmtree(inp, ignore_errors=True)
    inp.mkdir(parents=True)

    isic = isic_rows(data, isic_benign)
    jpeg = mount(inp, "dataset", layout_name, *ISIC)
    _write_csv(jpeg / "train.csv", isic)
    os.symlink(data / "isic2020" / "train", jpeg / "train")
    os.symlink(data / "isic2020" / "ISIC_2020_Training_Duplicates.csv", jpeg / "ISIC_2020_Training_Duplicates.csv")

    ham = mount(inp, "dataset", layout_name, *HAM)
    _write_csv(ham / "HAM10000_metadata.csv", ham_rows(data, ham_per_dx))
    os.symlink(data / "ham10000" / "images", ham / "HAM10000_images_part_1")

    isic2019 = mount(inp, "dataset", layout_name, *ISIC2019)
    _write_csv(isic2019 / "train.csv", isic2019_rows(data))
    os.symlink(data / "isic2017" / "ISIC-2017_Training_Data", isic2019 / "train")

    comp = mount(inp, "competition", layout_name, "", COMPETITION)  # same columns, but DICOMs in train/
    _write_csv(comp / "train.csv", [{k: v for k, v in r.items() if k != "tfrecord"} for r in isic])
    (comp / "train").mkdir()
    for r in isic:
        (comp / "train" / f"{r['image_name']}.dcm").write_bytes(b"\0" * 128 + b"DICM")  # a preamble, no pixels

    code = mount(inp, "dataset", layout_name, REHEARSAL_USER, CODE_SLUG)
    with zipfile.ZipFile(code_zip) as archive:
        archive.extractall(code / Path(CODE_ZIP).stem if unpack == "folder" else code)
    if output is not None:
        shutil.copytree(output, mount(inp, "output", layout_name, REHEARSAL_USER, KERNEL_SLUG), symlinks=True)
    (root / "kaggle" / "working").mkdir(parents=True, exist_ok=True)
    return inp


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
    sources = [r["source"] for r in _read_csv(run / layout.FOLDS)]
    report["trained_rows_by_source"] = {s: sources.count(s) for s in sorted(set(sources))}
    table = re.search(r"^source\s+ham10000\s+isic2019\s+isic2020\s*$", text, re.M)
    check(values.get("isic2019_dirs") == [str(mock)] and table is not None
          and report["trained_rows_by_source"].get("isic2019") == sum(ISIC2019_ROWS.values()),
          f"session 1: ISIC 2019 found apart from ISIC 2020 and trained on (rows by source "
          f"{report['trained_rows_by_source']}; the class × source table has an isic2019 column)")


def rehearse(root: Path, timeout: int) -> dict:
    """The three sessions and their checks; the report that rehearsal.json holds."""
    t0 = time.monotonic()
    cached = kaggle_env.env_dir().joinpath(kaggle_env.MARKER).is_file()
    image = kaggle_env.kaggle_image_env()
    report = {"kaggle_image_env": {"folder": image["folder"], "cached": cached,
                                   "build_seconds": None if cached else image["build_seconds"]},
              "layouts": [], "code_delivery": "zip", "code_unpacked": [], "sessions": [], "ok": False}
    code_zip = stage_code(REHEARSAL_USER, root / "stage" / "code-dataset") / CODE_ZIP
    record = root / "hub-record.json"
    working = root / "kaggle" / "working"
    check = Checks()

    def session(label: str, layout_name: str, unpack: str, output: Path | None, parameters: dict):
        inp = build_input_tree(root, layout_name, code_zip, unpack, output)
        base = {"INPUT_ROOT": str(inp), "WORKING": str(working), "INSTALL": True, "CPU": True, "NUM_PROCESSES": 2,
                "HF_REPO": HUB_REPO, "FAKE_HUB_RECORD": str(record), "TIME_LIMIT": "", "SMOKE_IMAGES": 64,
                "PLAN_IMAGES_PER_S_PER_GPU": 0.0}
        values, text, seconds = run_session(root, image, label, {**base, **parameters}, timeout)
        for key, value in (("layouts", layout_name), ("code_unpacked", unpack)):
            if value not in report[key]:
                report[key].append(value)
        report["sessions"].append({"label": label, "layout": layout_name, "code_unpacked": unpack,
                                   "status": values["status"], "seconds": round(seconds, 1)})
        print(f"session {label} ({layout_name} layout, code zip unpacked "
              f"{'into a folder' if unpack == 'folder' else 'at the dataset root'}): {seconds:.0f} s, "
              f"status {values['status']}", flush=True)
        return inp, values, text

    # 1. The old flat layout, the zip unpacked at the dataset root: a run to completion, pushed to the fake Hub.
    inp, s1, text1 = session("1-complete", "flat", "root", None,
                             {"RUN_NAME": "rehearsal-a", "OVERRIDES": {**TINY, "epochs": 1}})
    report.update(python=s1["python"], torch=s1["torch"], installed_by_notebook=s1["installed_by_notebook"],
                  processes=s1.get("processes"))
    check(s1["python"].startswith(image["python"] + ".") and s1["torch"].startswith(image["installed"]["torch"])
          and Path(s1["executable"]).is_relative_to(root / "sessions"),
          f"session 1: ran Python {s1['python']} and torch {s1['torch']} of the Kaggle-image environment")
    check(set(s1["installed_by_notebook"]) >= {"simplejpeg", "onnxruntime"},
          "session 1: the install cell installed what Kaggle lacks (simplejpeg, onnxruntime, ...)")
    check(s1["status"] == "complete" and s1.get("processes") == 2 and str(s1.get("status_source")).endswith(
        layout.STATUS), "session 1: training complete on 2 processes, read from the run folder's status.json")
    check("smoke: " in text1 and "images/s per" in text1, "session 1: the smoke cell printed its figures")
    run1 = working / "runs" / "rehearsal-a"
    check(any(run1.rglob("events.out.tfevents*")), "session 1: TensorBoard wrote its logs (the image's tensorboard "
                                                   "and tensorflow, after the install cell's numpy)")
    upload = _uploads(record)
    check(len(upload) == 1 and EXPECTED_UPLOAD <= set(upload[0]["files"]) and upload[0]["repo_id"] == HUB_REPO,
          f"session 1: one recorded upload to {HUB_REPO} holding the complete model folder")
    check_isic2019(check, report, s1, text1, run1, mount(inp, "dataset", "flat", *ISIC2019))
    out1 = finish_session(root, "1-complete")

    # 2. The current layout, session 1's output attached, stopped by the time limit in its first fold. The limit
    # falls after the first saved state and long before the end: 20 s for the setup before the first epoch (3 s
    # on an idle machine; an 8 s limit once ran out before the first epoch ended on a loaded one, and session 3
    # then had nothing to resume) plus session 1's time for both of its epochs, against 2 folds x LONG_EPOCHS.
    limit = 20.0 + (s1.get("epoch_seconds_total") or 10.0)
    long_run = {"RUN_NAME": "rehearsal-b", "OVERRIDES": {**TINY, "epochs": LONG_EPOCHS, "num_workers": 0}}
    inp, s2, text2 = session("2-time-limit", "current", "folder", out1, {**long_run, "TIME_LIMIT": f"{limit:.0f}s"})
    code_dataset = mount(inp, "dataset", "current", REHEARSAL_USER, CODE_SLUG) / Path(CODE_ZIP).stem
    check(s2["status"] == "time_limit" and s2.get("launcher_exit_code") != 0,
          f"session 2: stopped by the time limit ({limit:.0f} s), read from status.json (the launcher said "
          f"{s2.get('launcher_exit_code')})")
    check("run again with this output attached" in text2 and "Traceback" not in text2,
          "session 2: says to run again with this output attached, and shows no traceback")
    check(f"code: {code_dataset} (the code dataset" in text2,
          "session 2: the code dataset (unpacked into a folder) wins over the attached output's code/")
    check(s2.get("pushed") is None and len(_uploads(record)) == 1, "session 2: nothing pushed from an unfinished run")
    out2 = finish_session(root, "2-time-limit")

    # 3. The same run again, session 2's output attached: resumes and finishes.
    inp, s3, text3 = session("3-resume", "current", "folder", out2, long_run)
    previous = mount(inp, "output", "current", REHEARSAL_USER, KERNEL_SLUG) / "runs" / "rehearsal-b"
    check(f"previous run: {previous}" in text3, "session 3: found session 2's run folder in notebooks/<owner>/<slug>")
    check(s3["status"] == "complete" and ("already done" in text3 or "resumed from" in text3),
          "session 3: resumed (kept what session 2 finished) and complete")
    uploads = _uploads(record)
    check(len(uploads) == 2 and EXPECTED_UPLOAD <= set(uploads[-1]["files"]),
          "session 3: a second recorded upload with the complete model folder")
    report.update(checks=check.done, failures=check.failures, ok=not check.failures,
                  seconds=round(time.monotonic() - t0, 1))
    return report


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


if __name__ == "__main__":
    sys.exit("run it as `python notebooks/kaggle.py rehearse`")
