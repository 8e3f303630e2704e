"""Cross-validation folds: grouped by patient (ISIC) / lesion (HAM), stratified, duplicates kept together.

A patient's images look alike (same skin, same camera, often the same lesion twice) and HAM10000
has several images of one lesion: letting them straddle folds inflates validation AUC. The ISIC
2020 duplicate list pairs images that are the same photo under two names, sometimes under two
patient ids; those pairs are merged into one group before splitting, so they cannot straddle either.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from .errors import DataError


def merged_groups(frame: pd.DataFrame, duplicates: list[tuple[str, str]]) -> pd.Series:
    """Each row's group after joining groups linked by a duplicate pair (union-find)."""
    parent: dict[str, str] = {g: g for g in frame["group"].unique()}

    def find(g: str) -> str:
        while parent[g] != g:
            parent[g] = parent[parent[g]]
            g = parent[g]
        return g

    group_of = dict(zip(frame["image_id"], frame["group"]))
    for a, b in duplicates:
        if a in group_of and b in group_of:
            ra, rb = find(group_of[a]), find(group_of[b])
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)  # deterministic root
    return frame["group"].map(find)


def assign_folds(frame: pd.DataFrame, n_folds: int, seed: int, duplicates: list[tuple[str, str]],
                 method: str = "stratified_group") -> pd.Series:
    """Fold number per row (same index as `frame`). Deterministic for a given seed.

    `stratified_group`: sklearn StratifiedGroupKFold over the merged groups, stratified by
    source + diagnosis, so each fold gets its share of melanomas from each data set and of the rare
    classes. `tfrecord`: ISIC rows keep cdeotte's patient-grouped tfrecords (fold = tfrecord mod
    n_folds: the 1st place's "oldfold" option; their default mapped the 15 tfrecords to 5 folds with a lookup
    table); the other rows are split as above.
    """
    groups = merged_groups(frame, duplicates)
    strata = frame["source"] + ":" + frame["label"]
    folds = pd.Series(-1, index=frame.index, dtype=int)
    todo = frame.index
    if method == "tfrecord":
        has = frame["tfrecord"] >= 0
        if not has[frame["source"] == "isic2020"].any():
            raise DataError("fold_source tfrecord: no ISIC train.csv here has a tfrecord column "
                            "(it comes with the cdeotte/jpeg-melanoma-NxN data sets).")
        folds[has] = frame.loc[has, "tfrecord"] % n_folds
        todo = frame.index[~has]
    if len(todo):
        if groups[todo].nunique() < n_folds:
            raise DataError(f"Only {groups[todo].nunique()} patient/lesion groups for {n_folds} folds; "
                            "use fewer folds.")
        splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        with warnings.catch_warnings():  # "least populated class has only k members": expected for rare classes
            warnings.simplefilter("ignore", UserWarning)
            for k, (_, val) in enumerate(splitter.split(np.zeros(len(todo)), strata[todo], groups[todo])):
                folds[todo[val]] = k
    check_folds(frame, folds, groups)
    return folds


def check_folds(frame: pd.DataFrame, folds: pd.Series, groups: pd.Series) -> None:
    """No patient/lesion group and no duplicate pair may appear in two folds."""
    spread = folds.groupby(groups).nunique()
    split = spread[spread > 1]
    if len(split):
        raise DataError(f"Fold assignment splits {len(split)} patient/lesion group(s) across folds, e.g. "
                        f"{', '.join(split.index[:5])}. With fold_source tfrecord this means the tfrecords are not "
                        "patient-grouped; use fold_source stratified_group.")


def fold_table(frame: pd.DataFrame, folds: pd.Series, duplicates: list[tuple[str, str]]) -> pd.DataFrame:
    """What folds.csv holds: one row per image."""
    return pd.DataFrame({
        "image_id": frame["image_id"], "source": frame["source"], "group": frame["group"],
        "merged_group": merged_groups(frame, duplicates), "label": frame["label"], "target": frame["target"],
        "fold": folds,
    })
