"""Out-of-scope guard: is this image like the dermoscopic images the model was trained on?

The score is a Mahalanobis distance of the model's own pooled backbone embedding to the training
images' embeddings (mean and Ledoit-Wolf-shrunk precision, fitted by `train.fit_guard`). Before the
distance, each embedding is square-rooted (the features are ReLU6 outputs, skewed towards 0) and
L2-normalised: flat, dark or blank images give small activations that sit close to the training mean
in raw units, but point in an unusual direction, and only the direction survives normalisation.
`python -m train.fit_guard --evaluate` measured this against raw, class-conditional and k-NN
variants; README ("Out-of-scope guard") has the figures.

Files in the model folder, both written by `train.fit_guard`: `guard.safetensors` (arrays `mean`,
`precision`; float32, no pickle) and `guard.json` (threshold, how it was set, evaluation figures).
A model without them still runs; its answers say the guard is unavailable.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from threadpoolctl import ThreadpoolController

from .layout import GUARD_ARRAYS, GUARD_JSON
GUARD_VERSION = "mahalanobis-l2sqrt-v1"  # changes whenever `features` or the score changes
UNAVAILABLE = ("this model has no out-of-scope guard statistics (guard.safetensors + guard.json); "
               "fit them with `python -m train.fit_guard --model <folder>`")


def features(embedding: np.ndarray) -> np.ndarray:
    """Pooled backbone embedding (B, D) → the guard's feature space: sqrt, then unit length."""
    root = np.sqrt(np.clip(np.asarray(embedding, dtype=np.float64), 0.0, None))
    norm = np.linalg.norm(root, axis=1, keepdims=True)
    return root / np.maximum(norm, 1e-12)  # an all-zero embedding stays at the origin: far from the mean


@functools.cache
def _blas() -> ThreadpoolController:
    """The process's BLAS libraries (NumPy's OpenBLAS), found once: scanning them costs milliseconds."""
    return ThreadpoolController()


@dataclass(frozen=True)
class Guard:
    # float32, as stored: half the bytes a score reads from memory than float64, and distances of a few
    # hundred need no more digits than float32 holds. Fitting and serving score with the same arrays.
    mean: np.ndarray  # (D,)
    precision: np.ndarray  # (D, D)
    threshold: float  # scores above it are out of scope

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", np.asarray(self.mean, dtype=np.float32))
        object.__setattr__(self, "precision", np.asarray(self.precision, dtype=np.float32))

    def score(self, embedding: np.ndarray) -> np.ndarray:
        """(B, D) pooled embeddings → (B,) squared Mahalanobis distances (bigger = less like training)."""
        centred = (features(embedding) - self.mean).astype(np.float32)
        # BLAS, not einsum (far faster), but on one thread: the product is small, and OpenBLAS's worker threads
        # keep spinning after a call, which on a 2-core Space takes a core from the onnxruntime run of the next
        # request (bench/inference.py: Predictor / bare session at batch 1).
        with _blas().limit(limits=1, user_api="blas"):
            product = centred @ self.precision
        return (product * centred).sum(axis=1, dtype=np.float64)

    def in_distribution(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores) <= self.threshold

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
                             "refit it with `python -m train.fit_guard`.")
        tensors = load_file(str(arrays))
        mean, precision = tensors["mean"], tensors["precision"]
        if precision.shape != (mean.size, mean.size):
            raise ValueError(f"{arrays}: precision {precision.shape} does not match mean ({mean.size},).")
        return cls(mean=mean, precision=precision, threshold=float(meta["threshold"]))

    def save(self, folder: str | Path, info: dict) -> None:
        """Write both files; `info` (how the threshold was set, figures) goes into guard.json."""
        from safetensors.numpy import save_file

        folder = Path(folder)
        save_file({"mean": self.mean.astype(np.float32), "precision": self.precision.astype(np.float32)},
                  str(folder / GUARD_ARRAYS), metadata={"version": GUARD_VERSION})
        payload = {"version": GUARD_VERSION, "threshold": self.threshold, **info}
        (folder / GUARD_JSON).write_text(json.dumps(payload, indent=1) + "\n")
