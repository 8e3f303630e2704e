"""One patient's lesions compared with each other: how much each stands out (the "ugly duckling" sign). NumPy only.

A dermatologist looks twice at the mole that looks unlike the same patient's other moles. Two numbers per lesion,
from what the model already computes for each answer:
* `outlier`: the distance of the lesion's embedding (the guard's feature space: square-rooted, unit length,
  averaged over the views) to the mean of the patient's *other* lesions, standardised among the patient's lesions
  (0: as unusual as this patient's lesions usually are; 2: two standard deviations more);
* `relative`: the lesion's melanoma logit minus the median logit of the patient's other lesions.
They need at least `MIN_LESIONS` lesions the guard keeps; refused images take no part. Whether either carries
information about melanoma is measured on ISIC 2020's patients by `python -m studies.patients` (issue 32).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import metadata as md
from .guard import features

MIN_LESIONS = 3  # with two lesions, "unlike the others" is "unlike the other": no comparison


def lesion_features(embedding: np.ndarray) -> np.ndarray:
    """(V, B, D) or (B, D) pooled embeddings → (B, D): the guard's features averaged over the views, unit length."""
    e = np.asarray(embedding)
    views = e if e.ndim == 3 else e[None]
    mean = np.mean([features(v) for v in views], axis=0)
    return mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def standardised(x: np.ndarray) -> np.ndarray:
    """(x − mean) / standard deviation over one patient's lesions; all 0 when they do not differ."""
    spread = x.std()
    return (x - x.mean()) / spread if spread > 1e-12 else np.zeros_like(x)


def context(probabilities: np.ndarray, lesion_feats: np.ndarray) -> dict[str, np.ndarray]:
    """One patient's n ≥ MIN_LESIONS lesions → {'outlier', 'relative', 'distance'}, each (n,)."""
    p, x = np.asarray(probabilities, dtype=np.float64), np.asarray(lesion_feats, dtype=np.float64)
    n = len(p)
    if n < MIN_LESIONS:
        raise ValueError(f"a comparison needs at least {MIN_LESIONS} lesions, got {n}.")
    others_mean = (x.sum(axis=0, keepdims=True) - x) / (n - 1)  # each lesion against the mean of the others
    distance = np.linalg.norm(x - others_mean, axis=1)
    z = logit(p)
    relative = np.array([z[i] - np.median(np.delete(z, i)) for i in range(n)])
    return {"outlier": standardised(distance), "relative": relative, "distance": distance}


MAX_LESIONS = 30  # a visit: 20 lesions take 1.6 s here (bench/patient.py); a whole-body series is not this tool
# `python -m studies.patients --readme README.md` decides the flag: the most outlying lesion is flagged only while the
# outlier order's within-patient ranking of melanomas beats chance beyond its interval (issue 32; a test keeps this in
# step with README's decision). The order stays by probability either way: no other order beat it beyond its interval.
FLAG_OUTLIERS = True
ORDER_NOTES = {
    False: "Ordered by melanoma probability, highest first: look at the first ones first. The order is not a "
           "diagnosis, and a lesion low in it is not ruled out. How much each lesion stands out from this "
           "patient's others is shown beside it, but on ISIC 2020's patients it has not been shown to find "
           "melanomas (docs/model.md), so no lesion is marked for it.",
    True: "Ordered by melanoma probability, highest first: look at the first ones first. The lesion marked ◆ is the "
          "one that differs most from this patient's others (the \"ugly duckling\" sign): on ISIC 2020's patients "
          "melanomas stood out this way more often than chance, on few patients (docs/model.md), so look at it too, "
          "whatever its number. The order and the mark are not a diagnosis, and a lesion low in the order is not "
          "ruled out.",
}


def fingerprint(image: Any) -> bytes:
    """The same upload twice has the same fingerprint: a file's bytes, or an image's pixels."""
    if isinstance(image, (str, os.PathLike)):
        return hashlib.sha256(Path(image).read_bytes()).digest() if Path(image).is_file() else str(image).encode()
    if isinstance(image, bytes):
        return hashlib.sha256(image).digest()
    if hasattr(image, "tobytes"):  # PIL image, NumPy array
        return hashlib.sha256(image.tobytes() + repr(getattr(image, "size", getattr(image, "shape", ""))).encode()).digest()
    return repr(id(image)).encode()  # a stream: cannot be compared without reading it


