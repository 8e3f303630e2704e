"""The ISIC challenge layout, as the challenge published it and users have it (ISIC 2017 Part 3):

    <folder>/ISIC-2017_Training_Data/<image_id>.jpg
    <folder>/ISIC-2017_Training_Part3_GroundTruth.csv     image_id, melanoma (0/1), seborrheic_keratosis (0/1)
    <folder>/ISIC-2017_Training_Data_metadata.csv         image_id, age_approximate (or 'unknown'), sex
    ... and the same with Validation (or Test) for the other parts.

There is no anatomical site (every row's site is unknown) and no patient or lesion id (each image is its
own group for the folds).
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from ..errors import DataError
from .common import assemble, listing, metadata, read_csv

# (melanoma, seborrheic_keratosis) → model class. A row with neither label is a nevus (the challenge's
# third class); seborrheic keratosis is HAM10000's benign keratosis-like lesion, `bkl`.
LABELS = {(1, 0): "mel", (0, 1): "bkl", (0, 0): "nv"}


def parts(folder: Path) -> list[str]:
    """The parts present in `folder`, e.g. ['ISIC-2017_Training', 'ISIC-2017_Validation']."""
    return sorted(p.name.removesuffix("_Part3_GroundTruth.csv") for p in Path(folder).glob("*_Part3_GroundTruth.csv"))


def load_isic_challenge(folder: Path, part: str = "Training", source: str | None = None) -> pd.DataFrame:
    """The rows of one part ('Training', 'Validation', 'Test') of an ISIC challenge folder. Raises DataError."""
    folder = Path(folder)
    matches = [p for p in parts(folder) if p.endswith(f"_{part}")]
    if len(matches) != 1:
        raise DataError(f"{folder}: expected one *_{part}_Part3_GroundTruth.csv (the ISIC challenge layout), found "
                        f"{len(matches)}; parts here: {', '.join(parts(folder)) or 'none'}.")
    prefix = matches[0]
    truth = read_csv(folder / f"{prefix}_Part3_GroundTruth.csv", ("image_id", "melanoma", "seborrheic_keratosis"))
    meta_csv = folder / f"{prefix}_Data_metadata.csv"
    meta = read_csv(meta_csv, ("image_id", "age_approximate", "sex"))
    frame = truth.merge(meta, on="image_id", how="left", validate="one_to_one")
    image_dir = folder / f"{prefix}_Data"
    present = set(os.listdir(image_dir)) if image_dir.is_dir() else set()
    ids = frame["image_id"].astype(str)
    missing = [f"{i} (expected {image_dir / (i + '.jpg')})" for i in ids if i + ".jpg" not in present]
    if missing:
        raise DataError(f"Missing images for {prefix}: " + listing(missing, len(frame), "rows have no image file"))
    pairs = list(zip(frame["melanoma"].astype(float).astype(int), frame["seborrheic_keratosis"].astype(float).astype(int)))
    bad = [f"{i}: melanoma={m}, seborrheic_keratosis={s}" for i, (m, s) in zip(ids, pairs) if (m, s) not in LABELS]
    if bad:
        raise DataError(f"{prefix}_Part3_GroundTruth.csv: labels must be one of {sorted(LABELS)}; "
                        + listing(bad, len(frame), "rows"))
    frame["age_approximate"] = pd.to_numeric(frame["age_approximate"], errors="coerce")  # 'unknown' → blank
    frame["site"] = None
    metas = metadata(frame, meta_csv, "age_approximate", "sex", "site", None)
    source = source or prefix.split("_")[0].lower().replace("-", "")  # 'ISIC-2017' → 'isic2017'
    return assemble(frame, source, ids, [str(image_dir / f"{i}.jpg") for i in ids], ids,
                     [LABELS[p] for p in pairs], metas, None)
