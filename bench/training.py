"""Training speed: the real loop vs bare forward/backward, and the data pipeline alone.

    python bench/training.py                                        # train/configs/cpu_default.yaml, 2 threads
    python bench/training.py --config train/configs/kaggle_2xT4.yaml --device cuda   # on a Kaggle GPU

1. Loop efficiency. Images/s of `train.loop.train_one_epoch` (the code that trains the model: DataLoader
   workers decoding real JPEGs, albumentations, metadata, weighted loss, clipping, AdamW, accelerate) vs the
   same model, batch, loss and optimizer stepping on one ready batch. Target: real / bare ≥ 0.9.
2. The data pipeline alone: `LesionDataset` (decode + resize/crop + the config's augmentation + normalise +
   metadata) + `collate`, in this process with one thread, at 256 px: images/s per core (target ≥ 400),
   with each stage timed on its own so the slow one is named.

Everything is measured in one run, on real ISIC 2020 and HAM10000 images from the config's folders, so the
ratios compare like with like on whatever machine runs it. Random weights: speed does not depend on them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from accelerate import Accelerator  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from inference.backbone import data_config  # noqa: E402
from inference.image import open_image, prepare, to_tensor  # noqa: E402
from inference.metadata import encode  # noqa: E402
from train import augment  # noqa: E402
from train.config import Config, load_yaml, make  # noqa: E402
from train.data import LesionDataset, class_weights, collate, load_sources  # noqa: E402
from train.loop import Clock, build_model, param_groups, train_one_epoch  # noqa: E402


def rows_for(cfg: Config, n: int, seed: int = 0):
    """n rows drawn from the config's real sources, in the training mix (HAM and ISIC together)."""
    frame, _ = load_sources(cfg.isic_dirs, cfg.ham_dirs, cfg.isic_duplicates)
    return frame.sample(n=min(n, len(frame)), random_state=seed).reset_index(drop=True)


def dataset(cfg: Config, rows, size: int) -> LesionDataset:
    dc = data_config(cfg.backbone)
    return LesionDataset(rows, size, dc["mean"], dc["std"], augment.build(cfg.augment, size), cfg.meta_dropout,
                         cfg.metadata_mode == "fused", seed=cfg.seed)


def loop_vs_bare(cfg: Config, batches: int, device: str) -> tuple[float, float]:
    """Images/s of train_one_epoch over `batches` real batches, and of bare steps on one ready batch."""
    accelerator = Accelerator(cpu=device == "cpu", mixed_precision=cfg.mixed_precision)
    rows = rows_for(cfg, (batches + 2) * cfg.batch_size)
    ds = dataset(cfg, rows, cfg.image_size)
    loader = DataLoader(ds, batch_size=cfg.batch_size, shuffle=True, drop_last=True, num_workers=cfg.num_workers,
                        collate_fn=collate, pin_memory=device == "cuda")
    model = build_model(cfg, pretrained=False)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    weights = class_weights(ds.labels, cfg.class_weight_power).to(accelerator.device)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)

    # Warm-up (allocator, kernels), then one timed pass: what an epoch costs per image, worker start included.
    batch = next(iter(loader))
    for _ in range(2):
        _bare_step(accelerator, model, optimizer, batch, weights, cfg)
    stats = train_one_epoch(accelerator, model, loader, optimizer, scheduler, weights, cfg, Clock(None), "real loop")
    real = stats["images"] / stats["seconds"]

    steps = batches
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        _bare_step(accelerator, model, optimizer, batch, weights, cfg)
    if device == "cuda":
        torch.cuda.synchronize()
    bare = steps * cfg.batch_size / (time.perf_counter() - start)
    return real, bare