def check_lesions(images: Sequence[Any], sites: Sequence[Any] | None) -> list[Any]:
    """The one-sentence errors of a patient's upload; returns the sites, one per image."""
    n = len(images)
    if n == 0:
        raise ValueError("Upload at least one image of the patient's lesions.")
    if n > MAX_LESIONS:
        raise ValueError(f"{n} images: one patient's assessment takes at most {MAX_LESIONS}; assess the rest separately.")
    sites = [None] * n if sites is None else list(sites)
    if len(sites) != n:
        raise ValueError(f"{len(sites)} sites for {n} images: give one site per image, in upload order, or none.")
    seen: dict[bytes, int] = {}
    for i, image in enumerate(images):
        first = seen.setdefault(fingerprint(image), i)
        if first != i:
            raise ValueError(f"Images {first + 1} and {i + 1} are the same file: upload each lesion once.")
    return sites


def assess_patient(predictor: Any, images: Sequence[Any], age: Any = None, sex: Any = None,
                   sites: Sequence[Any] | None = None, tta: bool = True) -> dict[str, Any]:
    """Every lesion's answer (as `Predictor.predict`), in upload order, each with a `context`: its `rank` among the
    patient's kept lesions (1 = look first; by probability), `outlier` and `relative` (`context`), `flagged`, and a
    `note` when it takes no part. An image that cannot be read is refused alone (`error`); the rest are assessed.
    Raises ValueError (one sentence) for an upload that cannot be assessed as a whole."""
    sites = check_lesions(images, sites)
    md.normalize(age, sex, None)  # the patient's age and sex: one error, not one per image
    metas = []
    for i, site in enumerate(sites):
        try:
            metas.append(md.normalize(age, sex, site))
        except ValueError as err:
            raise ValueError(f"image {i + 1}: {err}") from None
    squares, errors = {}, {}
    for i, image in enumerate(images):
        try:
            squares[i] = predictor.square(image)
        except ValueError as err:  # ImageError: this one is refused, the others are assessed
            errors[i] = str(err)
    good = list(squares)
    answers, embedding = predictor.assess(np.stack([squares[i] for i in good]), np.stack(
        [md.encode(metas[i]) for i in good]), [metas[i] for i in good], tta) if good else ([], None)
    by_index = dict(zip(good, answers))
    kept = [i for i in good if by_index[i]["in_distribution"] is not False]
    compared = len(kept) >= MIN_LESIONS
    if compared:
        feats = lesion_features(embedding)[[good.index(i) for i in kept]]
        c = context(np.array([by_index[i]["melanoma_probability"] for i in kept]), feats)
        order = sorted(kept, key=lambda i: -by_index[i]["melanoma_probability"])
        extra = {i: {"rank": order.index(i) + 1, "outlier": float(c["outlier"][j]), "relative": float(c["relative"][j]),
                     "flagged": FLAG_OUTLIERS and bool(c["outlier"][j] == c["outlier"].max()), "note": None}
                 for j, i in enumerate(kept)}
    lesions = []
    for i in range(len(images)):
        if i in errors:
            answer = {"error": errors[i], "in_distribution": False}
        else:
            answer = by_index[i]
        note = ("Not compared: this does not look like a dermoscopic image." if answer["in_distribution"] is False
                else None if compared else "Not compared: too few lesions.")
        lesions.append({**answer, "image": i + 1, "context": extra[i] if compared and i in kept else
                        {"rank": None, "outlier": None, "relative": None, "flagged": False, "note": note}})
    need = max(0, MIN_LESIONS - len(kept))
    return {"lesions": lesions, "compared": len(kept) if compared else 0, "needs": need,
            "order": ORDER_NOTES[FLAG_OUTLIERS] if compared else
            f"Upload {need} more dermoscopic image{'s' * (need > 1)} of this patient's lesions to compare them; "
            "each is assessed on its own meanwhile."}
