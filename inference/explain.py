"""Grad-CAM of the melanoma logit: which parts of the image raised the melanoma score.

No module hooks: hooks live on the shared model, so two requests explaining at once would see each
other's activations. Instead the backbone's feature map is computed once, detached, and made a leaf
that requires grad; the head (pooling + metadata + linear) runs on it and `torch.autograd.grad` gives
d(logit)/d(features) for this call only. Nothing on the model changes (no `.grad` is written), so one
model can explain in many threads at once, and the backbone runs without building a graph.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .image import ImageInput, open_image, prepare, to_tensor
from .metadata import encode, normalize
from .model import MelanomaModel

# A small perceptual colour map (the "inferno" anchors: black → purple → red → orange → pale yellow),
# interpolated linearly; matplotlib is not a Space dependency.
_ANCHORS = np.array(
    [[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66], [245, 125, 21], [250, 193, 39],
     [252, 255, 164]],
    dtype=np.float32,
)


def grad_cam(model: MelanomaModel, image: torch.Tensor, meta: torch.Tensor, target: int) -> torch.Tensor:
    """Grad-CAM heat map of logit `target` for one image: float32 (H, W) in [0, 1], on the CPU.

    `image` is a normalised (3, H, W) or (1, 3, H, W) tensor, `meta` the encoded metadata (META_DIM,)
    or (1, META_DIM). Works even when the caller is inside `torch.inference_mode()` or `no_grad()`.
    An all-zero map means no region raised the logit (every weighted activation was negative).
    """
    device = next(model.parameters()).device
    image = image.reshape(1, *image.shape[-3:])
    meta = meta.reshape(1, -1)
    with torch.inference_mode(False), torch.enable_grad():
        # Fresh copies: tensors made under inference_mode cannot take part in autograd.
        x = image.detach().clone().to(device)
        m = meta.detach().clone().to(device)
        with torch.no_grad():
            features = model.forward_features(x)
        features = features.detach().clone().requires_grad_(True)
        logit = model.forward_head(features, m)[0, target]
        (grads,) = torch.autograd.grad(logit, features)
        weights = grads.mean(dim=(2, 3), keepdim=True)  # (1, C, 1, 1): importance of each channel
        cam = torch.relu((weights * features).sum(dim=1, keepdim=True)).detach()  # (1, 1, h, w)
    cam = F.interpolate(cam.float(), size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)[0, 0]
    cam = torch.nan_to_num(cam, nan=0.0, posinf=0.0, neginf=0.0).clamp_(min=0.0)
    top = float(cam.max())
    return (cam / top if top > 0 else torch.zeros_like(cam)).cpu()


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


def explain(predictor: Any, image: ImageInput, age: Any = None, sex: Any = None, site: Any = None,
            target: str = "mel", display_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM of `target` (default melanoma) for one input, as the Predictor would see it.

    Returns (overlay uint8 (D, D, 3), heat float32 (D, D) in [0, 1]) on the model's centre crop, where
    D is `display_size` (the same crop, resampled: sharper than enlarging a small overlay) or else
    the model's input size. Raises ValueError / `ImageError` for bad input, like `Predictor.predict`.
    """
    model = predictor.model
    meta = encode(normalize(age, sex, site))
    size = display_size or model.image_size
    # Decoded for the larger of the two sizes, so the overlay stays sharp; for a big JPEG the model's crop
    # then comes from a finer DCT scale than `predict` used: a few levels per pixel at most.
    opened = open_image(image, min_side=max(size, model.image_size))
    heat = grad_cam(model, to_tensor(prepare(opened, model.image_size), model.mean, model.std), meta,
                    model.classes.index(target))
    if size != model.image_size:
        heat = F.interpolate(heat[None, None], size=(size, size), mode="bilinear", align_corners=False)[0, 0]
    heat = heat.clamp(0.0, 1.0).numpy()
    return overlay(prepare(opened, size), heat), heat
