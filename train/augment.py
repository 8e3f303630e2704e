"""Training augmentation (albumentations 2.x), applied between `inference.image.prepare` and `to_tensor`.

`prepare` (orientation, RGB, resize + centre crop) and `to_tensor` (normalisation) are the eval
transform the Space uses, so every deterministic step is shared and only the random part lives here.

"strong" is the set of the 1st-place SIIM-ISIC 2020 solution (Ha, Liu & Liu, arXiv:2010.05351; their
public code's `get_transforms`), written with the 2.x API: dihedral flips (lesions have no canonical
orientation), brightness/contrast (camera exposure), blur or noise (focus, sensor), optical/grid/elastic
distortion (skin stretch, lens), CLAHE, hue/saturation (white balance differs between clinics), a small
affine (framing), and one large cut-out hole (hair, rulers, ink marks hide parts of lesions).
"light" keeps the flips and colour jitter only: cheap enough for the 2-core CPU run.
Metadata dropout (fields blanked to "unknown") is done by the Dataset, seeded with the same generator.
"""

from __future__ import annotations

import albumentations as A
import cv2


def build(kind: str, image_size: int) -> A.Compose | None:
    """The random training transform for uint8 (size, size, 3) arrays; None for kind 'none'."""
    if kind == "none":
        return None
    flips = [A.Transpose(p=0.5), A.VerticalFlip(p=0.5), A.HorizontalFlip(p=0.5)]
    colour = [
        A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.75),
        A.HueSaturationValue(hue_shift_limit=10, sat_shift_limit=20, val_shift_limit=10, p=0.5),
    ]
    if kind == "light":
        return A.Compose(flips + colour)
    if kind != "strong":
        raise ValueError(f"augment: unknown kind {kind!r}")
    # 1st place: GaussNoise(var_limit=(5, 30)) on 0-255 pixels = std 2.2-5.5 levels = 0.009-0.021 of the range.
    blur_or_noise = A.OneOf([
        A.MotionBlur(blur_limit=5), A.MedianBlur(blur_limit=5), A.GaussianBlur(blur_limit=5),
        A.GaussNoise(std_range=(0.009, 0.021)),
    ], p=0.7)
    # ElasticTransform(alpha=3) with the default sigma=50 moves pixels by well under one pixel; the exact
    # version smooths the field with a 50-sigma Gaussian, while `approximate` and `same_dxdy` give the same
    # sub-pixel effect several times cheaper (bench/training.py times each step: `transform_costs`).
    distortion = A.OneOf([
        A.OpticalDistortion(distort_limit=1.0), A.GridDistortion(num_steps=5, distort_limit=1.0),
        A.ElasticTransform(alpha=3, approximate=True, same_dxdy=True),
    ], p=0.7)
    # 1st place: ShiftScaleRotate(shift 0.1, scale 0.1, rotate 15, constant border, p=0.85); Cutout of one
    # hole 0.375 x the side (p=0.7). Affine and CoarseDropout are their 2.x replacements.
    affine = A.Affine(translate_percent=(-0.1, 0.1), scale=(0.9, 1.1), rotate=(-15, 15),
                      border_mode=cv2.BORDER_CONSTANT, fill=0, p=0.85)
    cutout = A.CoarseDropout(num_holes_range=(1, 1), hole_height_range=(0.375, 0.375),
                             hole_width_range=(0.375, 0.375), fill=0, p=0.7)
    return A.Compose(flips + [colour[0], blur_or_noise, distortion, A.CLAHE(clip_limit=4.0, p=0.7), colour[1],
                              affine, cutout])
