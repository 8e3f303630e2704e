"""Measure the out-of-scope guard and its alternatives: `python -m studies.guard_eval --model output/default`.

* Out of scope: every still image scikit-image, matplotlib and scikit-learn ship that loads offline
  (photos and drawings), and generated flat, gradient, noise, text and screenshot-like images (seeded).
* Close-ups of skin that is not a lesion under a dermatoscope: crops of the faces in those packaged
  portraits (no package ships skin close-ups).
* Recoloured dermoscopy: validation images (melanomas and others, every source) turned greyscale, hue-rotated
  by 90° and 180°, and colour-inverted: a lesion's shapes without its colours. They must be refused or
  cautioned, never silently banded low.
* Dermoscopic images held out from the lines: the lines are set on the validation rows, so counting those is
  in-sample. The held-out figures are cross-fitted: the validation rows are split in two by lesion/patient group,
  the lines are set on one half and counted on the other, both ways, so each image is counted once, held out.
Each alternative (one Gaussian over all training images; the nearest of one Gaussian per diagnosis) is fitted on
the same embeddings. The chosen guard's figures go into guard.json (`evaluation`) for the model card; the
table of all of them is printed for docs/space.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFilter, ImageFont, ImageOps

from inference import Predictor
from inference import metadata as md
from inference.guard import GUARD_JSON, Guard, colour_features
from inference.onnx_backend import EMBEDDING, LOGITS

from train.errors import DataError
from train.fit_guard import Embedded, build_guard, embed_rows, model_rows
from train.network import load_model

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


def hue_rotated(image: Image.Image, degrees: int) -> Image.Image:
    hsv = np.asarray(image.convert("HSV")).copy()
    hsv[..., 0] = (hsv[..., 0].astype(int) + round(degrees / 360 * 256)) % 256
    return Image.fromarray(hsv, "HSV").convert("RGB")


RECOLOURINGS = {"greyscale": lambda im: im.convert("L").convert("RGB"), "hue +90°": lambda im: hue_rotated(im, 90),
                "hue +180°": lambda im: hue_rotated(im, 180), "inverted": lambda im: ImageOps.invert(im.convert("RGB"))}


def recoloured_rows(val_rows: pd.DataFrame, per_kind: int = 60, seed: int = 0) -> pd.DataFrame:
    """`per_kind` validation rows, half melanomas, from every source: the images to recolour."""
    rng = np.random.default_rng(seed)
    parts = [g.sample(min(len(g), per_kind // 2), random_state=int(rng.integers(1 << 31))) for _, g in
             val_rows.groupby("target")]
    return pd.concat(parts, ignore_index=True)


def through_predictor(predictor: Predictor, images: list) -> Embedded:
    """Images (paths or PIL) as the Space sees them: embedding, melanoma probability, colour statistics."""
    embeddings, probs, colours = [], [], []
    for start in range(0, len(images), 32):
        squares = np.stack([predictor.square(im) for im in images[start:start + 32]])
        pixels = np.stack([predictor.to_model_input(s) for s in squares])
        meta = np.tile(md.encode(md.normalize(None, None, None)), (len(squares), 1))  # metadata does not reach it
        p, (embedding,) = predictor.forward(pixels, meta, tta=predictor.guard.views == 8, outputs=(LOGITS, EMBEDDING))
        embeddings.append(embedding)
        probs.append(p[:, predictor.classes.index("mel")])
        colours.append(colour_features(squares))
    return Embedded(np.concatenate(embeddings, axis=1), np.concatenate(probs), np.concatenate(colours))


def outcome(guard: Guard, e: Embedded) -> tuple[np.ndarray, np.ndarray]:
    """(refused, cautioned) per image, as the Predictor answers."""
    verdicts = [guard.verdict(s, c) for s, c in zip(guard.score(e.embeddings), guard.colour_distance(e.colours))]
    refused = np.array([not kept for kept, _ in verdicts])
    cautioned = np.array([caution is not None for _, caution in verdicts])
    return refused, cautioned


def wilson(k: int, n: int) -> list[float]:
    """95 % Wilson interval of a proportion k / n."""
    if n == 0:
        return [0.0, 1.0]
    z, p = 1.959964, k / n
    centre, half = (p + z * z / (2 * n)) / (1 + z * z / n), z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [float(max(0.0, centre - half)), float(min(1.0, centre + half))]


def held_out(train: Embedded, labels, val: Embedded, val_rows: pd.DataFrame, seed: int = 0) -> dict:
    """Lines set on one half of the validation groups, counted on the other, both ways: refusals and cautions
    among all, melanomas and other lesions, each image counted once, with 95 % intervals."""
    groups = val_rows["group"]
    half = set(np.random.default_rng(seed).permutation(groups.unique())[: groups.nunique() // 2])
    side = groups.isin(half).to_numpy()
    refused, cautioned = np.zeros(len(val_rows), bool), np.zeros(len(val_rows), bool)
    for fit_on in (side, ~side):
        guard, _, _ = build_guard(train, labels, val.subset(fit_on))
        r, c = outcome(guard, val.subset(~fit_on))
        refused[~fit_on], cautioned[~fit_on] = r, c
    mel = val_rows["target"].to_numpy() == 1
    out = {}
    for name, keep in (("all", np.ones_like(mel)), ("melanomas", mel), ("other lesions", ~mel)):
        k, n = int(refused[keep].sum()), int(keep.sum())
        out[name] = {"n": n, "refused": k, "refused_rate": k / n, "refused_95ci": wilson(k, n),
                     "cautioned_rate": float(cautioned[keep].mean())}
    return out


def image_sets(predictor: Predictor, val_rows: pd.DataFrame) -> dict[str, tuple[Embedded, np.ndarray]]:
    """name → (images through the predictor, melanoma flags) for every out-of-scope and recoloured family."""
    packaged, generated = packaged_images(), generated_images()
    families = {"photos and drawings (packaged)": list(packaged.values()),
                "generated (flat, noise, text, screenshots)": [im for _, im in generated.values()],
                "skin close-ups, not dermoscopic": list(skin_close_ups(packaged).values())}
    out = {name: (through_predictor(predictor, images), np.zeros(len(images), bool)) for name, images in families.items()}
    rows = recoloured_rows(val_rows)
    originals = [Image.open(p).convert("RGB") for p in rows.path]
    for name, change in RECOLOURINGS.items():
        out[f"dermoscopy, {name}"] = (through_predictor(predictor, [change(im) for im in originals]),
                                      rows.target.to_numpy() == 1)
    return out


def evaluate(model_dir: Path, train_rows: pd.DataFrame, val_rows: pd.DataFrame) -> dict:
    """Every alternative's figures (printed as docs/space.md's table); the chosen guard's go into guard.json."""
    predictor = Predictor.from_pretrained(model_dir)
    if predictor.guard is None:
        raise ValueError(f"{model_dir} has no guard to evaluate: run `python -m train.fit_guard --model {model_dir}`.")
    model = load_model(model_dir)
    train, val = embed_rows(model, train_rows), embed_rows(model, val_rows, views=predictor.guard.views)
    sets = image_sets(predictor, val_rows)
    results = {}
    for method, labels in (("one Gaussian over all training images (before issue 22)", None),
                           ("nearest of one Gaussian per diagnosis (chosen)", train_rows["label"].to_numpy())):
        guard, _, _ = build_guard(train, labels, val)
        families = {}
        for name, (e, mel) in sets.items():
            refused, cautioned = outcome(guard, e)
            low = ~refused & ~cautioned & (e.probabilities < predictor.operating_points["low"]["threshold"]) \
                if predictor.operating_points else np.zeros_like(refused)
            families[name] = {"n": len(refused), "refused": int(refused.sum()), "cautioned": int(cautioned.sum()),
                              "melanomas": int(mel.sum()), "melanomas_silently_low": int((low & mel).sum())}
        results[method] = {"held_out": held_out(train, labels, val, val_rows), "families": families}
    print(table(results))
    info = json.loads((Path(model_dir) / GUARD_JSON).read_text())
    info["evaluation"] = {**results[list(results)[-1]], "alternatives": results,
                          "command": f"python -m studies.guard_eval --model {model_dir}"}
    (Path(model_dir) / GUARD_JSON).write_text(json.dumps(info, indent=1) + "\n")
    return results


