"""HAM10000 as its users have it (the Harvard Dataverse download, or kmader's Kaggle copy):

    <folder>/HAM10000_metadata.csv     lesion_id, image_id, dx, dx_type, age, sex, localization
    <image_id>.jpg anywhere below <folder> (Kaggle splits them over HAM10000_images_part_1/ and _part_2/)

Several images can show the same lesion: the lesion is the group the folds must not split.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from inference.metadata import UNKNOWN

from ..errors import DataError
from .common import assemble, listing, metadata, read_csv

# HAM10000 `dx` is the model's vocabulary (inference.model.CLASSES): mel, nv, bcc, akiec, bkl, df, vasc.
DX = {c: c for c in ("mel", "nv", "bcc", "akiec", "bkl", "df", "vasc")}
# `localization` → ISIC 2020 `anatom_site_general_challenge`. Back, trunk, abdomen and chest are the
# torso; face, scalp, neck and ear are head/neck; 'acral' is palms/soles. 'hand' and 'foot' are mapped
# to the upper/lower extremity because HAM10000 does not say palm or dorsum (ISIC's palms/soles is acral
# skin only); 'genital' is oral/genital; 'unknown' stays unknown.
SITE = {
    "back": "torso", "trunk": "torso", "abdomen": "torso", "chest": "torso",
    "face": "head/neck", "scalp": "head/neck", "neck": "head/neck", "ear": "head/neck",
    "upper extremity": "upper extremity", "hand": "upper extremity",
    "lower extremity": "lower extremity", "foot": "lower extremity",
    "acral": "palms/soles", "genital": "oral/genital", "unknown": UNKNOWN,
}
COLUMNS = ("lesion_id", "image_id", "dx", "age", "sex", "localization")


def load_ham(folder: Path) -> pd.DataFrame:
    """Every row of `folder`'s HAM10000_metadata.csv, with its image found below `folder`. Raises DataError."""
    csv = folder / "HAM10000_metadata.csv"
    frame = read_csv(csv, COLUMNS)
    index: dict[str, Path] = {}
    for root, dirs, files in os.walk(folder, followlinks=True):  # image folders may be symlinks
        dirs.sort()  # the same file wins on every machine when an image is stored twice
        for name in sorted(files):
            if name.lower().endswith(".jpg"):
                index.setdefault(name[:-4], Path(root) / name)
    ids = frame["image_id"].astype(str)
    missing = [f"{i} (no {i}.jpg below {folder})" for i in ids if i not in index]
    if missing:
        raise DataError(f"Missing images for {csv}: " + listing(missing, len(frame), "rows have no image file"))
    words = frame["dx"].astype(str).str.strip().str.lower()
    unmapped = sorted(set(words) - set(DX))
    if unmapped:
        raise DataError(f"{csv}: dx value(s) with no class mapping: {', '.join(unmapped)}; known: {', '.join(DX)}.")
    metas = metadata(frame, csv, "age", "sex", "localization", SITE)
    return assemble(frame, "ham10000", ids, [str(index[i]) for i in ids], frame["lesion_id"],
                    [DX[w] for w in words], metas, None)
