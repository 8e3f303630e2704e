"""Out-of-scope guard: is this a dermoscopic image like the ones the model was trained on?

Two checks, two tiers (issue 22):
* **Embedding distance.** The model's own pooled backbone embedding, square-rooted (the features are ReLU6
  outputs, skewed towards 0) and L2-normalised (flat, dark or blank images give small activations that sit
  close to the mean in raw units but point in an unusual direction), then its squared Mahalanobis distance to
  the nearest *diagnosis* of the training images: one mean per class, one shared (within-class, Ledoit-Wolf)
  covariance. One Gaussian over all training images called rare-looking lesions far, melanomas among them; the
  nearest class mean does not. Above `refuse` the image is clearly not a skin lesion under a dermatoscope (a
  photo, a drawing, a screenshot): the number is withheld. Between `caution` and `refuse` it looks like a
  lesion the model is unsure about: the number is shown, with a caution.
* **Colour.** Chromaticity statistics of the image as uploaded (before any colour correction) against the
  training images': greyscale, hue-rotated and colour-inverted dermoscopy have a lesion's shapes but not its
  colours, and the model scores them as if they were benign. Above `colour_limit` the answer is cautioned.
`python -m train.guard_eval --model FOLDER` measures this against a single Gaussian; README ("Out-of-scope
guard") has the figures.

Files in the model folder, both written by `train.fit_guard`: `guard.safetensors` (arrays `means`,
`precision`, `colour_mean`, `colour_precision`; float32, no pickle) and `guard.json` (thresholds, how they
were set, evaluation figures). A model without them still runs; its answers say the guard is unavailable.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from threadpoolctl import ThreadpoolController

from .layout import GUARD_ARRAYS, GUARD_JSON

GUARD_VERSION = "nearest-class-mahalanobis-colour-v2"  # changes whenever `features`, a score or a file changes
UNAVAILABLE = ("this model has no out-of-scope guard statistics (guard.safetensors + guard.json); "
               "fit them with `python -m train.fit_guard --model <folder>`")
LESION_CAUTION = ("This image looks unlike the dermoscopic images the model was trained on, so its number is "
                  "less reliable than usual.")
COLOUR_CAUTION = ("The colours do not look like a dermatoscope photo (greyscale, inverted or shifted colours?); "
                  "the model never saw such images and may score a melanoma low.")


def features(embedding: np.ndarray) -> np.ndarray:
    """Pooled backbone embedding (B, D) → the guard's feature space: sqrt, then unit length."""
    root = np.sqrt(np.clip(np.asarray(embedding, dtype=np.float64), 0.0, None))
    norm = np.linalg.norm(root, axis=1, keepdims=True)
    return root / np.maximum(norm, 1e-12)  # an all-zero embedding stays at the origin: far from the means


def colour_features(squares: np.ndarray) -> np.ndarray:
    """(B, H, W, 3) uint8 images as uploaded → (B, 5) colour statistics: the mean and spread of the red and
    green chromaticities (r = R / (R + G + B), g likewise; brightness drops out) and the mean saturation.
    Skin under a dermatoscope is reddish-brown: r > g, a little saturation. Greyscale has r = g = 1/3 and no
    saturation; inversion and hue rotation move r and g away from skin's."""
    x = np.asarray(squares, dtype=np.float32).reshape(len(squares), -1, 3)
    total = x.sum(axis=2) + np.float32(1.0)
    r, g = x[..., 0] / total, x[..., 1] / total
    high, low = x.max(axis=2), x.min(axis=2)
    saturation = (high - low) / (high + np.float32(1.0))
    return np.stack([r.mean(1), g.mean(1), r.std(1), g.std(1), saturation.mean(1)], axis=1).astype(np.float64)


@functools.cache
def _blas() -> ThreadpoolController:
    """The process's BLAS libraries (NumPy's OpenBLAS), found once: scanning them costs milliseconds."""
    return ThreadpoolController()


