"""The data cell: the ISIC 2020, ISIC 2019 and HAM10000 folders among the notebook's inputs, found by search.

Folder names differ between dataset versions and Kaggle's mount layouts: resized-JPEG layouts (train.csv +
train/*.jpg) win over the competition folder, whose train/ holds DICOMs; among them the smallest side at least the
training size; then the path. The choice and the reason are printed.
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

from .code import walk_dirs


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
