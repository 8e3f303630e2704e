"""Batch scoring: write a Kaggle submission (`image_name,target`) for a folder of images.

    python -m inference.batch --model output/default --images test/ --csv test.csv --out submission.csv

Reads the competition layout (`test.csv` + `jpeg/test/*.jpg`) and cdeotte's `jpeg-melanoma-NxN`
layout (`test.csv` + `test/*.jpg`); pass the image folder itself as --images. Extra columns are
ignored and missing metadata columns or blank cells mean "unknown". Every check (columns, metadata
values, image files) runs before the first image is assessed, and the output appears only when complete.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from .metadata import normalize
from .predictor import Predictor

# Column names of the two Kaggle layouts (and HAM10000's, which is handy for local evaluation).
IMAGE_COLUMNS = ("image_name", "image_id")
AGE_COLUMNS = ("age_approx", "age")
SEX_COLUMNS = ("sex",)
SITE_COLUMNS = ("anatom_site_general_challenge", "anatom_site_general", "site")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


class InputError(Exception):
    """Bad command-line input; printed as one message without a traceback."""


def _column(df: pd.DataFrame, names: tuple[str, ...]) -> list:
    for name in names:
        if name in df.columns:
            return [None if pd.isna(v) else v for v in df[name]]
    return [None] * len(df)


def _find_image(folder: Path, name: str) -> Path | None:
    for suffix in ("", *IMAGE_SUFFIXES):
        path = folder / f"{name}{suffix}"
        if path.is_file():
            return path
    return None


def load_table(csv: Path, images: Path) -> pd.DataFrame:
    """Read and check the CSV: returns image_name, path, age, sex, site. Raises InputError."""
    if not csv.is_file():
        raise InputError(f"CSV file not found: {csv}")
    if not images.is_dir():
        raise InputError(f"Image folder not found: {images}")
    df = pd.read_csv(csv, dtype={"sex": "string"})
    image_col = next((c for c in IMAGE_COLUMNS if c in df.columns), None)
    if image_col is None:
        raise InputError(f"{csv} has no image column; expected one of {', '.join(IMAGE_COLUMNS)}.")
    table = pd.DataFrame({"image_name": df[image_col].astype(str)})
    table["age"], table["sex"], table["site"] = (_column(df, c) for c in (AGE_COLUMNS, SEX_COLUMNS, SITE_COLUMNS))
    bad = []
    for row, (age, sex, site) in enumerate(zip(table.age, table.sex, table.site)):
        try:
            normalize(age, sex, site)
        except ValueError as err:
            bad.append(f"  row {row + 2} ({table.image_name[row]}): {err}")
    if bad:
        raise InputError(f"{len(bad)} row(s) of {csv} have invalid metadata:\n" + "\n".join(bad[:10]))
    table["path"] = [_find_image(images, name) for name in table.image_name]
    missing = table.image_name[table.path.isna()].tolist()
    if missing:
        shown = "\n".join(f"  {name}" for name in missing[:10]) + ("\n  ..." if len(missing) > 10 else "")
        raise InputError(f"{len(missing)} of {len(table)} images listed in {csv} are missing from {images}:\n{shown}")
    return table


def melanoma_probabilities(predictor: Predictor, table: pd.DataFrame, tta: bool, batch_size: int) -> pd.DataFrame:
    """Melanoma probability per row, with a progress bar."""
    with tqdm(total=len(table), unit="img", desc="assessing", disable=None) as bar:
        answers = predictor.predict_batch(
            list(table.path), list(table.age), list(table.sex), list(table.site),
            tta=tta, batch_size=batch_size, progress=bar.update,
        )
    return pd.DataFrame({"image_name": table.image_name, "target": [a["melanoma_probability"] for a in answers]})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m inference.batch", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model folder, Hub repo id, or repo_id@revision")
    parser.add_argument("--images", required=True, type=Path, help="folder holding <image_name>.jpg")
    parser.add_argument("--csv", required=True, type=Path, help="test.csv of the competition or jpeg-melanoma-NxN")
    parser.add_argument("--out", required=True, type=Path, help="submission CSV to write")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=True,
                        help="average the 8 flips/transposes, as the Space does (default); --no-tta: one view, 8x faster")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime threads (default: all cores)")
    args = parser.parse_args(argv)
    try:
        table = load_table(args.csv, args.images)
        predictor = Predictor.from_pretrained(args.model, threads=args.threads)
        submission = melanoma_probabilities(predictor, table, args.tta, args.batch_size)
    except (InputError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_name(args.out.name + ".partial")
    submission.to_csv(partial, index=False)
    os.replace(partial, args.out)  # never leave a half-written submission behind
    print(f"wrote {len(submission)} predictions to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
