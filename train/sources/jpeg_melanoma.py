"""The `jpeg-melanoma` layout (Chris Deotte's Kaggle re-encodes) and the ISIC 2020 competition's own:

    <folder>/train.csv                 image_name, patient_id, sex, age_approx, anatom_site_general_challenge,
                                       diagnosis, target[, tfrecord]
    <folder>/train/<image_name>.jpg    (jpeg-melanoma)   or   <folder>/jpeg/train/<image_name>.jpg (competition)

Two data sets come in it: ISIC 2020 (`cdeotte/jpeg-melanoma-NxN`, diagnoses in words) and the ISIC 2019
set the 1st-place solution trained with (`cdeotte/jpeg-isic2019-NxN`, diagnoses as the 2019 abbreviations
MEL, NV, BCC, AK, BKL, DF, VASC, SCC, patient_id -1, finer sites such as 'anterior torso'). One table maps
both vocabularies onto the model's classes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DataError
from .common import assemble, listing, metadata, read_csv

# A benign row whose diagnosis none of the model's classes names: ISIC 2020's 'unknown' (>80 % of its
# rows), cafe-au-lait macules and atypical melanocytic proliferations. Such a class would come from ISIC
# 2020 alone, and a model learns to predict it from the source's look (issue 24: images from other
# clinics got 77-94 % of their mass on it). What these rows become is the `unspecified_benign` option.
UNSPECIFIED = "unspecified"
UNSPECIFIED_CHOICES = ("nv", "drop")  # nv: what most ISIC 2020 unknowns are (benign melanocytic lesions)

# diagnosis (lower-cased) → model class. Benign keratoses, lentigines and lichenoid keratoses are
# HAM10000's `bkl` ("benign keratosis-like lesions", Tschandl et al. 2018). The 2019 abbreviations follow
# the 1st-place solution (Ha, Liu & Liu); squamous cell carcinoma joins `akiec` (actinic keratosis /
# intraepithelial carcinoma), the HAM10000 class that holds Bowen's disease, as a malignant non-melanoma.
DIAGNOSIS = {
    # ISIC 2020
    "melanoma": "mel", "nevus": "nv",
    "seborrheic keratosis": "bkl", "lentigo nos": "bkl", "lichenoid keratosis": "bkl", "solar lentigo": "bkl",
    "cafe-au-lait macule": UNSPECIFIED, "atypical melanocytic proliferation": UNSPECIFIED, "unknown": UNSPECIFIED,
    # ISIC 2019
    "mel": "mel", "nv": "nv", "bcc": "bcc", "ak": "akiec", "scc": "akiec", "bkl": "bkl", "df": "df", "vasc": "vasc",
}
ISIC2019_WORDS = {"mel", "nv", "bcc", "ak", "scc", "bkl", "df", "vasc"}  # a table using any of them is the 2019 set
# ISIC 2019's finer sites → the ISIC 2020 vocabulary the metadata encoder speaks.
SITE = {"anterior torso": "torso", "posterior torso": "torso", "lateral torso": "torso"}
COLUMNS = ("image_name", "patient_id", "sex", "age_approx", "anatom_site_general_challenge", "diagnosis", "target")
NO_PATIENT = {"-1", ""}  # the 2019 set has no patient ids: each image is then its own group


def load_jpeg_melanoma(folder: Path, unspecified: str = "nv") -> pd.DataFrame:
    """The rows of `folder`'s train.csv whose diagnosis maps to a class (see DIAGNOSIS, UNSPECIFIED)."""
    if unspecified not in UNSPECIFIED_CHOICES:
        raise DataError(f"unspecified_benign must be one of {', '.join(UNSPECIFIED_CHOICES)}, got {unspecified!r}.")
    csv = folder / "train.csv"
    frame = read_csv(csv, COLUMNS)
    image_dir = next((d for d in (folder / "jpeg" / "train", folder / "train") if d.is_dir()), None)
    if image_dir is None:
        raise DataError(f"No image folder beside {csv}: expected jpeg/train/ (competition) or train/ (jpeg-melanoma).")
    tfrecord = None
    if "tfrecord" in frame.columns:
        tfrecord = pd.to_numeric(frame["tfrecord"], errors="coerce").fillna(-1).astype(int)
        keep = tfrecord >= 0  # -1: a duplicate its author left out of every tfrecord
        frame, tfrecord = frame[keep].reset_index(drop=True), tfrecord[keep].reset_index(drop=True)
    blank = frame["image_name"].isna()
    if blank.any():
        raise DataError(f"{csv}: column image_name is blank in " + listing(
            [f"line {i + 2}" for i in np.flatnonzero(blank)], len(frame), "rows"))
    present = set(os.listdir(image_dir))
    names = frame["image_name"].astype(str)
    missing = [f"{n} (expected {image_dir / (n + '.jpg')})" for n in names if n + ".jpg" not in present]
    if missing:
        raise DataError(f"Missing images for {csv}: " + listing(missing, len(frame), "rows have no image file"))
    words = frame["diagnosis"].fillna("unknown").astype(str).str.strip().str.lower()
    unmapped = sorted(set(words) - set(DIAGNOSIS))
    if unmapped:
        raise DataError(f"{csv}: diagnosis value(s) with no class mapping: {', '.join(unmapped)}; "
                        f"known: {', '.join(DIAGNOSIS)}.")
    labels = [DIAGNOSIS[w] for w in words]
    target = pd.to_numeric(frame["target"], errors="coerce")
    clash = [f"line {i + 2}" for i, (t, lab) in enumerate(zip(target, labels))
             if t not in (0, 1) or (t == 1) != (lab == "mel")]
    if clash:
        raise DataError(f"{csv}: target disagrees with diagnosis (target must be 1 exactly for melanoma) in "
                        + listing(clash, len(frame), "rows"))
    sites = frame["anatom_site_general_challenge"].map(lambda s: SITE.get(str(s).strip().lower(), s))
    metas = metadata(frame.assign(anatom_site_general_challenge=sites), csv, "age_approx", "sex",
                     "anatom_site_general_challenge", None)
    patients = frame["patient_id"].fillna("").astype(str).str.strip()
    groups = patients.where(~patients.isin(NO_PATIENT), "image:" + names)
    paths = [str(image_dir / f"{n}.jpg") for n in names]
    source = "isic2019" if words.isin(ISIC2019_WORDS).any() else "isic2020"  # the vocabulary tells
    labels = [unspecified if lab == UNSPECIFIED else lab for lab in labels]
    rows = assemble(frame, source, names, paths, groups, labels, metas, tfrecord)
    return rows[rows.label != "drop"].reset_index(drop=True)
