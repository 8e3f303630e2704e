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

import numpy as np

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
