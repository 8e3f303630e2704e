"""Data sources → one table of labelled rows, validated before any training starts; the Dataset.

Sources (combinable in one run):
* ISIC 2020, competition layout: `train.csv` + `jpeg/train/<image_name>.jpg`.
* ISIC 2020, `cdeotte/jpeg-melanoma-NxN` layout: `train.csv` + `train/<image_name>.jpg`; its
  `tfrecord` column can serve as folds (`fold_source: tfrecord`). Rows with tfrecord -1 are the
  duplicates that data set's author left out of every tfrecord, so they are left out here too.
* HAM10000: `HAM10000_metadata.csv` + `<image_id>.jpg` anywhere below its folder (Kaggle splits
  the images over `HAM10000_images_part_1/` and `_part_2/`).

Every row becomes: image_id, source, path, group (patient or lesion: what folds must not split),
label (one of `inference.model.CLASSES`), target (1 = melanoma), age, sex, site (normalised by
`inference.metadata.normalize`, so training sees exactly what the Space will encode).
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, Sampler

from inference.image import ImageError, open_image, prepare
from inference.metadata import UNKNOWN, Metadata, encode, normalize
from inference.model import CLASSES

from .errors import DataError

if TYPE_CHECKING:
    from .augment import Augment

# ISIC 2020 `diagnosis` → model class. All ISIC 2020 malignant rows are melanoma. Benign keratoses,
# lentigines and lichenoid keratoses are HAM10000's `bkl` ("benign keratosis-like lesions: solar
# lentigines / seborrheic keratoses / lichen-planus like keratoses", Tschandl et al. 2018). Lesions with
# no HAM10000 counterpart (cafe-au-lait macule, atypical melanocytic proliferation) and the 'unknown'
# benign rows (>80 % of ISIC 2020) become benign_unspecified; the same grouping as the 1st-place
# SIIM-ISIC 2020 solution (Ha, Liu & Liu), which mapped them onto the ISIC 2019 classes.
ISIC_DIAGNOSIS = {
    "melanoma": "mel", "nevus": "nv",
    "seborrheic keratosis": "bkl", "lentigo nos": "bkl", "lichenoid keratosis": "bkl", "solar lentigo": "bkl",
    "cafe-au-lait macule": "benign_unspecified", "atypical melanocytic proliferation": "benign_unspecified",
    "unknown": "benign_unspecified",
}
# HAM10000 `dx` is already the model's vocabulary (mel, nv, bcc, akiec, bkl, df, vasc).
HAM_DX = {c: c for c in ("mel", "nv", "bcc", "akiec", "bkl", "df", "vasc")}
# HAM10000 `localization` → ISIC 2020 `anatom_site_general_challenge`. Back, trunk, abdomen and chest
# are the torso; face, scalp, neck and ear are head/neck; 'acral' is palms/soles. 'hand' and 'foot'
# are mapped to the upper/lower extremity because HAM10000 does not say palm or dorsum (ISIC's
# palms/soles is acral skin only); 'genital' is oral/genital; 'unknown' stays unknown.
HAM_SITE = {
    "back": "torso", "trunk": "torso", "abdomen": "torso", "chest": "torso",
    "face": "head/neck", "scalp": "head/neck", "neck": "head/neck", "ear": "head/neck",
    "upper extremity": "upper extremity", "hand": "upper extremity",
    "lower extremity": "lower extremity", "foot": "lower extremity",
    "acral": "palms/soles", "genital": "oral/genital", "unknown": UNKNOWN,
}

ISIC_COLUMNS = ("image_name", "patient_id", "sex", "age_approx", "anatom_site_general_challenge", "diagnosis",
                "target")
HAM_COLUMNS = ("lesion_id", "image_id", "dx", "age", "sex", "localization")
DUPLICATES_NAME = "ISIC_2020_Training_Duplicates.csv"
SHOW = 5  # how many offending rows an error message lists


def _read_csv(path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"{path} does not exist.")
    try:
        frame = pd.read_csv(path, dtype={"image_name": str, "image_id": str, "patient_id": str, "lesion_id": str})
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
        raise DataError(f"{path} is not a readable CSV file ({err}).") from None
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataError(f"{path} is missing required column(s) {', '.join(missing)}; it has: "
                        f"{', '.join(map(str, frame.columns))}.")
    return frame


def _listing(items: list[str], total: int, what: str) -> str:
    shown = "; ".join(items[:SHOW])
    more = f" (and {len(items) - SHOW} more)" if len(items) > SHOW else ""
    return f"{len(items)} of {total} {what}: {shown}{more}"


def _metadata(frame: pd.DataFrame, csv: Path, age: str, sex: str, site: str, site_map: dict | None) -> list[Metadata]:
    """Normalise every row's metadata, collecting the bad rows into one error."""
    metas, bad = [], []
    for row_no, (a, s, loc) in enumerate(zip(frame[age], frame[sex], frame[site]), start=2):  # +header, 1-based
        try:
            if site_map is not None:
                word = "unknown" if pd.isna(loc) else str(loc).strip().lower()
                if word not in site_map:
                    raise ValueError(f"anatomical site: {loc!r} is not a HAM10000 localization we map "
                                     f"(known: {', '.join(site_map)})")
                loc = site_map[word]
            metas.append(normalize(age=a, sex=s, site=loc))
        except ValueError as err:
            bad.append(f"line {row_no}: {str(err).rstrip('.')}")
    if bad:
        raise DataError(f"{csv}: metadata outside the vocabulary in " + _listing(bad, len(frame), "rows"))
    return metas


