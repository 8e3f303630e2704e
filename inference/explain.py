"""Grad-CAM of the melanoma logit, in NumPy: which parts of the image raised the melanoma probability.

Why no autograd is needed (and the map is exact, not an approximation): the model's head is linear in
the average-pooled feature map. With A (C, h, w) the backbone's last feature map and W the head's
weight row for the target class, the logit is

    logit = Σ_c W[c] · mean_ij A[c, i, j]  +  (metadata terms and bias, which do not depend on A)

so d(logit)/dA[c, i, j] = W[c] / (h·w) for every position, Grad-CAM's channel weights (the gradient
averaged over positions) are W[c] / (h·w), and the map relu(Σ_c W[c] / (h·w) · A[c]) is, once divided
by its maximum, relu(Σ_c W[c] · A[c]) normalised. `train.onnx_export` refuses to export a head for which
this does not hold (other pooling, a non-linear head), and a test in the training environment compares
this map with torch autograd's Grad-CAM on real images.

The feature map is the ONNX graph's `features` output, from the same single run as the logits.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from .image import ImageInput, open_image, prepare, resize_shorter, to_input
from .metadata import encode, normalize
from .onnx_backend import FEATURES

# A small perceptual colour map (the "inferno" anchors: black → purple → red → orange → pale yellow),
# interpolated linearly; matplotlib is not a Space dependency.
_ANCHORS = np.array(
    [[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66], [245, 125, 21], [250, 193, 39],
     [252, 255, 164]],
    dtype=np.float32,
)


def grad_cam(features: np.ndarray, weights: np.ndarray, size: int) -> np.ndarray:
    """Grad-CAM heat map from one image's feature map (C, h, w) and the target class's head weights over
    those C features: float32 (size, size) in [0, 1]. Bilinear upsampling with pixel centres aligned
    (torch's `align_corners=False`). An all-zero map means no region raised the logit."""
    cam = np.maximum(np.tensordot(weights.astype(np.float32), features.astype(np.float32), axes=(0, 0)), 0.0)
    cam = cv2.resize(cam, (size, size), interpolation=cv2.INTER_LINEAR)
    cam = np.nan_to_num(cam, nan=0.0, posinf=0.0, neginf=0.0).clip(min=0.0)
    top = float(cam.max())
    return (cam / top if top > 0 else np.zeros_like(cam)).astype(np.float32)


def colorize(heat: np.ndarray) -> np.ndarray:
    """Heat in [0, 1], shape (H, W) → uint8 RGB (H, W, 3) through the built-in colour map."""
    heat = np.clip(np.nan_to_num(np.asarray(heat, dtype=np.float32)), 0.0, 1.0)
    position = heat * (len(_ANCHORS) - 1)
    low = np.floor(position).astype(np.int64).clip(0, len(_ANCHORS) - 2)
    frac = (position - low)[..., None]
    return np.round(_ANCHORS[low] * (1 - frac) + _ANCHORS[low + 1] * frac).astype(np.uint8)


def overlay(rgb: np.ndarray, heat: np.ndarray, strength: float = 0.65) -> np.ndarray:
    """Blend the coloured heat map onto `rgb` (uint8 (H, W, 3)), more opaque where the heat is higher.

    Cold regions keep the original pixels, so the lesion stays readable under the explanation.
    """
    alpha = (strength * np.clip(np.asarray(heat, dtype=np.float32), 0.0, 1.0))[..., None]
    blended = rgb.astype(np.float32) * (1 - alpha) + colorize(heat).astype(np.float32) * alpha
    return np.round(blended).clip(0, 255).astype(np.uint8)


def frame(opened: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """The whole upload with the heat map over the centre square the model saw: the upload resized so its
    shorter side is the heat map's side, the cut-off sides dimmed, and the square outlined in white (a
    square upload is all square: nothing is dimmed or outlined)."""
    size = heat.shape[0]
    whole = resize_shorter(opened, size)
    height, width = whole.shape[:2]
    left, top = (width - size) // 2, (height - size) // 2
    shown = np.round(whole.astype(np.float32) * 0.4).astype(np.uint8)  # dimmed: the model did not see this
    shown[top:top + size, left:left + size] = overlay(whole[top:top + size, left:left + size], heat)
    if (width, height) != (size, size):
        line = max(1, size // 192)
        box = shown[max(0, top - line):top + size + line, max(0, left - line):left + size + line]
        box[:line], box[-line:], box[:, :line], box[:, -line:] = 255, 255, 255, 255
    return shown


def explain(predictor: Any, image: ImageInput, age: Any = None, sex: Any = None, site: Any = None,
            target: str = "mel", display_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM of `target` (default melanoma) for one input, as the Predictor would see it.

    Returns (the whole upload with the heat map over the model's centre crop (`frame`), uint8 (D, D·w/h, 3)
    for a landscape upload; heat float32 (D, D) in [0, 1] over the crop), where D is `display_size` (the
    same crop, resampled: sharper than enlarging a small overlay) or else the model's input size. Raises
    ValueError / `ImageError` for bad input, like `Predictor.predict`.
    """
    if predictor.head is None:
        raise ValueError("This model was loaded without its head weights, so it cannot explain.")
    c = predictor.config
    meta = encode(normalize(age, sex, site))[None]
    size = display_size or c.image_size
    # Decoded for the larger of the two sizes, so the overlay stays sharp; for a big JPEG the model's crop
    # then comes from a finer DCT scale than `predict` used: a few levels per pixel at most.
    opened = open_image(image, min_side=max(size, c.image_size))
    pixels = to_input(prepare(opened, c.image_size, c.colour_constancy), c.mean, c.std)[None]
    (features,) = predictor.session.run(pixels, meta, (FEATURES,))
    weights = predictor.head[c.classes.index(target), :features.shape[1]]  # the image part of the head row
    heat = grad_cam(features[0], weights, size)
    return frame(opened, heat), heat

