"""The data pipeline alone, images/s on one core (bench/training.py's second part): each stage on its own, the
dearest steps of the augmentation, and the whole `LesionDataset` + `collate` as a loader worker runs it, at the
pipeline size and at 384 px from 512 px JPEGs (what the Kaggle recipe decodes)."""

from __future__ import annotations

import copy
import inspect
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from inference.image import open_image, prepare
from inference.metadata import encode
from train import augment
from train.backbone import data_config
from train.config import Config
from train.data import LesionDataset, collate, config_sources
from train.epoch import batch_to_input


def rows_for(cfg: Config, n: int, seed: int = 0):
    """n rows drawn from the config's real sources, in the training mix (HAM and ISIC together)."""
    frame, _ = config_sources(cfg)
    return frame.sample(n=min(n, len(frame)), random_state=seed).reset_index(drop=True)


def dataset(cfg: Config, rows, size: int) -> LesionDataset:
    return LesionDataset(rows, size, augment.build(cfg.augment, size), cfg.meta_dropout, cfg.metadata_mode == "fused",
                         seed=cfg.seed, colour=cfg.colour_constancy)


def whole_pipeline(cfg: Config, rows, size: int) -> float:
    """Images/s on one core of the Dataset + collate as a loader worker runs it (decode to batch)."""
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    ds = dataset(cfg, rows, size)
    start = time.perf_counter()
    for i in range(0, len(ds), cfg.batch_size):
        collate([ds[j] for j in range(i, min(i + cfg.batch_size, len(ds)))])
    return len(ds) / (time.perf_counter() - start)


def enlarged_rows(rows, side: int, folder: Path):
    """The rows with their images re-encoded as side x side JPEGs in `folder` (Kaggle's 512 px files are
    what the 384 px recipe decodes; the shared images are 256 px and smaller, so they are enlarged)."""
    paths = []
    for path in rows["path"]:
        target = folder / f"{Path(path).stem}.jpg"
        Image.fromarray(open_image(path)).resize((side, side), Image.Resampling.BICUBIC).save(target, quality=95)
        paths.append(str(target))
    return rows.assign(path=paths)


def pipeline(cfg: Config, size: int, n: int) -> dict[str, float]:
    """Images/s on one core: each stage alone, then the whole Dataset + collate as the loader runs it."""
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    rows = rows_for(cfg, n, seed=1)
    ds = dataset(cfg, rows, size)
    dc = data_config(cfg.backbone)
    transform = augment.build(cfg.augment, size)
    out: dict[str, float] = {}

    def rate(name: str, fn, items) -> list:
        start, results = time.perf_counter(), [fn(x) for x in items]
        out[name] = len(items) / (time.perf_counter() - start)
        return results

    images = rate("decode (open_image, EXIF, RGB)", open_image, rows["path"].tolist())
    arrays = rate(f"resize + centre crop to {size} px", lambda im: prepare(im, size), images)
    if transform is not None:
        rng = np.random.default_rng(0)
        costs = step_costs(cfg.augment, size, arrays[:128])
        arrays = rate(f"augment ({cfg.augment!r})", lambda a: np.ascontiguousarray(transform(a, rng)), arrays)
        out.update({f"  its dearest steps, each alone on every image: {name}": 1000 / ms for name, ms in costs.items()})
    rate("metadata encoding", encode, ds.metas)
    out["whole pipeline: Dataset + collate"] = whole_pipeline(cfg, rows, size)
    batch = torch.from_numpy(np.stack(arrays[:cfg.batch_size]))
    start = time.perf_counter()
    for _ in range(8):
        batch_to_input(batch, dc["mean"], dc["std"])
    out["(in the loop, not a worker: normalise the uint8 batch to float, per image)"] = (
        8 * len(batch) / (time.perf_counter() - start))
    return out


def step_costs(kind: str, size: int, arrays: list, top: int = 5) -> dict[str, float]:
    """Milliseconds per image of each single step of the augmentation `kind` (OneOf branches included),
    applied with probability 1 to the same arrays: the dearest `top`, so the slow step has a name."""
    rng = np.random.default_rng(0)
    if kind == "strong":
        def leaves(t):
            inner = getattr(t, "transforms", None)
            return [leaf for child in inner for leaf in leaves(child)] if inner is not None else [t]

        steps = []
        for leaf in leaves(augment.strong_pipeline(size)):
            always = copy.deepcopy(leaf)
            always.p = 1.0
            steps.append((type(leaf).__name__, lambda a, t=always: t(image=a)["image"]))
    else:
        steps = [(f.__name__, (lambda a, f=f: f(a, rng, p=1.0)) if "p" in inspect.signature(f).parameters
                  else (lambda a, f=f: f(a, rng))) for f in augment.STEPS[kind]]
    costs: dict[str, float] = {}
    for name, fn in steps:
        start = time.perf_counter()
        for a in arrays:
            np.ascontiguousarray(fn(a))
        name += f" #{sum(k.startswith(name) for k in costs) + 1}" if name in costs else ""
        costs[name] = 1000 * (time.perf_counter() - start) / len(arrays)
    return dict(sorted(costs.items(), key=lambda kv: -kv[1])[:top])


def pipeline_from_512(cfg: Config, n: int) -> tuple[float, dict[str, float]]:
    """(whole pipeline images/s, its two dearest stages alone) at 384 px from n 512 px JPEGs, one thread."""
    with tempfile.TemporaryDirectory(prefix="bench_512_") as folder:
        rows = enlarged_rows(rows_for(cfg, n, seed=2), 512, Path(folder))
        whole = whole_pipeline(cfg, rows, 384)
        start = time.perf_counter()
        decoded = [open_image(path, min_side=384) for path in rows["path"]]
        stages = {"decode a 512 px JPEG": len(decoded) / (time.perf_counter() - start)}
        start = time.perf_counter()
        for array in decoded:
            prepare(array, 384)
        stages["area-filter resize 512 -> 384 px"] = len(decoded) / (time.perf_counter() - start)
    return whole, stages
