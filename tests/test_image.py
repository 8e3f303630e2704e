"""The eval transform and safe image opening, on real images and on awkward files built here."""

import io
import struct
import time
import zlib

import numpy as np
import pytest
import simplejpeg
from PIL import Image

from inference.image import (INCOMPLETE, MAX_PIXELS, MAX_PIXELS_FULL_DECODE, ImageError, eval_transform, open_image,
                             prepare)


def _png_bomb(side: int) -> bytes:
    """A valid PNG header declaring side×side pixels, with a few KB of compressed zeros."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit greyscale
    rows = zlib.compress(b"\x00" * (side + 1) * 64, 9)  # only the first rows; enough to be a real stream
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def _encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def test_real_images_become_normalised_square_inputs(isic_rows, ham_rows):
    for path in (isic_rows.path[0], ham_rows.path[0]):  # 256×256 and 200×150
        x = eval_transform(open_image(path), 96, [0.5] * 3, [0.5] * 3)
        assert x.shape == (3, 96, 96) and x.dtype == np.float32 and x.flags.c_contiguous
        assert -1.0 <= x.min() < x.max() <= 1.0


def test_prepare_centre_crops_instead_of_squashing():
    wide = Image.new("RGB", (400, 300), "white")
    wide.paste((255, 0, 0), (0, 0, 50, 300))  # red strip at the far left is cropped away
    out = prepare(wide, 60)
    assert out.shape == (60, 60, 3) and (out[:, :, 1] > 200).all()


def _resize_then_crop(image: np.ndarray, size: int) -> np.ndarray:
    """The definition `prepare` implements: resize the whole image so the shorter side is `size` (area filter
    shrinking, bicubic enlarging), then take the centre square."""
    import cv2

    height, width = image.shape[:2]
    scale = size / min(width, height)
    w, h = max(size, round(width * scale)), max(size, round(height * scale))
    left, top = (w - size) // 2, (h - size) // 2
    method = cv2.INTER_AREA if w < width else cv2.INTER_CUBIC
    return cv2.resize(image, (w, h), interpolation=method)[top:top + size, left:left + size]


def test_prepare_gives_the_pixels_of_resize_then_crop(isic_rows, ham_rows):
    images = [open_image(p) for p in list(isic_rows.path[:5]) + list(ham_rows.path[:5])]  # 256² and 200×150
    for image in images:
        for size in (96, 128, 224, 384):
            out = prepare(image, size)
            assert out.flags.writeable and out.flags.c_contiguous and out.dtype == np.uint8
            assert np.array_equal(out, _resize_then_crop(image, size)), (image.shape, size)
    # an image already at the size is not resampled: the JPEG's own pixels
    assert np.array_equal(prepare(images[0], 256), np.asarray(images[0]))
    # shrinking averages pixel areas: a one-pixel checkerboard becomes flat grey, not a moiré
    board = ((np.indices((300, 400)).sum(axis=0) % 2) * 255).astype(np.uint8)
    board = Image.fromarray(np.dstack([board] * 3))
    assert np.abs(prepare(board, 150).astype(int) - 128).max() <= 1  # 2x: each output pixel is 2 white + 2 black
    assert np.abs(prepare(board, 100).astype(int) - 128).max() <= 15  # 3x: 4 or 5 of 9 white (sampling: 0 or 255)


def test_big_jpegs_are_decoded_at_a_reduced_scale_with_the_same_pixels(isic_rows):
    big = Image.open(isic_rows.path[0]).resize((4000, 3000), Image.Resampling.BICUBIC)  # a 12 MP upload
    data = _encode(big, "JPEG", quality=92)
    assert open_image(data, min_side=224).shape == (750, 1000, 3)  # 1/4: the largest keeping both sides ≥ 2 × 224
    assert open_image(data, min_side=128).shape == (375, 500, 3)
    assert open_image(data).shape == (3000, 4000, 3)
    small = _encode(Image.open(isic_rows.path[0]), "JPEG")  # 256²: no reduction keeps 2 × 128
    assert open_image(small, min_side=128).shape == (256, 256, 3)
    for size in (128, 224, 384):
        diff = np.abs(prepare(open_image(data, min_side=size), size).astype(int) - prepare(open_image(data), size))
        # the mean is what matters; one pixel in the first image, at 128 px, is 8 levels off
        assert diff.max() <= 10 and np.percentile(diff, 99.9) <= 2, (size, diff.max())
        assert diff.mean() < 0.3, (size, diff.mean())


def test_decompression_bomb_is_refused_before_decoding():
    data = _png_bomb(30_000)
    assert len(data) < 20_000
    start = time.perf_counter()
    with pytest.raises(ImageError, match="megapixels"):
        open_image(data)
    assert time.perf_counter() - start < 1.0  # 900 MP were never decoded
    assert 30_000 * 30_000 > MAX_PIXELS


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"", "empty"),
        (b"hello, this is text named .jpg\n", "not an image"),
        (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "not an image"),
        (b"%PDF-1.4\n1 0 obj<<>>endobj\n", "not an image"),
    ],
)
def test_non_images_are_refused(payload, message):
    with pytest.raises(ImageError, match=message):
        open_image(payload)


def test_empty_and_truncated_files(tmp_path, isic_rows):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        open_image(empty)
    data = open(isic_rows.path[0], "rb").read()
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageError, match="damaged or truncated"):
        open_image(truncated)


def test_a_cut_header_and_a_cut_body_get_one_plain_sentence(isic_rows):
    data = open(isic_rows.path[0], "rb").read()
    for cut in (600, 2000, len(data) // 3):  # inside the header ("Truncated File Read" before), then the pixels
        with pytest.raises(ImageError) as err:
            open_image(data[:cut], min_side=160)
        assert str(err.value) == INCOMPLETE, cut


def test_formats_without_reduced_decoding_have_a_lower_pixel_cap():
    """The refusal names the format's own limit, also past Pillow's cap, where the header's size is all we have."""
    def png(width: int, height: int) -> bytes:
        return _encode(Image.new("RGB", (width, height), (200, 150, 120)), "PNG")

    big = png(6000, 6000)
    start = time.perf_counter()
    with pytest.raises(ImageError, match="6000×6000 pixels; a PNG file is limited to 12.5 megapixels"):
        open_image(big)
    assert time.perf_counter() - start < 0.5 and len(big) < 200_000  # refused from the header, never decoded
    assert 6000 * 6000 < MAX_PIXELS and 4000 * 3000 <= MAX_PIXELS_FULL_DECODE
    assert open_image(png(4000, 3000)).shape == (3000, 4000, 3)  # a phone-sized PNG still works
    assert open_image(png(4000, 3000), min_side=160).shape == (375, 500, 3)  # box-reduced by 1/8 right away
    assert open_image(np.zeros((4000, 4000, 3), np.uint8)).shape == (4000, 4000, 3)  # arrays are already decoded
    with pytest.raises(ImageError, match="900 megapixels; a PNG file is limited to 12.5 megapixels"):
        open_image(_png_header(30000, 30000))  # over Pillow's own cap (issue 30: told the JPEG limit before)
    with pytest.raises(ImageError, match=r"45000×1000 pixels; the limit is 40 megapixels\.$"):
        open_image(_encode(Image.new("RGB", (45000, 1000)), "JPEG"))


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares width × height and holds no pixels (what a decompression-bomb upload looks like)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def test_tiny_image_is_refused():
    with pytest.raises(ImageError, match="at least"):
        open_image(_encode(Image.new("RGB", (1, 1)), "PNG"))