def mahalanobis(x: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """(B, D) points, (K, D) means, (D, D) precision → (B,) squared distance to the nearest mean."""
    x, means, precision = (np.asarray(a, dtype=np.float32) for a in (x, means, precision))
    # (x - m) P (x - m) = xPx - 2 xPm + mPm for every mean at once: one (B, D) x (D, D) product, not K
    # BLAS, not einsum (far faster), but on one thread: the product is small, and OpenBLAS's worker threads keep
    # spinning after a call, which on a 2-core Space takes a core from the onnxruntime run of the next request.
    with _blas().limit(limits=1, user_api="blas"):
        xp = x @ precision
        mp = means @ precision
    own = (xp * x).sum(axis=1, dtype=np.float64)[:, None]
    cross = (xp.astype(np.float64) @ means.T.astype(np.float64))
    other = (mp * means).sum(axis=1, dtype=np.float64)[None, :]
    return np.maximum(own - 2 * cross + other, 0.0).min(axis=1)


@dataclass(frozen=True)
class Guard:
    # float32, as stored: distances of a few hundred need no more digits than float32 holds. Fitting and
    # serving score with the same arrays.
    means: np.ndarray  # (K, D): one per training class (K = 1: a single Gaussian, the measured alternative)
    precision: np.ndarray  # (D, D), shared
    refuse: float  # embedding distance above it: not a skin lesion, the number is withheld
    caution: float  # embedding distance above it (and not refused): shown, with LESION_CAUTION
    colour_mean: np.ndarray  # (5,)
    colour_precision: np.ndarray  # (5, 5)
    colour_limit: float  # colour distance above it: shown, with COLOUR_CAUTION

    def __post_init__(self) -> None:
        for name in ("means", "precision", "colour_mean", "colour_precision"):
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=np.float32))
        if self.means.ndim == 1:
            object.__setattr__(self, "means", self.means[None])
        if not self.caution <= self.refuse:
            raise ValueError(f"guard: the caution line ({self.caution}) must not be above the refusal line "
                             f"({self.refuse}); refit it with `python -m train.fit_guard`.")

    def score(self, embedding: np.ndarray) -> np.ndarray:
        """(B, D) pooled embeddings → (B,) squared Mahalanobis distance to the nearest class (bigger = less like
        training)."""
        return mahalanobis(features(embedding), self.means, self.precision)

    def colour_score(self, squares: np.ndarray) -> np.ndarray:
        """(B, H, W, 3) uint8 images as uploaded → (B,) squared Mahalanobis distance of their colour statistics."""
        return self.colour_distance(colour_features(squares))

    def colour_distance(self, colours: np.ndarray) -> np.ndarray:
        """(B, 5) `colour_features` → (B,) squared Mahalanobis distance to the training images' colours."""
        return mahalanobis(colours, self.colour_mean[None], self.colour_precision)

    def verdict(self, score: float, colour: float) -> tuple[bool, str | None]:
        """(in_distribution, caution): refused only above the refusal line; otherwise a caution sentence when
        the embedding or the colours are unusual, else None."""
        if score > self.refuse:
            return False, None
        if colour > self.colour_limit:
            return True, COLOUR_CAUTION
        return True, LESION_CAUTION if score > self.caution else None

    @classmethod
    def load(cls, folder: str | Path) -> "Guard | None":
        """The folder's guard, or None when it has none. A damaged or foreign one is an error, not None:
        a guard that silently vanished would let every image through."""
        folder = Path(folder)
        arrays, info = folder / GUARD_ARRAYS, folder / GUARD_JSON
        if not arrays.is_file() and not info.is_file():
            return None
        if not (arrays.is_file() and info.is_file()):
            raise FileNotFoundError(f"{folder} has only one of {GUARD_ARRAYS} and {GUARD_JSON}; "
                                    "refit both with `python -m train.fit_guard`.")
        from safetensors.numpy import load_file

        meta = json.loads(info.read_text())
        if meta.get("version") != GUARD_VERSION:
            raise ValueError(f"{info}: guard version {meta.get('version')!r}, this code reads {GUARD_VERSION!r}; "
                             "refit it with `python -m train.fit_guard --model <folder>`.")
        t = load_file(str(arrays))
        if t["precision"].shape != (t["means"].shape[1],) * 2:
            raise ValueError(f"{arrays}: precision {t['precision'].shape} does not match the means "
                             f"{t['means'].shape}.")
        return cls(means=t["means"], precision=t["precision"], refuse=float(meta["refuse"]),
                   caution=float(meta["caution"]), colour_mean=t["colour_mean"],
                   colour_precision=t["colour_precision"], colour_limit=float(meta["colour_limit"]))

    def save(self, folder: str | Path, info: dict) -> None:
        """Write both files; `info` (how the lines were set, figures) goes into guard.json."""
        from safetensors.numpy import save_file

        folder = Path(folder)
        save_file({"means": self.means, "precision": self.precision, "colour_mean": self.colour_mean,
                   "colour_precision": self.colour_precision}, str(folder / GUARD_ARRAYS),
                  metadata={"version": GUARD_VERSION})
        payload = {"version": GUARD_VERSION, "refuse": self.refuse, "caution": self.caution,
                   "colour_limit": self.colour_limit, **info}
        (folder / GUARD_JSON).write_text(json.dumps(payload, indent=1) + "\n")