def table(results: dict) -> str:
    families = list(next(iter(results.values()))["families"])
    lines = ["| guard | held-out refused: all | melanomas | other lesions | "
             + " | ".join(f"{f}: refused + cautioned" for f in families) + " |",
             "| --- | ---: | ---: | ---: | " + " | ".join("---:" for _ in families) + " |"]
    for method, r in results.items():
        h = r["held_out"]
        cells = [f"{h[k]['refused_rate']:.2%} ({h[k]['refused_95ci'][0]:.2%}–{h[k]['refused_95ci'][1]:.2%})"
                 for k in ("all", "melanomas", "other lesions")]
        for f in families:
            v = r["families"][f]
            cell = f"{(v['refused'] + v['cautioned']) / v['n']:.0%} ({v['refused']}+{v['cautioned']} of {v['n']})"
            if v["melanomas"]:
                cell += f"; melanomas silently low: {v['melanomas_silently_low']} of {v['melanomas']}"
            cells.append(cell)
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studies.guard_eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="model folder with a fitted guard and folds.csv")
    parser.add_argument("--fold", type=int, help="the validation fold (default: the config's one train fold)")
    args = parser.parse_args(argv)
    try:
        train_rows, val_rows = model_rows(args.model, args.fold)
        evaluate(args.model, train_rows, val_rows)
    except (ValueError, FileNotFoundError, DataError) as err:
        print(f"guard_eval: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
