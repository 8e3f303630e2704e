"""Training augmentation, applied between `inference.image.prepare` and `train.epoch.batch_to_input`.

`prepare` (orientation, RGB, resize + centre crop) and the normalisation are the eval transform the Space uses,
so every deterministic step is shared and only the random part lives here. Every kind is a function
`(uint8 (S, S, 3) array, numpy Generator) -> uint8 (S, S, 3) array`; the Dataset seeds the generator by
(seed, epoch, row), so a sample is the same in any worker, process or resumed session. Kinds, cheapest
first (docs/model.md's ablation table measures what each buys; bench/training.py what each costs):

* "none".
* "flips": one of the 8 dihedral symmetries. Lesions have no canonical orientation, and the symmetry is
  a free view of the same pixels.
* "light": flips + colour: brightness, contrast and a gain per channel (white balance differs between
  clinics and cameras) in one lookup table on the uint8 pixels.
* "medium": light + a small affine (framing: rotate ±15°, scale 0.9-1.1, shift ±10 %) and one cut-out
  hole of 0.375 × the side (hair, rulers and ink hide parts of lesions): the cheap geometric half of the
  1st-place set, each with its probability there.
* "device": light + what differs between dermatoscopes rather than lesions (issue 24): framing (a random
  crop of 50-100 % of the area, resized back), the round dark vignette many dermatoscopes leave in the
  corners, a little blur and JPEG re-compression at a random quality. Measured over 8 epochs against
  `flips` (docs/model.md): +0.044 on ISIC 2017 validation, inside its noise, and -0.019 on HAM10000 validation,
  beyond it; not the default.
* "strong": the set of the 1st-place SIIM-ISIC 2020 solution (Ha, Liu & Liu, arXiv:2010.05351; their
  public code's `get_transforms`), written with the albumentations 2.x API: the above plus blur or
  noise, optical/grid/elastic distortion, CLAHE and hue/saturation.
Metadata dropout (fields blanked to "unknown") is done by the Dataset, with the same generator.
"""

from __future__ import annotations

from typing import Callable

import cv2
import numpy as np

Augment = Callable[[np.ndarray, np.random.Generator], np.ndarray]
KINDS = ("none", "flips", "light", "medium", "device", "strong")


_ROTATE = {1: cv2.ROTATE_90_COUNTERCLOCKWISE, 2: cv2.ROTATE_180, 3: cv2.ROTATE_90_CLOCKWISE}  # np.rot90's k


def flips(array: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One of the 8 dihedral views: `np.rot90(array, k % 4)`, mirrored left-right when k >= 4.

    OpenCV writes the view as a contiguous array in one pass; a NumPy view would have to be copied to
    contiguous memory anyway (for the batch), and that strided copy of a transposed view cost more than
    the decode (bench/training.py)."""
    k = int(rng.integers(8))
    out = cv2.rotate(array, _ROTATE[k % 4]) if k % 4 else array
    return cv2.flip(out, 1) if k >= 4 else out


def colour(array: np.ndarray, rng: np.random.Generator, p: float = 0.75) -> np.ndarray:
    """Brightness ±0.2 of the range, contrast ×(0.8-1.2) about mid-grey and a gain of 0.9-1.1 per channel,
    as one (256, 3) lookup table: a table lookup per pixel, whatever the image size."""
    if rng.random() >= p:
        return array
    brightness, contrast = rng.uniform(-0.2, 0.2) * 255, rng.uniform(0.8, 1.2)
    gains = rng.uniform(0.9, 1.1, size=3)
    levels = np.arange(256, dtype=np.float32)[:, None]
    table = np.clip((levels - 127.5) * contrast * gains + 127.5 + brightness, 0, 255).astype(np.uint8)
    return cv2.LUT(np.ascontiguousarray(array), table[:, None, :])


def affine(array: np.ndarray, rng: np.random.Generator, p: float = 0.85) -> np.ndarray:
    """Rotate ±15°, scale 0.9-1.1 and shift ±10 % of the side (1st place: ShiftScaleRotate), black border."""
    if rng.random() >= p:
        return array
    size = array.shape[0]
    matrix = cv2.getRotationMatrix2D((size / 2 - 0.5, size / 2 - 0.5), rng.uniform(-15, 15), rng.uniform(0.9, 1.1))
    matrix[:, 2] += rng.uniform(-0.1, 0.1, size=2) * size
    return cv2.warpAffine(np.ascontiguousarray(array), matrix, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def cutout(array: np.ndarray, rng: np.random.Generator, p: float = 0.7, side: float = 0.375) -> np.ndarray:
    """One black square hole of `side` × the image side, anywhere (1st place: Cutout, one hole)."""
    if rng.random() >= p:
        return array
    size = array.shape[0]
    hole = int(round(side * size))
    top, left = rng.integers(0, size - hole + 1, size=2)
    out = np.array(array)  # a copy: the input may be a read-only view
    out[top:top + hole, left:left + hole] = 0
    return out


def zoom(array: np.ndarray, rng: np.random.Generator, p: float = 0.5, area: tuple = (0.5, 1.0)) -> np.ndarray:
    """A random crop of `area` × the image (aspect 3:4 to 4:3) resized back: framing and magnification differ
    between devices (a random-resized crop that keeps at least half the lesion's field)."""
    if rng.random() >= p:
        return array
    size = array.shape[0]
    share, aspect = rng.uniform(*area), np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    h = min(size, int(round(size * np.sqrt(share / aspect))))
    w = min(size, int(round(size * np.sqrt(share * aspect))))
    top, left = int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1))
    return cv2.resize(np.ascontiguousarray(array[top:top + h, left:left + w]), (size, size),
                      interpolation=cv2.INTER_AREA if h * w > size * size else cv2.INTER_LINEAR)