def test_every_mode_becomes_rgb(isic_rows):
    rgb = Image.open(isic_rows.path[0]).convert("RGB")
    grey16 = Image.fromarray((np.asarray(rgb.convert("L"), dtype=np.uint16) * 257))
    assert grey16.mode.startswith("I;16")
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE)
    palette.info["transparency"] = 0
    cases = {
        "L": _encode(rgb.convert("L"), "PNG"),
        "I;16": _encode(grey16, "PNG"),
        "CMYK": _encode(rgb.convert("CMYK"), "JPEG"),
        "P+transparency": _encode(palette, "PNG", transparency=0),
        "RGBA": _encode(rgb.convert("RGBA"), "PNG"),
        "WEBP": _encode(rgb, "WEBP"),
        "BMP": _encode(rgb, "BMP"),
    }
    for name, data in cases.items():
        image = open_image(data)
        assert image.dtype == np.uint8 and image.shape == (rgb.height, rgb.width, 3), name
    # 16-bit greyscale keeps its contrast instead of clipping to white
    grey = np.asarray(open_image(cases["I;16"]))[..., 0].astype(int)
    assert abs(grey.mean() - np.asarray(rgb.convert("L")).mean()) < 2


def test_animation_and_multipage_use_the_first_frame(isic_rows):
    first = Image.open(isic_rows.path[0]).convert("RGB")
    second = Image.open(isic_rows.path[1]).convert("RGB")
    tiff = _encode(first, "TIFF", save_all=True, append_images=[second])
    assert np.array_equal(np.asarray(open_image(tiff)), np.asarray(first))
    gif = _encode(first.quantize(), "GIF", save_all=True, append_images=[second.quantize()])
    assert np.array_equal(np.asarray(open_image(gif)), np.asarray(first.quantize().convert("RGB")))


