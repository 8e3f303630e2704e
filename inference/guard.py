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
* **Colour.** The image's mean colour as uploaded (before any colour correction): its strength (chroma) and
  its hue angle must lie in the box that holds ~99 % of the validation images (skin under a dermatoscope is
  red to yellow-brown). Greyscale, hue-rotated and colour-inverted dermoscopy have a lesion's shapes but not
  its colours, and the model scores them as if they were benign: such an answer is cautioned.
* **Both.** An embedding beyond the caution line *and* colours outside the box is not a lesion either (most
  photos, drawings and screenshots): refused.
`python -m studies.guard_eval --model FOLDER` measures this against a single Gaussian; docs/space.md ("Out-of-scope
guard") has the figures.

Files in the model folder, both written by `train.fit_guard`: `guard.safetensors` (arrays `means`,
`precision`; float32, no pickle) and `guard.json` (the lines and the colour box, how they were set,
evaluation figures). A model without them still runs; its answers say the guard is unavailable.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from threadpoolctl import ThreadpoolController

from .layout import GUARD_ARRAYS, GUARD_JSON

GUARD_VERSION = "nearest-class-mahalanobis-colour-box-v2"  # changes whenever `features`, a score or a file changes
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
    """(B, H, W, 3) uint8 images as uploaded → (B, 2): the chroma and the hue angle (degrees) of their mean
    opponent colour, red − green and yellow − blue, each relative to the pixel's brightness. Skin under a
    dermatoscope is red to yellow-brown (angle between about −40° and 70°, clearly coloured); greyscale has no
    chroma, and inversion or hue rotation turn the angle towards green, cyan or blue."""
    x = np.asarray(squares, dtype=np.float32).reshape(len(squares), -1, 3)
    brightness = x.mean(axis=2) + np.float32(1.0)
    red_green = ((x[..., 0] - x[..., 1]) / brightness).mean(axis=1)
    yellow_blue = (((x[..., 0] + x[..., 1]) / 2 - x[..., 2]) / brightness).mean(axis=1)
    return np.stack([np.hypot(red_green, yellow_blue), np.degrees(np.arctan2(yellow_blue, red_green))],
                    axis=1).astype(np.float64)


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


def view_distance(embedding: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """(B, D) embeddings, or (V, B, D): the V dihedral views of each image → (B,) `mahalanobis` of `features`,
    averaged over the views. One view's distance is noisy; averaging what test-time augmentation computes
    anyway halves the real lesions past the refusal line on other clinics' images (issue 29)."""
    e = np.asarray(embedding)
    views = e if e.ndim == 3 else e[None]
    flat = features(views.reshape(-1, views.shape[-1]))
    return mahalanobis(flat, means, precision).reshape(len(views), -1).mean(axis=0)


@dataclass(frozen=True)
class Guard:
    # float32, as stored: distances of a few hundred need no more digits than float32 holds. Fitting and
    # serving score with the same arrays.
    means: np.ndarray  # (K, D): one per training class (K = 1: a single Gaussian, the measured alternative)
    precision: np.ndarray  # (D, D), shared
    refuse: float  # embedding distance above it: not a skin lesion, the number is withheld
    caution: float  # embedding distance above it (and not refused): shown, with LESION_CAUTION
    colour_box: tuple[float, float, float]  # (least chroma, lowest and highest hue angle) of dermoscopic colour
    views: int = 1  # the lines were set on distances averaged over this many dihedral views (8: as served)

    def __post_init__(self) -> None:
        for name in ("means", "precision"):
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=np.float32))
        if self.means.ndim == 1:
            object.__setattr__(self, "means", self.means[None])
        if not self.caution <= self.refuse:
            raise ValueError(f"guard: the caution line ({self.caution}) must not be above the refusal line "
                             f"({self.refuse}); refit it with `python -m train.fit_guard`.")

    def score(self, embedding: np.ndarray) -> np.ndarray:
        """(B, D) pooled embeddings, or (V, B, D) for V views of each image → (B,) squared Mahalanobis distance
        to the nearest class, averaged over the views (bigger = less like training)."""
        return view_distance(embedding, self.means, self.precision)

    def colour_score(self, squares: np.ndarray) -> np.ndarray:
        """(B, H, W, 3) uint8 images as uploaded → (B,) how far their colour lies outside the box (0: inside)."""
        return self.colour_distance(colour_features(squares))

    def colour_distance(self, colours: np.ndarray) -> np.ndarray:
        """(B, 2) `colour_features` → (B,) distance outside the colour box, in units of its size (0: inside)."""
        chroma, angle = np.asarray(colours, dtype=np.float64).T
        least, low, high = self.colour_box
        return np.maximum.reduce([np.zeros_like(chroma), (least - chroma) / least, (low - angle) / (high - low),
                                  (angle - high) / (high - low)])

    def verdict(self, score: float, colour: float) -> tuple[bool, str | None]:
        """(in_distribution, caution): refused above the refusal line, or above the caution line with colours
        outside the box; otherwise a caution sentence when the colours or the embedding are unusual, else None."""
        if score > self.refuse or (score > self.caution and colour > 0):
            return False, None
        if colour > 0:
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
                   caution=float(meta["caution"]), colour_box=tuple(float(v) for v in meta["colour_box"]),
                   views=int(meta.get("views", 1)))

    def save(self, folder: str | Path, info: dict) -> None:
        """Write both files; `info` (how the lines were set, figures) goes into guard.json."""
        from safetensors.numpy import save_file

        folder = Path(folder)
        save_file({"means": self.means, "precision": self.precision}, str(folder / GUARD_ARRAYS),
                  metadata={"version": GUARD_VERSION})
        payload = {"version": GUARD_VERSION, "refuse": self.refuse, "caution": self.caution,
                   "colour_box": list(self.colour_box), "views": self.views, **info}
        (folder / GUARD_JSON).write_text(json.dumps(payload, indent=1) + "\n")
