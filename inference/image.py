"""Opening images safely and the ONE eval transform used by the Predictor and training validation.

`prepare` is split from `to_input` so training can put its random augmentation between the two and
still share every deterministic step (orientation, colour mode, resize, crop, normalisation) with the
Space: train and serve cannot drift. Training normalises whole uint8 batches on its device
(`train.epoch.batch_to_input`) with the same `scale_shift` as `to_input`.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import BinaryIO, Union

import cv2
import numpy as np
import simplejpeg
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

ImageInput = Union[str, os.PathLike, bytes, BinaryIO, Image.Image, np.ndarray]

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")  # JPEG includes phones' MPO files
# Our own cap, far below Pillow's (~179 MP, and only a warning below that): a dermoscopic photo is a
# few MP, while a 12 KB PNG can declare 100 MP and make the server decode all of them.
MAX_PIXELS = 40_000_000
# Formats libjpeg cannot decode at a reduced scale (PNG, WebP, ...) cost their full size in time and memory
# whatever the model needs, and compress flat pictures to almost nothing: a 35 KB PNG can declare 36 MP.
# A phone photo is 12 MP; a PNG or WebP upload above this is refused from its header.
MAX_PIXELS_FULL_DECODE = 12_500_000
INCOMPLETE = "This file is not a complete image: it is damaged or truncated. Upload the whole file again."
MIN_SIDE = 8
# EXIF orientation → what displays an (H, W, C) array upright: Pillow's table in ImageOps.exif_transpose
# (flip left-right, rotate 180, flip top-bottom, transpose, rotate 270, transverse, rotate 90), as array views.
_UPRIGHT = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1], 5: lambda a: a.transpose(1, 0, 2),
            6: lambda a: np.rot90(a, -1), 7: lambda a: a[::-1, ::-1].transpose(1, 0, 2), 8: lambda a: np.rot90(a, 1)}


class ImageError(ValueError):
    """An input that is not an image we can assess; the message is meant for the person who sent it."""


def open_image(source: ImageInput, min_side: int | None = None) -> np.ndarray:
    """Open `source` as RGB pixels: a C-contiguous uint8 array (H, W, 3), refusing anything outside the
    allow-list or the pixel cap.

    Format and size come from the header, before any pixel is decoded. EXIF orientation is applied,
    the first frame of animations/multi-page files is used, and every mode (L, I;16, CMYK, P with
    transparency, RGBA, ...) becomes 8-bit RGB.

    `min_side`: the caller will shrink the image to this shorter side, so a JPEG at least four times that
    size is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling), stopping while the shorter side is
    still ≥ 2 × min_side: the final area-filter resize then still does the filtering, so the pixels differ
    from a full decode's by under 0.3 levels on average (tests/test_image.py), and a 12 MP phone photo
    decodes in a fraction of the time (bench/inference.py). Other formats are decoded whole (their decoders
    cannot scale) and box-averaged by the same factor before any copy is made, so a 12 MP PNG costs one
    full-size buffer, not four (bench/memory.py). Training images (ISIC 256 px, HAM 200×150 here) are never
    reduced.

    Colour and greyscale JPEGs (every training image, most uploads) are decoded by simplejpeg straight
    into an array: the same libjpeg-turbo settings as Pillow, so the pixels are bit-identical
    (tests/test_image.py), at about half Pillow's cost, and without Pillow's RGB → RGBX → RGB copies,
    which at 512 px cost as much as the decode. Anything else (PNG, CMYK, ...) takes Pillow's path.
    """
    image, data = _header(source)
    width, height = image.size
    fmt = image.format if data is not None else None  # arrays and PIL images were decoded already: no format cap
    if width * height > pixel_limit(fmt):
        raise ImageError(too_large(f"{width}×{height} pixels", fmt))
    if min(width, height) < MIN_SIDE:
        raise ImageError(f"The image is {width}×{height} pixels; it must be at least {MIN_SIDE} pixels a side.")
    if data is not None and image.format in ("JPEG", "MPO") and image.mode in ("RGB", "L"):
        pixels = _decode_jpeg(data, image, min_side)
        if pixels is not None:
            return pixels
    return _decode_with_pillow(image, data is not None, min_side)


def _header(source: ImageInput) -> tuple[Image.Image, bytes | None]:
    """(`source` as a PIL image whose header alone has been read, its encoded bytes or None for an array or a
    caller's PIL image). A missing, empty, foreign or truncated file is an ImageError that says so."""
    if isinstance(source, Image.Image):
        return source, None
    if isinstance(source, np.ndarray):
        return Image.fromarray(source), None
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise ImageError(f"No image file at {path.name!r}.")
        data = path.read_bytes()  # one read: the header check and the decoder share the bytes
    else:
        data = source if isinstance(source, bytes) else source.read()
    if not data:
        raise ImageError("The file is empty (0 bytes).")
    try:
        return Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS), data
    except UnidentifiedImageError:
        raise ImageError("This file is not an image we can read; upload a JPEG, PNG, WebP, BMP, TIFF or GIF.") from None
    except Image.DecompressionBombError as err:  # over Pillow's own cap: the header's size is in the message
        declared = re.search(r"\((\d+) pixels\)", str(err))
        size = f"{int(declared[1]) / 1e6:,.0f} megapixels" if declared else "too large"
        raise ImageError(too_large(size, _format_of(data))) from None
    except (OSError, SyntaxError, ValueError):  # a header cut short ("Truncated File Read" and the like)
        raise ImageError(INCOMPLETE) from None