def vignette(array: np.ndarray, rng: np.random.Generator, p: float = 0.3) -> np.ndarray:
    """The dark round field of a contact dermatoscope: outside a circle of radius 0.42-0.6 × the side about
    a centre shifted by up to 5 %, the pixels fade to near black over 1-3 % of the side (the corners always
    fall outside: a corner is at least 0.64 × the side from the centre)."""
    if rng.random() >= p:
        return array
    size = array.shape[0]
    radius, soft = rng.uniform(0.42, 0.6) * size, rng.uniform(0.01, 0.03) * size
    cy, cx = (0.5 + rng.uniform(-0.05, 0.05, size=2)) * size
    yy, xx = np.ogrid[:size, :size]
    distance = np.sqrt((yy + 0.5 - cy) ** 2 + (xx + 0.5 - cx) ** 2)
    keep = np.clip((radius - distance) / soft, 0.0, 1.0).astype(np.float32)[..., None]
    return (array * keep + rng.uniform(0, 20) * (1 - keep)).astype(np.uint8)


def blur(array: np.ndarray, rng: np.random.Generator, p: float = 0.3) -> np.ndarray:
    """A Gaussian blur of sigma 0.3-1.2 px (focus and optics differ between devices)."""
    if rng.random() >= p:
        return array
    return cv2.GaussianBlur(np.ascontiguousarray(array), (0, 0), rng.uniform(0.3, 1.2))


def jpeg(array: np.ndarray, rng: np.random.Generator, p: float = 0.3) -> np.ndarray:
    """JPEG re-compression at quality 40-95 (archives and uploads re-compress; block artefacts and lost chroma)."""
    if rng.random() >= p:
        return array
    ok, data = cv2.imencode(".jpg", np.ascontiguousarray(array), [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(40, 96))])
    return cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if ok else array


def strong_pipeline(image_size: int):
    """The 1st-place set in albumentations 2.x (imported here only: the other kinds need no albumentations)."""
    import albumentations as A

    # 1st place: GaussNoise(var_limit=(5, 30)) on 0-255 pixels = std 2.2-5.5 levels = 0.009-0.021 of the range.
    blur_or_noise = A.OneOf([
        A.MotionBlur(blur_limit=5), A.MedianBlur(blur_limit=5), A.GaussianBlur(blur_limit=5),
        A.GaussNoise(std_range=(0.009, 0.021)),
    ], p=0.7)
    # ElasticTransform(alpha=3) with the default sigma=50 moves pixels by well under one pixel; `approximate`
    # and `same_dxdy` give the same sub-pixel effect several times cheaper than the exact version.
    distortion = A.OneOf([
        A.OpticalDistortion(distort_limit=1.0), A.GridDistortion(num_steps=5, distort_limit=1.0),
        A.ElasticTransform(alpha=3, approximate=True, same_dxdy=True),
    ], p=0.7)
    # 1st place: ShiftScaleRotate(shift 0.1, scale 0.1, rotate 15, constant border, p=0.85); Cutout of one
    # hole 0.375 x the side (p=0.7). Affine and CoarseDropout are their 2.x replacements.
    return A.Compose([
        A.Transpose(p=0.5), A.VerticalFlip(p=0.5), A.HorizontalFlip(p=0.5),
        A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.75), blur_or_noise, distortion,
        A.CLAHE(clip_limit=4.0, p=0.7),
        A.HueSaturationValue(hue_shift_limit=10, sat_shift_limit=20, val_shift_limit=10, p=0.5),
        A.Affine(translate_percent=(-0.1, 0.1), scale=(0.9, 1.1), rotate=(-15, 15),
                 border_mode=cv2.BORDER_CONSTANT, fill=0, p=0.85),
        A.CoarseDropout(num_holes_range=(1, 1), hole_height_range=(0.375, 0.375),
                        hole_width_range=(0.375, 0.375), fill=0, p=0.7),
    ])


# The kinds made of this file's functions, in the order applied (affine before cut-out: the hole stays square).
STEPS: dict[str, list[Augment]] = {
    "flips": [flips], "light": [flips, colour], "medium": [flips, colour, affine, cutout],
    "device": [flips, zoom, colour, vignette, blur, jpeg],
}


def build(kind: str, image_size: int) -> Augment | None:
    """The random training transform of this kind for uint8 (size, size, 3) arrays; None for 'none'."""
    if kind not in KINDS:
        raise ValueError(f"augment: unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
    if kind == "none":
        return None
    if kind == "strong":
        pipeline = strong_pipeline(image_size)

        def strong(array: np.ndarray, rng: np.random.Generator) -> np.ndarray:
            pipeline.set_random_seed(int(rng.integers(2**31)))
            return pipeline(image=np.ascontiguousarray(array))["image"]

        return strong
    steps = STEPS[kind]

    def augment(array: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        for step in steps:
            array = step(array, rng)
        return array

    return augment