def test_exif_orientation_is_applied(isic_rows):
    upright = Image.open(isic_rows.path[0]).convert("RGB").crop((0, 0, 256, 192))
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # how a camera stores a portrait shot
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    opened = open_image(_encode(stored, "PNG", exif=exif))
    assert opened.shape == (upright.height, upright.width, 3)
    assert np.abs(np.asarray(opened, dtype=int) - np.asarray(upright, dtype=int)).mean() < 1


def _pillow_open(data: bytes, min_side: int | None = None) -> np.ndarray:
    """What open_image gave before simplejpeg: Pillow's decode (draft-reduced), EXIF-transposed, as RGB."""
    from PIL import ImageOps

    image = Image.open(io.BytesIO(data))
    if min_side is not None:
        image.draft("RGB", (2 * min_side, 2 * min_side))
    return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


def test_jpegs_decode_to_pillows_exact_pixels(isic_rows, ham_rows, monkeypatch):
    """The simplejpeg path changes the speed, never the pixels: the eval transform the model was trained and
    validated with stays what it was, for every kind of JPEG a user or the datasets send."""
    rgb = Image.open(isic_rows.path[0]).convert("RGB")
    big = rgb.resize((1200, 900), Image.Resampling.BICUBIC)

    def oriented(orientation: int) -> bytes:  # 6 is a portrait phone shot stored on its side; 1-8 all occur
        exif = Image.Exif()
        exif[0x0112] = orientation
        return _encode(big.crop((0, 0, 1200, 700)), "JPEG", exif=exif)

    cases = {f"real {i}": open(p, "rb").read() for i, p in enumerate([*isic_rows.path[:3], *ham_rows.path[:3]])}
    cases.update({
        "big": _encode(big, "JPEG", quality=90),
        **{f"EXIF orientation {o}": oriented(o) for o in range(1, 9)},
        "progressive": _encode(rgb, "JPEG", progressive=True),
        "greyscale": _encode(rgb.convert("L"), "JPEG"),
        "4:2:0 odd size": _encode(rgb.crop((0, 0, 251, 199)), "JPEG", subsampling=2),
        "MPO (phone stereo)": _encode(rgb, "MPO", save_all=True, append_images=[rgb.rotate(90)]),
        "CMYK (Pillow's path)": _encode(rgb.convert("CMYK"), "JPEG"),
    })
    decoded_by_simplejpeg = []
    original = simplejpeg.decode_jpeg

    def counting(*args, **kwargs):
        decoded_by_simplejpeg.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(simplejpeg, "decode_jpeg", counting)
    for name, data in cases.items():
        for min_side in (None, 96, 224):
            before = len(decoded_by_simplejpeg)
            assert np.array_equal(np.asarray(open_image(data, min_side=min_side)), _pillow_open(data, min_side)), \
                (name, min_side)
            # the fast path really ran (the comparison alone would pass if every file fell back to Pillow)
            assert len(decoded_by_simplejpeg) == before + (not name.startswith("CMYK")), (name, min_side)
    assert open_image(cases["EXIF orientation 6"]).shape == (1200, 700, 3)


def test_big_pngs_are_box_reduced_before_copying_with_the_same_pixels(isic_rows):
    """A PNG (no reduced decode) is averaged down by libjpeg's factor right after decoding: the model's input
    differs from a full decode's by under 0.3 levels on average, like the reduced JPEG decode."""
    from PIL import ImageOps

    big = Image.open(isic_rows.path[0]).convert("RGB").resize((1400, 1050), Image.Resampling.BICUBIC)
    data = _encode(big, "PNG")
    assert open_image(data, min_side=160).shape == (525, 700, 3)  # 1/2: the largest keeping both sides ≥ 320
    assert open_image(data, min_side=96).shape == (263, 350, 3)  # 1/4, the odd remainder row averaged on its own
    assert open_image(data).shape == (1050, 1400, 3)
    for size in (160, 224):
        diff = np.abs(prepare(open_image(data, min_side=size), size).astype(int) - prepare(open_image(data), size))
        assert diff.mean() < 0.3 and diff.max() <= 12, (size, diff.mean(), diff.max())
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation still applies to the reduced pixels
    turned = open_image(_encode(big, "PNG", exif=exif), min_side=160)
    assert np.array_equal(turned, np.ascontiguousarray(np.rot90(open_image(data, min_side=160), -1)))
    assert np.array_equal(np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(_encode(big, "PNG", exif=exif))))),
                          open_image(_encode(big, "PNG", exif=exif)))