def _bare_step(accelerator: Accelerator, model, optimizer, batch: dict, weights, cfg: Config) -> None:
    model.train()
    logits = model(batch["image"], batch["meta"]).float()
    loss = F.cross_entropy(logits, batch["label"], weight=weights, label_smoothing=cfg.label_smoothing)
    accelerator.backward(loss)
    if cfg.clip_grad_norm:
        accelerator.clip_grad_norm_(model.parameters(), cfg.clip_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


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

        def aug(a):
            transform.set_random_seed(int(rng.integers(2**31)))
            return transform(image=a)["image"]

        costs = transform_costs(transform, arrays[:128])
        arrays = rate(f"augment ({cfg.augment!r})", aug, arrays)
        out.update({f"  its dearest steps, each alone on every image: {name}": 1000 / ms for name, ms in costs.items()})
    rate("normalise to a tensor", lambda a: to_tensor(a, dc["mean"], dc["std"]), arrays)
    rate("metadata encoding", encode, ds.metas)
    start = time.perf_counter()
    for i in range(0, len(ds), cfg.batch_size):
        collate([ds[j] for j in range(i, min(i + cfg.batch_size, len(ds)))])
    out["whole pipeline: Dataset + collate"] = len(ds) / (time.perf_counter() - start)
    return out


def transform_costs(transform, arrays: list, top: int = 5) -> dict[str, float]:
    """Milliseconds per image of each single transform inside `transform` (OneOf branches included), applied
    with probability 1 to the same arrays: the dearest `top`, so the slow step has a name."""
    import copy

    def leaves(t):
        inner = getattr(t, "transforms", None)
        return [leaf for child in inner for leaf in leaves(child)] if inner is not None else [t]

    costs = {}
    for leaf in leaves(transform):
        always = copy.deepcopy(leaf)
        always.p = 1.0
        start = time.perf_counter()
        for a in arrays:
            always(image=a)
        name = type(leaf).__name__
        name += f" #{sum(k.startswith(name) for k in costs) + 1}" if name in costs else ""
        costs[name] = 1000 * (time.perf_counter() - start) / len(arrays)
    return dict(sorted(costs.items(), key=lambda kv: -kv[1])[:top])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=REPO / "train" / "configs" / "cpu_default.yaml")
    parser.add_argument("--data", type=Path, help="a folder with isic2020/ and ham10000/ (default: the config's)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for the loop part (CPU)")
    parser.add_argument("--num_workers", type=int, help="loader workers for the loop part (default: the config's)")
    parser.add_argument("--batches", type=int, default=30, help="batches timed in the loop part")
    parser.add_argument("--pipeline-size", type=int, default=256, help="image side for the pipeline part")
    parser.add_argument("--pipeline-images", type=int, default=1024)
    parser.add_argument("--vcpus", type=int, default=4, help="CPUs of the GPU machine to plan for (Kaggle: 4)")
    parser.add_argument("--gpus", type=int, default=2)
    args = parser.parse_args()
    os.chdir(REPO)  # the configs' data paths are relative to the repository root
    values = {**load_yaml(args.config), "backbone_weights": "none"}  # random weights: no download, same speed
    if args.data:
        values.update(isic_dirs=[str(args.data / "isic2020")], ham_dirs=[str(args.data / "ham10000")])
    if args.num_workers is not None:
        values["num_workers"] = args.num_workers
    cfg = make(values)
    torch.set_num_threads(args.threads)

    real, bare = loop_vs_bare(cfg, args.batches, args.device)
    stages = pipeline(cfg, args.pipeline_size, args.pipeline_images)
    whole = stages["whole pipeline: Dataset + collate"]

    print(f"\n{cfg.backbone} at {cfg.image_size} px, batch {cfg.batch_size}, augment {cfg.augment!r}, "
          f"{args.device}, {args.threads} threads, {cfg.num_workers} loader worker(s), torch {torch.__version__}, "
          f"{os.cpu_count()} cores ({args.config.name})")
    print("| what | images/s |\n| --- | ---: |")
    print(f"| real training loop (train_one_epoch, {args.batches} batches) | {real:.1f} |")
    print(f"| bare forward/backward/step on one ready batch | {bare:.1f} |")
    for name, value in stages.items():
        print(f"| pipeline at {args.pipeline_size} px, 1 core: {name} | {value:.0f} |")
    print(f"\nreal loop / bare fwd-bwd = {real / bare:.2f} (target >= 0.90)")
    print(f"data pipeline at {args.pipeline_size} px = {whole:.0f} images/s per core (target >= 400)")
    # Feeding several GPUs: each of the `gpus` processes needs `bare` images/s (this run's bare rate, meaningful
    # when --device cuda ran on that GPU); the machine's CPUs, minus one per training process, decode for all.
    spare = max(args.vcpus - args.gpus, 1)
    print(f"{args.gpus} GPU processes on {args.vcpus} vCPUs: {spare} CPU(s) left for loader workers "
          f"= ~{spare * whole:.0f} images/s at {args.pipeline_size} px if vCPUs were cores like these; "
          f"the GPUs need {args.gpus} x bare rate = {args.gpus * bare:.0f} images/s"
          + ("" if args.device == "cuda" else " (a CPU bare rate here: run with --device cuda on the GPU machine)"))


if __name__ == "__main__":
    main()