def _assemble(frame: pd.DataFrame, source: str, ids: pd.Series, paths: list[str], groups: pd.Series,
              labels: list[str], metas: list[Metadata], tfrecord: pd.Series | None) -> pd.DataFrame:
    return pd.DataFrame({
        "image_id": ids.astype(str).to_numpy(),
        "source": source,
        "path": paths,
        "group": [f"{source}:{g}" for g in groups.astype(str)],
        "label": labels,
        "target": [int(lab == "mel") for lab in labels],
        "age": [meta.age for meta in metas], "sex": [meta.sex for meta in metas], "site": [meta.site for meta in metas],
        "tfrecord": tfrecord.to_numpy() if tfrecord is not None else -1,
    })


def load_isic(folder: Path) -> pd.DataFrame:
    csv = folder / "train.csv"
    frame = _read_csv(csv, ISIC_COLUMNS)
    image_dir = next((d for d in (folder / "jpeg" / "train", folder / "train") if d.is_dir()), None)
    if image_dir is None:
        raise DataError(f"No image folder beside {csv}: expected jpeg/train/ (competition) or train/ (jpeg-melanoma).")
    tfrecord = None
    if "tfrecord" in frame.columns:
        tfrecord = pd.to_numeric(frame["tfrecord"], errors="coerce").fillna(-1).astype(int)
        keep = tfrecord >= 0  # -1: a duplicate its author left out of every tfrecord
        frame, tfrecord = frame[keep].reset_index(drop=True), tfrecord[keep].reset_index(drop=True)
    for column in ("image_name", "patient_id"):
        blank = frame[column].isna()
        if blank.any():
            raise DataError(f"{csv}: column {column} is blank in " + _listing(
                [f"line {i + 2}" for i in np.flatnonzero(blank)], len(frame), "rows"))
    present = set(os.listdir(image_dir))
    names = frame["image_name"].astype(str)
    missing = [f"{n} (expected {image_dir / (n + '.jpg')})" for n in names if n + ".jpg" not in present]
    if missing:
        raise DataError(f"Missing images for {csv}: " + _listing(missing, len(frame), "rows have no image file"))
    words = frame["diagnosis"].fillna("unknown").astype(str).str.strip().str.lower()
    unknown = sorted(set(words) - set(ISIC_DIAGNOSIS))
    if unknown:
        raise DataError(f"{csv}: diagnosis value(s) with no class mapping: {', '.join(unknown)}; "
                        f"known: {', '.join(ISIC_DIAGNOSIS)}.")
    labels = [ISIC_DIAGNOSIS[w] for w in words]
    target = pd.to_numeric(frame["target"], errors="coerce")
    clash = [f"line {i + 2}" for i, (t, lab) in enumerate(zip(target, labels))
             if t not in (0, 1) or (t == 1) != (lab == "mel")]
    if clash:
        raise DataError(f"{csv}: target disagrees with diagnosis (target must be 1 exactly for melanoma) in "
                        + _listing(clash, len(frame), "rows"))
    metas = _metadata(frame, csv, "age_approx", "sex", "anatom_site_general_challenge", None)
    paths = [str(image_dir / f"{n}.jpg") for n in names]
    return _assemble(frame, "isic2020", names, paths, frame["patient_id"], labels, metas, tfrecord)