def _decode_with_pillow(image: Image.Image, encoded: bool, min_side: int | None) -> np.ndarray:
    """Pillow's decode of anything the JPEG path did not take: first frame, any mode to RGB, EXIF orientation
    (the file's for an `encoded` one, applied to the array; a caller's PIL image keeps Pillow's own), and formats
    without a reduced decode box-averaged by `_reduction`'s factor before any copy is made."""
    try:
        if getattr(image, "n_frames", 1) > 1:
            image.seek(0)
        if min_side is not None and image.format in ("JPEG", "MPO"):
            image.draft("RGB", (2 * min_side, 2 * min_side))  # no-op unless a 1/2+ reduction keeps both ≥ 2×
        image.load()
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1) if encoded else 1
        if not encoded:
            image = ImageOps.exif_transpose(image)
        rgb = to_rgb(image)
        factor = _reduction(*rgb.size, min_side) if image.format not in ("JPEG", "MPO") else 1
        if factor > 1:  # a big PNG, WebP, ...: box-average it now, so no full-size copy is made below
            rgb = rgb.reduce(factor)
        pixels = np.array(rgb)  # writable, like the JPEG path's
        upright = _UPRIGHT.get(orientation)
        return pixels if upright is None else np.ascontiguousarray(upright(pixels))
    except (OSError, SyntaxError, ValueError):  # truncated or corrupt data; the library's words help nobody
        raise ImageError(INCOMPLETE) from None


