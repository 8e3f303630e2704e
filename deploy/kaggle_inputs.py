"""Kaggle-shaped input trees for the rehearsal, made from the real data in ../shared/data with symlinks: ISIC 2020
as cdeotte/jpeg-melanoma-256x256 (with a tfrecord column), HAM10000 as kmader's, a mock ISIC 2019 set
(jpeg-isic2019-384x384, real ISIC 2017 images in its layout), the competition folder (DICOMs, never chosen) and
the code zip, in Kaggle's old flat mounts or today's datasets/<owner>/<slug> ones."""

from __future__ import annotations

import csv
import os
import random
import shutil
import zipfile
from pathlib import Path

from inference import layout

from .kaggle_push import CODE_SLUG, CODE_ZIP, KaggleCliError

REPO = Path(__file__).resolve().parents[1]
DATA = layout.data_root(REPO)
KERNEL_SLUG = "melanoma-triage-train-2xt4"
REHEARSAL_USER = "rehearsal"
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
TFRECORDS = 15  # cdeotte's jpeg-melanoma tables spread patients over 15 tfrecords
ISIC2019_TFRECORDS = 30  # his 2019 table numbers its tfrecords past 15 (ISIC_0000001 is in tfrecord 18)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def isic_rows(data: Path, benign: int) -> list[dict]:
    """Every melanoma and `benign` benign rows of the real table, with a patient-grouped `tfrecord` column
    as cdeotte's tables have (patients in sorted order, round robin over 15 tfrecords)."""
    rows = read_csv(data / "isic2020" / "train.csv")
    picked = [r for r in rows if r["target"] == "1"]
    picked += random.Random(0).sample([r for r in rows if r["target"] == "0"], benign)
    record = {p: i % TFRECORDS for i, p in enumerate(sorted({r["patient_id"] for r in picked}))}
    return [{**r, "tfrecord": record[r["patient_id"]]} for r in picked]


def ham_rows(data: Path, per_dx: int) -> list[dict]:
    rows = read_csv(data / "ham10000" / "HAM10000_metadata.csv")
    by_dx: dict[str, list[dict]] = {}
    for r in rows:
        by_dx.setdefault(r["dx"], []).append(r)
    return [r for dx in sorted(by_dx) for r in random.Random(0).sample(by_dx[dx], min(per_dx, len(by_dx[dx])))]


def isic2019_rows(data: Path, per_dx: dict[str, int] = ISIC2019_ROWS) -> list[dict]:
    """Real ISIC 2017 training rows written as cdeotte's jpeg-isic2019 train.csv has them: the 2019 diagnosis
    abbreviations, patient_id -1 (the 2019 set has no patient ids), blank unknowns, a typical original's width and
    height (the 256 px copies here keep no other), and a tfrecord (round robin: each image is its own group)."""
    folder = data / "isic2017"
    meta = {r["image_id"]: r for r in read_csv(folder / "ISIC-2017_Training_Data_metadata.csv")}
    by_dx: dict[str, list[dict]] = {}
    for r in read_csv(folder / "ISIC-2017_Training_Part3_GroundTruth.csv"):
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
    write_csv(jpeg / "train.csv", isic)
    os.symlink(data / "isic2020" / "train", jpeg / "train")
    os.symlink(data / "isic2020" / "ISIC_2020_Training_Duplicates.csv", jpeg / "ISIC_2020_Training_Duplicates.csv")

    ham = mount(inp, "dataset", layout_name, *HAM)
    write_csv(ham / "HAM10000_metadata.csv", ham_rows(data, ham_per_dx))
    os.symlink(data / "ham10000" / "images", ham / "HAM10000_images_part_1")

    isic2019 = mount(inp, "dataset", layout_name, *ISIC2019)
    write_csv(isic2019 / "train.csv", isic2019_rows(data))
    os.symlink(data / "isic2017" / "ISIC-2017_Training_Data", isic2019 / "train")

    comp = mount(inp, "competition", layout_name, "", COMPETITION)  # same columns, but DICOMs in train/
    write_csv(comp / "train.csv", [{k: v for k, v in r.items() if k != "tfrecord"} for r in isic])
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