def load_ham(folder: Path) -> pd.DataFrame:
    csv = folder / "HAM10000_metadata.csv"
    frame = _read_csv(csv, HAM_COLUMNS)
    index: dict[str, Path] = {}
    for root, dirs, files in os.walk(folder, followlinks=True):  # image folders may be symlinks
        dirs.sort()  # the same file wins on every machine when an image is stored twice
        for name in sorted(files):
            if name.lower().endswith(".jpg"):
                index.setdefault(name[:-4], Path(root) / name)
    ids = frame["image_id"].astype(str)
    missing = [f"{i} (no {i}.jpg below {folder})" for i in ids if i not in index]
    if missing:
        raise DataError(f"Missing images for {csv}: " + _listing(missing, len(frame), "rows have no image file"))
    words = frame["dx"].astype(str).str.strip().str.lower()
    unknown = sorted(set(words) - set(HAM_DX))
    if unknown:
        raise DataError(f"{csv}: dx value(s) with no class mapping: {', '.join(unknown)}; known: {', '.join(HAM_DX)}.")
    metas = _metadata(frame, csv, "age", "sex", "localization", HAM_SITE)
    return _assemble(frame, "ham10000", ids, [str(index[i]) for i in ids], frame["lesion_id"],
                     [HAM_DX[w] for w in words], metas, None)


def load_duplicates(spec: str, isic_dirs: list[Path]) -> list[tuple[str, str]]:
    """Known duplicate image pairs (image_name_1, image_name_2) of ISIC 2020."""
    if spec == "none":
        return []
    if spec == "auto":
        paths = [d / DUPLICATES_NAME for d in isic_dirs if (d / DUPLICATES_NAME).is_file()]
    else:
        paths = [Path(spec)]
    pairs: list[tuple[str, str]] = []
    for path in paths:
        table = _read_csv(path, ("image_name_1", "image_name_2"))
        pairs += list(zip(table["image_name_1"].astype(str), table["image_name_2"].astype(str)))
    return pairs


def load_sources(isic_dirs: list[str], ham_dirs: list[str],
                 duplicates: str) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Every source's rows in one validated table, plus the ISIC duplicate pairs. Raises DataError."""
    for d in [*isic_dirs, *ham_dirs]:
        if not Path(d).is_dir():
            raise DataError(f"Data folder {d} does not exist.")
    parts = [load_isic(Path(d)) for d in isic_dirs] + [load_ham(Path(d)) for d in ham_dirs]
    frame = pd.concat(parts, ignore_index=True)
    dup = frame["image_id"].duplicated(keep=False)
    if dup.any():
        raise DataError("The same image id appears more than once across the sources: "
                        + _listing(sorted(set(frame.loc[dup, "image_id"])), int(dup.sum()), "rows"))
    return frame, load_duplicates(duplicates, [Path(d) for d in isic_dirs])