def _reduction(width: int, height: int, min_side: int | None) -> int:
    """libjpeg's (and Pillow's `draft`) rule for a reduced decode: the largest of 8, 4, 2 that keeps both sides
    ≥ 2 × min_side (the final area-filter resize then still does the filtering), else 1."""
    if min_side is None:
        return 1
    fits = min(width // (2 * min_side), height // (2 * min_side))
    return next((s for s in (8, 4, 2) if fits >= s), 1)


def pixel_limit(fmt: str | None) -> int:
    """The most pixels an upload of this format may declare (None: pixels already decoded, e.g. an array)."""
    return MAX_PIXELS if fmt in (None, "JPEG", "MPO") else MAX_PIXELS_FULL_DECODE


def too_large(size: str, fmt: str | None) -> str:
    """The refusal of an image over its format's limit; `size` says how large it is ("30000×30000 pixels")."""
    if pixel_limit(fmt) == MAX_PIXELS:
        return f"The image is {size}; the limit is {MAX_PIXELS // 1_000_000} megapixels."
    return (f"The image is {size}; a {fmt} file is limited to {MAX_PIXELS_FULL_DECODE / 1e6:.1f} megapixels "
            f"(JPEG: {MAX_PIXELS // 1_000_000}). Upload a smaller copy or a JPEG.")


def _format_of(data: bytes) -> str | None:
    """The allowed format whose signature `data` starts with (Pillow's own checks), or None."""
    Image.init()
    return next((f for f in ALLOWED_FORMATS if f in Image.OPEN and Image.OPEN[f][1] and Image.OPEN[f][1](data[:16])),
                None)


def _decode_jpeg(data: bytes, header: Image.Image, min_side: int | None) -> np.ndarray | None:
    """`data` decoded by simplejpeg at the scale Pillow's `draft("RGB", (2 × min_side,) * 2)` picks, EXIF
    orientation applied; None when libjpeg-turbo objects (the caller's Pillow path then decides)."""
    width, height = header.size
    scale = _reduction(width, height, min_side)
    try:  # min_* = the scaled size itself selects exactly 1/scale (libjpeg rounds scaled sides up)
        pixels = simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=-(-width // scale),
                                        min_height=-(-height // scale))
    except ValueError:
        return None
    upright = _UPRIGHT.get(header.getexif().get(ExifTags.Base.Orientation, 1))
    return pixels if upright is None else np.ascontiguousarray(upright(pixels))


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode → 8-bit RGB. Transparent areas become white; 16/32-bit greyscale is rescaled."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(array.max()), 1.0)
        return Image.fromarray(np.clip(array / top * 255.0, 0, 255).astype(np.uint8)).convert("RGB")
    if image.mode == "P" and "transparency" in image.info or image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def resize_shorter(image: np.ndarray, size: int) -> np.ndarray:
    """Resize so the shorter side is `size` (aspect kept): OpenCV's area filter shrinks (a pixel-area
    average: no aliasing, and cheaper than Pillow's bicubic, which set the pace of the 384 px training
    pipeline) and bicubic enlarges; an image already at the size is returned as it is, not resampled."""
    array = np.asarray(image)  # open_image's array (a PIL RGB image works too)
    height, width = array.shape[:2]
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    if (new_w, new_h) == (width, height):
        return array
    return cv2.resize(array, (new_w, new_h), interpolation=cv2.INTER_AREA if new_w < width else cv2.INTER_CUBIC)


COLOUR_CONSTANCY = ("none", "shades_of_gray")


def shades_of_gray(array: np.ndarray, power: float = 6.0) -> np.ndarray:
    """Shades of Gray colour constancy (Finlayson & Trezzi 2004; p = 6 as in Barata et al. 2015 for
    dermoscopy): estimate the illuminant per channel as the p-norm mean of the pixels and scale each
    channel so that the illuminant becomes grey. Dermatoscopes differ in light and white balance; this
    removes most of that difference before the model sees the image. uint8 (H, W, 3) → uint8 (H, W, 3);
    a grey image is returned unchanged."""
    pixels = array.astype(np.float32) / np.float32(255.0)
    illuminant = np.power(np.mean(np.power(pixels, power), axis=(0, 1)), 1.0 / power)  # (3,)
    norm = float(np.sqrt(np.sum(illuminant ** 2)))
    if norm == 0.0:  # an all-black image: nothing to correct
        return np.ascontiguousarray(array)
    gain = norm / (np.sqrt(3.0) * np.maximum(illuminant, 1e-6))  # unit gain for a grey illuminant
    pixels *= gain.astype(np.float32)
    return (np.clip(pixels, 0.0, 1.0) * np.float32(255.0) + np.float32(0.5)).astype(np.uint8)


def crop(image: np.ndarray, size: int) -> np.ndarray:
    """Resize the shorter side to `size` and centre-crop a square: a fresh uint8 array (size, size, 3).

    A crop, not a squash: lesion shape (asymmetry, border) is a melanoma cue that squashing a 4:3
    HAM10000 photo would distort, and dermoscopy centres the lesion.
    """
    array = np.asarray(image)
    resized = resize_shorter(array, size)
    height, width = resized.shape[:2]
    if (width, height) == (size, size) and resized is not array:
        return resized  # OpenCV's fresh, contiguous square: nothing to crop (saves a copy per image)
    left, top = (width - size) // 2, (height - size) // 2
    return resized[top:top + size, left:left + size].copy()  # contiguous, never the caller's own array


def correct_colour(square: np.ndarray, colour: str) -> np.ndarray:
    """The model's colour correction (`colour`, from its config.json) of a cropped square."""
    if colour not in COLOUR_CONSTANCY:
        raise ValueError(f"colour correction must be one of {', '.join(COLOUR_CONSTANCY)}, got {colour!r}.")
    return shades_of_gray(square) if colour == "shades_of_gray" else square


def prepare(image: np.ndarray, size: int, colour: str = "none") -> np.ndarray:
    """`crop`, then `correct_colour`: uint8 array (size, size, 3). The one preprocessing function of training
    (`train.data.LesionDataset`) and serving (the Predictor, Grad-CAM, the guard's fit)."""
    return correct_colour(crop(image, size), colour)


def scale_shift(mean: list[float], std: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """float32 (3,) arrays with pixel * scale - shift == (pixel / 255 - mean) / std: one formula for serving
    (`to_input`) and training (`train.epoch.batch_to_input`)."""
    scale = np.float32(1.0 / 255.0) / np.asarray(std, dtype=np.float32)
    return scale, np.asarray(mean, dtype=np.float32) * np.float32(255.0) * scale


def to_input(array: np.ndarray, mean: list[float], std: list[float]) -> np.ndarray:
    """One prepared uint8 (H, W, 3) image → the model's float32 (3, H, W) input, normalised with the
    backbone's mean/std. A few single-threaded vector ops: cheap for one image on a busy Space."""
    scale, shift = scale_shift(mean, std)
    chw = np.ascontiguousarray(array.transpose(2, 0, 1), dtype=np.float32)
    chw *= scale[:, None, None]
    chw -= shift[:, None, None]
    return chw


def eval_transform(image: np.ndarray, size: int, mean: list[float], std: list[float],
                   colour: str = "none") -> np.ndarray:
    """The eval transform: open_image's pixels → the model's (3, size, size) float32 input."""
    return to_input(prepare(image, size, colour), mean, std)
