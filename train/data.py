"""Data sources → one table of labelled rows, validated before any training starts; the Dataset.

Each layout users have is read by its own module under `train/sources/` (ISIC 2020 and 2019 in the
`jpeg-melanoma` layout, HAM10000, the ISIC challenge layout), which maps its labels onto the model's classes
in one visible table. Sources combine in one run. Every row becomes: image_id, source, path, group (patient
or lesion: what folds must not split), label (one of `inference.model.CLASSES`), target (1 = melanoma),
age, sex, site (normalised by `inference.metadata.normalize`, so training sees exactly what the Space will
encode), tfrecord (-1 unless the layout has one).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, Sampler

from inference.image import ImageError, open_image, prepare
from inference.metadata import UNKNOWN, Metadata, encode
from inference.model import CLASSES

from .errors import DataError
from .sources.common import listing, read_csv
from .sources.ham10000 import load_ham
from .sources.isic_challenge import load_isic_challenge
from .sources.jpeg_melanoma import load_jpeg_melanoma

if TYPE_CHECKING:
    from .augment import Augment

DUPLICATES_NAME = "ISIC_2020_Training_Duplicates.csv"
CHALLENGE_PART = "Training"  # the part of an ISIC challenge folder a run trains on; Validation stays external


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
        table = read_csv(path, ("image_name_1", "image_name_2"))
        pairs += list(zip(table["image_name_1"].astype(str), table["image_name_2"].astype(str)))
    return pairs


def load_sources(isic_dirs: list[str], ham_dirs: list[str], duplicates: str, challenge_dirs: list[str] = (),
                 unspecified_benign: str = "nv") -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Every source's rows in one validated table, plus the ISIC duplicate pairs. Raises DataError.

    `challenge_dirs` are read for their Training part only; `unspecified_benign` says what ISIC 2020's
    benign rows without a named diagnosis become (`train.sources.jpeg_melanoma.UNSPECIFIED`)."""
    for d in [*isic_dirs, *ham_dirs, *challenge_dirs]:
        if not Path(d).is_dir():
            raise DataError(f"Data folder {d} does not exist.")
    parts = ([load_jpeg_melanoma(Path(d), unspecified_benign) for d in isic_dirs] + [load_ham(Path(d)) for d in ham_dirs]
             + [load_isic_challenge(Path(d), CHALLENGE_PART) for d in challenge_dirs])
    frame = pd.concat(parts, ignore_index=True)
    # The ISIC 2019 set is a union of HAM10000, ISIC 2017 and other archives: where another source has the same
    # image, that source's row stays (lesion groups, sites) and the 2019 copy goes, said out loud.
    again = (frame.source == "isic2019") & frame.image_id.isin(frame.image_id[frame.source != "isic2019"])
    if again.any():
        print(f"{int(again.sum())} ISIC 2019 rows show images another source has; the other source's rows are used.")
        frame = frame[~again].reset_index(drop=True)
    dup = frame["image_id"].duplicated(keep=False)
    if dup.any():
        raise DataError("The same image id appears more than once across the sources: "
                        + listing(sorted(set(frame.loc[dup, "image_id"])), int(dup.sum()), "rows"))
    return frame, load_duplicates(duplicates, [Path(d) for d in isic_dirs])


def config_sources(cfg) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """`load_sources` with a run's settings (a `train.config.Config`, or its YAML as a dict)."""
    get = cfg.get if isinstance(cfg, dict) else (lambda key, default=None: getattr(cfg, key, default))
    return load_sources(get("isic_dirs", []), get("ham_dirs", []), get("isic_duplicates", "auto"),
                        get("challenge_dirs", []) or [], get("unspecified_benign", "nv"))


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
                 meta_dropout: float = 0.0, use_metadata: bool = True, seed: int = 0, colour: str = "none") -> None:
        self.paths = frame["path"].tolist()
        self.labels = torch.tensor([CLASSES.index(c) for c in frame["label"]], dtype=torch.long)
        self.metas = [Metadata(age=a, sex=s, site=t) for a, s, t in zip(ages(frame), frame["sex"], frame["site"])]
        self.image_size, self.colour = image_size, colour
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
            array = prepare(open_image(self.paths[i], min_side=self.image_size), self.image_size, self.colour)  # as served
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