def ages(frame: pd.DataFrame) -> list[float | None]:
    """The frame's `age` column as the metadata encoder takes it: a float, or None where unknown (NaN)."""
    return [None if pd.isna(a) else float(a) for a in frame["age"]]


class LesionDataset(Dataset):
    """Rows → {image, meta, label, index, ok} using the inference eval transform plus optional augmentation.

    `image` is the uint8 (S, S, 3) pixels: the loop normalises the batch on the device
    (`train.epoch.batch_to_input`), so workers neither convert to float nor copy four times the bytes.

    Augmentation and metadata dropout draw from a generator seeded by (seed, epoch, row), so a sample
    is the same whichever worker, process or resumed session produces it. An image that cannot be
    decoded gives ok=0 and its error text instead of raising inside a worker (the main process
    decides: fail naming the file, or skip and count); its slot keeps batch shapes and the gathered
    validation count intact.
    """

    def __init__(self, frame: pd.DataFrame, image_size: int, augment: Augment | None = None,
                 meta_dropout: float = 0.0, use_metadata: bool = True, seed: int = 0) -> None:
        self.paths = frame["path"].tolist()
        self.labels = torch.tensor([CLASSES.index(c) for c in frame["label"]], dtype=torch.long)
        self.metas = [Metadata(age=a, sex=s, site=t) for a, s, t in zip(ages(frame), frame["sex"], frame["site"])]
        self.image_size = image_size
        self.augment, self.meta_dropout, self.use_metadata, self.seed = augment, meta_dropout, use_metadata, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        rng = np.random.default_rng([self.seed, self.epoch, i])
        sample = {"label": self.labels[i], "index": torch.tensor(i), "ok": torch.tensor(1), "error": ""}
        try:
            array = prepare(open_image(self.paths[i], min_side=self.image_size), self.image_size)  # as served
        except (ImageError, OSError) as err:
            array = np.zeros((self.image_size, self.image_size, 3), dtype=np.uint8)
            sample.update(ok=torch.tensor(0), error=f"{self.paths[i]}: {err}")
        if self.augment is not None:
            array = self.augment(array, rng)
        meta = self.metas[i] if self.use_metadata else Metadata()
        if self.meta_dropout and self.use_metadata:
            drop = rng.random(3) < self.meta_dropout
            meta = replace(meta, age=None if drop[0] else meta.age, sex=UNKNOWN if drop[1] else meta.sex,
                           site=UNKNOWN if drop[2] else meta.site)
        sample.update(image=torch.from_numpy(np.ascontiguousarray(array)), meta=torch.from_numpy(encode(meta)))
        return sample


def collate(samples: list[dict]) -> dict:
    """Stack tensors; keep the (usually empty) error texts as a list of the failed ones."""
    batch = {k: torch.stack([s[k] for s in samples]) for k in ("image", "meta", "label", "index", "ok")}
    batch["errors"] = [s["error"] for s in samples if s["error"]]
    return batch


class BalancedSampler(Sampler[int]):
    """Draw len(labels) rows per epoch with probability ∝ class_count^-power (with replacement).

    Seeded by seed + epoch, so every process draws the same sequence (accelerate then shards it)
    and a resumed run draws what the uninterrupted one would have.
    """

    def __init__(self, labels: torch.Tensor, power: float, seed: int) -> None:
        counts = torch.bincount(labels, minlength=len(CLASSES)).float()
        self.weights = counts.clamp(min=1).pow(-power)[labels]
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.weights)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.multinomial(self.weights, len(self.weights), replacement=True, generator=generator).tolist())


def class_weights(labels: torch.Tensor, power: float) -> torch.Tensor:
    """(1 / frequency)^power, normalised to mean 1 over the classes present; absent classes get 0."""
    counts = torch.bincount(labels, minlength=len(CLASSES)).float()
    weights = torch.where(counts > 0, counts.clamp(min=1).pow(-power), torch.zeros_like(counts))
    return weights / weights[counts > 0].mean()
