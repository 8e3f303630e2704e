"""Measure the out-of-scope guard: `python -m train.fit_guard --model output/default --evaluate`.

* Out of scope: every still image scikit-image, matplotlib and scikit-learn ship that loads offline,
  and generated flat, gradient, noise, text and screenshot-like images (seeded).
* Close-ups of skin that is not a lesion under a dermatoscope: crops of the faces in those packaged
  portraits (no package ships skin close-ups), reported apart: flagging them is desirable, not required.
* Dermoscopic false alarms on held-out images: the guard's threshold is set on the validation
  rows, so flagging those is in-sample. The held-out figure is cross-fitted: the validation rows are
  split in two by lesion/patient group, the threshold is set on one half and counted on the other,
  and both ways are averaged.
The figures are printed and written into guard.json (`evaluation`) for the model card.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from inference import Predictor
from inference import metadata as md
from inference.onnx_backend import EMBEDDING, LOGITS
from inference.guard import GUARD_JSON

SKIMAGE = ("astronaut", "brick", "camera", "chelsea", "cell", "checkerboard", "clock", "coffee", "coins",
           "colorwheel", "grass", "gravel", "horse", "hubble_deep_field", "immunohistochemistry", "logo",
           "microaneurysms", "moon", "page", "retina", "rocket", "text", "shepp_logan_phantom", "binary_blobs")
FACE_CROPS = {"skimage.astronaut": [(175, 60, 235, 120), (200, 95, 240, 135)],  # forehead, cheek
              "matplotlib.grace_hopper.jpg": [(180, 215, 260, 295), (270, 250, 350, 330)]}  # cheeks


def _rgb(array: np.ndarray) -> Image.Image:
    a = np.asarray(array)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    if a.dtype != np.uint8:
        a = (255 * (a - a.min()) / max(float(a.max() - a.min()), 1e-9)).astype(np.uint8)
    return Image.fromarray(a).convert("RGB")


def packaged_images() -> dict[str, Image.Image]:
    import matplotlib
    import skimage.data
    import sklearn

    images = {f"skimage.{n}": _rgb(getattr(skimage.data, n)()) for n in SKIMAGE}
    mpl = Path(matplotlib.__file__).parent / "mpl-data" / "sample_data"
    for n in ("grace_hopper.jpg", "logo2.png", "Minduka_Present_Blue_Pack.png"):
        images[f"matplotlib.{n}"] = Image.open(mpl / n).convert("RGB")
    for n in ("china.jpg", "flower.jpg"):
        images[f"sklearn.{n}"] = Image.open(Path(sklearn.__file__).parent / "datasets" / "images" / n).convert("RGB")
    return images


def skin_close_ups(packaged: dict[str, Image.Image]) -> dict[str, Image.Image]:
    return {f"{name} crop {box}": packaged[name].crop(box) for name, boxes in FACE_CROPS.items() for box in boxes}


def generated_images(seed: int = 0) -> dict[str, tuple[str, Image.Image]]:
    """name → (kind, image): flat colours (incl. skin tones), gradients, noise, text, screenshot-like."""
    rng = np.random.default_rng(seed)
    out: dict[str, tuple[str, Image.Image]] = {}
    colour = lambda lo, hi: tuple(int(v) for v in rng.integers(lo, hi, 3))  # noqa: E731
    for c in [(0, 0, 0), (255, 255, 255), (128, 128, 128), (224, 172, 140), (198, 134, 103), (141, 85, 36),
              (255, 0, 0), (30, 60, 200)]:
        out[f"flat {c}"] = ("flat", Image.new("RGB", (256, 256), c))
    ramp = np.linspace(0, 255, 256)
    gx, gy = np.meshgrid(ramp, ramp[::-1])
    for i in range(4):
        out[f"gradient {i}"] = ("flat", _rgb(np.dstack([gx, gy, np.full_like(gx, 60 * i)]).astype(np.uint8)))
    for i in range(3):
        stripes = (np.indices((256, 256)).sum(0) // (8 * (i + 1)) % 2 * 255).astype(np.uint8)
        out[f"stripes {i}"] = ("flat", _rgb(stripes))
    for i in range(4):
        gaussian = rng.normal(128, 20 + 30 * i, (256, 256, 3)).clip(0, 255).astype(np.uint8)
        out[f"gaussian noise {i}"] = ("noise", _rgb(gaussian))
        uniform = Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8))
        out[f"uniform noise, blur {2 * i}"] = ("noise", uniform.filter(ImageFilter.GaussianBlur(2 * i)))
        smooth = _rgb(rng.normal(0, 1, (16, 16, 3))).resize((256, 256), Image.BICUBIC)
        out[f"smooth colour noise {i}"] = ("noise", smooth)
    words = ("The quick brown fox jumps over the lazy dog. Referral letter, page 2 of 3. Invoice total 42.00 EUR "
             "Dear doctor please find attached").split()
    for i in range(8):
        bg, fg = [((255, 255, 255), (0, 0, 0)), ((0, 0, 0), (255, 255, 255)), ((250, 245, 230), (40, 40, 120)),
                  ((255, 255, 200), (200, 0, 0))][i % 4]
        img = Image.new("RGB", (400, 300), bg)
        draw, font = ImageDraw.Draw(img), ImageFont.load_default(size=12 + 4 * i)
        for y in range(5, 290, 16 + 5 * i):
            draw.text((5, y), " ".join(rng.choice(words, 6)), fill=fg, font=font)
        out[f"text {i}"] = ("text", img)
    for i in range(8):
        img = Image.new("RGB", (640, 400), colour(200, 256))
        draw = ImageDraw.Draw(img)
        draw.rectangle([0, 0, 640, 28], fill=colour(0, 120))
        draw.text((10, 6), "Settings - Browser", fill=(255, 255, 255), font=ImageFont.load_default(size=14))
        draw.rectangle([0, 28, 150, 400], fill=colour(150, 230))
        for k in range(8):
            draw.text((10, 40 + 25 * k), f"Menu item {k}", fill=(20, 20, 20), font=ImageFont.load_default(size=13))
        for _ in range(int(rng.integers(2, 6))):
            x0, y0 = int(rng.integers(170, 450)), int(rng.integers(40, 320))
            draw.rounded_rectangle([x0, y0, x0 + int(rng.integers(60, 180)), y0 + int(rng.integers(24, 70))], 6,
                                   fill=colour(0, 256))
        for k in range(6):
            draw.text((170, 200 + 25 * k), "Lorem ipsum dolor sit amet " * 2, fill=(60, 60, 60),
                      font=ImageFont.load_default(size=12))
        out[f"screenshot {i}"] = ("screenshot", img)
    return out


def guard_scores(predictor: Predictor, images: list) -> np.ndarray:
    pixels = np.stack([predictor.model_input(im) for im in images])
    meta = np.tile(md.encode(md.normalize(None, None, None)), (len(images), 1))  # metadata does not reach the guard
    return predictor.guard.score(predictor.forward(pixels, meta, outputs=(LOGITS, EMBEDDING))[1][0])


def held_out_false_alarms(scores: np.ndarray, groups: pd.Series, max_flagged: float, seed: int = 0) -> float:
    """Threshold on one half of the validation groups, flagged rate on the other, averaged both ways."""
    from train.fit_guard import threshold_for

    unique = groups.unique()
    half = set(np.random.default_rng(seed).permutation(unique)[: len(unique) // 2])
    a = groups.isin(half).to_numpy()
    rates = [float((scores[~side] > threshold_for(scores[side], max_flagged)).mean()) for side in (a, ~a)]
    return float(np.mean(rates))


def evaluate(model_dir: Path, val_rows: pd.DataFrame) -> dict:
    """Print and store (guard.json → evaluation) the detection and false-alarm rates."""
    from train.fit_guard import embed_rows
    from train.model import MelanomaModel

    predictor = Predictor.from_pretrained(model_dir)
    if predictor.guard is None:
        raise ValueError(f"{model_dir} has no guard to evaluate: run without --no_fit first.")
    info = json.loads((Path(model_dir) / GUARD_JSON).read_text())
    packaged = packaged_images()
    generated = generated_images()
    sets = {"packaged photos and drawings": list(packaged.items()),
            **{kind: [(n, im) for n, (k, im) in generated.items() if k == kind]
               for kind in ("flat", "noise", "text", "screenshot")},
            "skin close-ups (not dermoscopic)": list(skin_close_ups(packaged).items())}
    results: dict = {"out_of_scope": {}, "missed": []}
    for name, items in sets.items():
        flagged = ~predictor.guard.in_distribution(guard_scores(predictor, [im for _, im in items]))
        results["out_of_scope"][name] = {"n": len(items), "flagged": int(flagged.sum())}
        results["missed"] += [n for (n, _), f in zip(items, flagged) if not f and "skin" not in name]
    oos = [v for k, v in results["out_of_scope"].items() if "skin" not in k]
    results["detection_rate"] = sum(v["flagged"] for v in oos) / sum(v["n"] for v in oos)
    scores = predictor.guard.score(embed_rows(MelanomaModel.from_pretrained(str(model_dir)), val_rows)[0])
    flagged = scores > predictor.guard.threshold
    results["validation_flagged_in_sample"] = float(flagged.mean())
    results["validation_flagged_by_source"] = {s: float(flagged[(val_rows.source == s).to_numpy()].mean())
                                               for s in sorted(val_rows.source.unique())}
    results["false_alarm_rate_held_out"] = held_out_false_alarms(scores, val_rows["group"], info["max_flagged"])
    for name, v in results["out_of_scope"].items():
        print(f"{name:34s} flagged {v['flagged']:3d} of {v['n']:3d}")
    print(f"out of scope flagged: {results['detection_rate']:.1%}   missed: {', '.join(results['missed']) or '-'}")
    print(f"dermoscopic validation flagged: {results['validation_flagged_in_sample']:.2%} in sample "
          f"({', '.join(f'{s} {r:.2%}' for s, r in results['validation_flagged_by_source'].items())}); "
          f"held out (cross-fitted threshold): {results['false_alarm_rate_held_out']:.2%}")
    info["evaluation"] = {**results, "command": "python -m train.fit_guard --model <folder> --evaluate"}
    (Path(model_dir) / GUARD_JSON).write_text(json.dumps(info, indent=1) + "\n")
    return results

