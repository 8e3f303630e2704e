"""Training speed: the real loop vs bare forward/backward, and the data pipeline alone.

    python bench/training.py                                        # train/configs/cpu_default.yaml, 2 threads
    python bench/training.py --config train/configs/kaggle_2xT4.yaml --device cuda   # on a Kaggle GPU
    accelerate launch --multi_gpu --num_processes 2 bench/training.py --smoke --device cuda \
        --config train/configs/kaggle_2xT4.yaml --isic_dirs '[...]' --ham_dirs '[...]'   # the notebook's smoke run

Any training option (`python -m train --help`) may follow and overrides the config, e.g. `--image_size 320`.

1. Loop efficiency. Images/s of `train.epoch.train_one_epoch` (the code that trains the model: DataLoader
   workers decoding real JPEGs, albumentations, metadata, weighted loss, clipping, AdamW, accelerate) vs the
   same model, batch, loss and optimizer stepping on one ready batch. Target: real / bare ≥ 0.9.
2. The data pipeline alone: `LesionDataset` (decode + resize/crop + the config's augmentation + metadata, uint8
   pixels) + `collate`, in this process with one thread, at 256 px: images/s per core (target ≥ 400), with each
   stage timed on its own so the slow one is named; and at 384 px from 512 px JPEGs (target ≥ 200). The
   normalisation to float runs on the batch on the device, in the loop: it is timed, per image, apart.

3. Per GPU (per process): images/s of that same real loop on each process, the share of its step time spent
   waiting for the loader (a share near 1 means the CPUs, not the GPU, set the pace) and peak GPU memory.
   `--smoke` measures only this, on every process of an `accelerate launch`, and writes them to `--json`:
   the Kaggle notebook's smoke cell runs exactly that before training.

Everything is measured in one run, on real ISIC 2020 and HAM10000 images from the config's folders, so the
ratios compare like with like on whatever machine runs it. Random weights: speed does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from accelerate import Accelerator  # noqa: E402
from accelerate.utils import gather_object  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from train.config import Config, make, resolve_config, with_backbone_defaults  # noqa: E402
from train.data import class_weights, collate  # noqa: E402
from train.epoch import Clock, model_input, train_one_epoch  # noqa: E402
from train.ranks import leave  # noqa: E402
from train.setup import build_model, param_groups  # noqa: E402

from bench.pipeline import dataset, pipeline, pipeline_from_512, rows_for  # noqa: E402


class TimedLoader:
    """Wraps a (prepared) DataLoader and times, per batch, the wait for it and the whole step it starts.

    Step i runs from the request for batch i to the request for batch i + 1, so it holds the wait, the
    forward/backward/step and the per-step sync of `train_one_epoch` (which makes the GPU time real)."""

    def __init__(self, loader) -> None:
        self.loader, self.waits, self.starts = loader, [], []

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        iterator = iter(self.loader)
        while True:
            start = time.perf_counter()
            self.starts.append(start)
            try:
                batch = next(iterator)
            except StopIteration:
                return
            self.waits.append(time.perf_counter() - start)
            yield batch

    def figures(self, batch_size: int, warmup: int = 2) -> dict:
        """images/s and loader-wait share of this process over the steps after `warmup` (worker start-up,
        allocator and kernel selection are not what an epoch costs)."""
        steps = [b - a for a, b in zip(self.starts, self.starts[1:])]
        warmup = min(warmup, len(steps) // 2)
        steps, waits = steps[warmup:], self.waits[warmup:len(steps) + warmup]
        total = sum(steps)
        return {"images_per_s": len(steps) * batch_size / total if total else 0.0,
                "loader_wait_share": sum(waits) / total if total else 0.0, "steps_timed": len(steps)}


def real_loop(cfg: Config, n_images: int, device: str, accelerator: Accelerator | None = None):
    """train_one_epoch over n_images real images (sharded over the processes); per-process figures."""
    accelerator = accelerator or Accelerator(cpu=device == "cpu", mixed_precision=cfg.mixed_precision)
    rows = rows_for(cfg, n_images)
    ds = dataset(cfg, rows, cfg.image_size)
    loader = DataLoader(ds, batch_size=cfg.batch_size, shuffle=True, drop_last=True, num_workers=cfg.num_workers,
                        collate_fn=collate, pin_memory=device == "cuda")
    model = build_model(cfg, pretrained=False)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    weights = class_weights(ds.labels, cfg.class_weight_power).to(accelerator.device)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats(accelerator.device)
    timed = TimedLoader(loader)
    stats = train_one_epoch(accelerator, model, timed, optimizer, scheduler, weights, cfg, Clock(None), "real loop")
    mine = {"rank": accelerator.process_index, **timed.figures(cfg.batch_size),
            "peak_gpu_memory_gb": torch.cuda.max_memory_allocated(accelerator.device) / 1e9 if device == "cuda" else None}
    return accelerator, model, optimizer, loader, weights, stats, mine


def loop_vs_bare(cfg: Config, batches: int, device: str) -> tuple[float, float, dict]:
    """Images/s of train_one_epoch over `batches` real batches, of bare steps on one ready batch, and the
    per-process figures of the real loop."""
    accelerator, model, optimizer, loader, weights, stats, mine = real_loop(cfg, (batches + 2) * cfg.batch_size,
                                                                             device)
    real = stats["images"] / stats["seconds"]  # worker start included: what an epoch of this length costs
    batch = next(iter(loader))
    for _ in range(2):  # warm-up (allocator, kernels)
        _bare_step(accelerator, model, optimizer, batch, weights, cfg)
    steps = batches
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        _bare_step(accelerator, model, optimizer, batch, weights, cfg)
    if device == "cuda":
        torch.cuda.synchronize()
    bare = steps * cfg.batch_size / (time.perf_counter() - start)
    return real, bare, mine


def smoke(cfg: Config, n_images: int, device: str, json_path: Path | None) -> None:
    """The notebook's smoke run: every process of an `accelerate launch` trains one epoch of n_images (in all)
    and reports its own images/s, loader-wait share and peak GPU memory; the main process prints and saves."""
    accelerator = Accelerator(cpu=device == "cpu", mixed_precision=cfg.mixed_precision)
    per = cfg.batch_size * accelerator.num_processes
    if n_images < 2 * per:
        n_images = 2 * per  # at least two steps per process
    start = time.perf_counter()
    *_, mine = real_loop(cfg, n_images, device, accelerator)
    ranks = gather_object([mine]) if accelerator.num_processes > 1 else [mine]
    if accelerator.is_main_process:
        result = {"backbone": cfg.backbone, "image_size": cfg.image_size, "batch_size": cfg.batch_size,
                  "num_workers": cfg.num_workers, "processes": accelerator.num_processes, "device": device,
                  "images": n_images, "seconds": time.perf_counter() - start, "ranks": ranks}
        unit = "GPU" if device == "cuda" else "process"
        print(f"\nsmoke run: {cfg.backbone} at {cfg.image_size} px, batch {cfg.batch_size} per {unit}, "
              f"{cfg.num_workers} loader worker(s) per process, {accelerator.num_processes} process(es), "
              f"{n_images} images, {result['seconds']:.0f} s")
        print(f"| process | images/s per {unit} | loader wait share of step time | peak GPU memory GB | steps timed |")
        print("| ---: | ---: | ---: | ---: | ---: |")
        for r in ranks:
            memory = "n/a" if r["peak_gpu_memory_gb"] is None else f"{r['peak_gpu_memory_gb']:.2f}"
            print(f"| {r['rank']} | {r['images_per_s']:.1f} | {r['loader_wait_share']:.2f} | {memory} | "
                  f"{r['steps_timed']} |")
        if json_path:
            json_path.write_text(json.dumps(result, indent=1) + "\n")
    # Every rank leaves together, at once: neither destroy_process_group nor the interpreter's shutdown gets to
    # tear gloo down (that once aborted with SIGABRT after a good run, and once hung for 10 minutes after the
    # table was printed; train.ranks.leave).
    accelerator.wait_for_everyone()
    leave(0)
    accelerator.end_training()  # one process: nothing to leave


def _bare_step(accelerator: Accelerator, model, optimizer, batch: dict, weights, cfg: Config) -> None:
    model.train()
    logits = model(model_input(accelerator, model, batch), batch["meta"]).float()
    loss = F.cross_entropy(logits, batch["label"], weight=weights, label_smoothing=cfg.label_smoothing)
    accelerator.backward(loss)
    if cfg.clip_grad_norm:
        accelerator.clip_grad_norm_(model.parameters(), cfg.clip_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def parse_args() -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="Any other --option is a training option (python -m train --help).")
    parser.add_argument("--config", type=Path, default=REPO / "train" / "configs" / "cpu_default.yaml")
    parser.add_argument("--data", type=Path, help="a folder with isic2020/ and ham10000/ (default: the config's)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for the loop part (CPU)")
    parser.add_argument("--batches", type=int, default=30, help="batches timed in the loop part")
    parser.add_argument("--pipeline-size", type=int, default=256, help="image side for the pipeline part")
    parser.add_argument("--pipeline-images", type=int, default=1024)
    parser.add_argument("--pipeline-only", action="store_true", help="skip the loop part (e.g. B3 at 384 on a CPU)")
    parser.add_argument("--vcpus", type=int, default=4, help="CPUs of the GPU machine to plan for (Kaggle: 4)")
    parser.add_argument("--gpus", type=int, default=2)
    parser.add_argument("--smoke", action="store_true",
                        help="only the per-process real loop (run it under accelerate launch): the notebook's smoke run")
    parser.add_argument("--images", type=int, default=512, help="images in the smoke run's epoch (all processes)")
    parser.add_argument("--json", type=Path, help="write the headline figures to this JSON file (also with --smoke)")
    return parser.parse_known_args()


def bench_config(args: argparse.Namespace, train_options: list[str]) -> Config:
    """The recipe as `python -m train` resolves it, with random weights (no download, same speed)."""
    config = args.config.resolve()
    os.chdir(REPO)  # the configs' data paths are relative to the repository root
    values = asdict(resolve_config(["--config", str(config), *train_options]))
    values["backbone_weights"] = "none"
    if args.data:
        values.update(isic_dirs=[str(args.data / "isic2020")], ham_dirs=[str(args.data / "ham10000")])
    if args.device == "cpu":
        values["mixed_precision"] = "no"
    return with_backbone_defaults(make(values))


def report(cfg: Config, args: argparse.Namespace, loop: tuple | None, stages: dict, from_512: float,
           stages_512: dict) -> dict:
    """The table, the ratios against their targets and the plan for several GPUs; returns the headline figures."""
    real, bare, mine = loop if loop is not None else (None, None, None)
    whole, unit = stages["whole pipeline: Dataset + collate"], "GPU" if args.device == "cuda" else "process"
    print(f"\n{cfg.backbone} at {cfg.image_size} px, batch {cfg.batch_size}, augment {cfg.augment!r}, "
          f"{args.device}, {args.threads} threads, {cfg.num_workers} loader worker(s), torch {torch.__version__}, "
          f"{os.cpu_count()} cores ({args.config.name})")
    print("| what | images/s |\n| --- | ---: |")
    if real is not None:
        print(f"| real training loop (train_one_epoch, {args.batches} batches) | {real:.1f} |")
        print(f"| bare forward/backward/step on one ready batch | {bare:.1f} |")
        print(f"| real loop per {unit}, after 2 warm-up steps | {mine['images_per_s']:.1f} |")
    for name, value in stages.items():
        print(f"| pipeline at {args.pipeline_size} px, 1 core: {name} | {value:.0f} |")
    for name, value in {**stages_512, "whole pipeline: Dataset + collate": from_512}.items():
        print(f"| pipeline at 384 px from 512 px JPEGs, 1 core: {name} | {value:.0f} |")
    if real is not None:
        print(f"\nreal loop / bare fwd-bwd = {real / bare:.2f} (target >= 0.90)")
        print(f"real loop: {mine['images_per_s']:.1f} images/s per {unit}, loader wait "
              f"{mine['loader_wait_share']:.2f} of step time"
              + (f", peak GPU memory {mine['peak_gpu_memory_gb']:.2f} GB" if args.device == "cuda" else ""))
    print(f"data pipeline at {args.pipeline_size} px = {whole:.0f} images/s per core (target >= 400)")
    print(f"data pipeline at 384 px from 512 px JPEGs = {from_512:.0f} images/s per core (target >= 200)")
    # Feeding several GPUs: each of the `gpus` processes needs `bare` images/s (this run's bare rate, meaningful
    # when --device cuda ran on that GPU); the machine's CPUs, minus one per training process, decode for all.
    spare = max(args.vcpus - args.gpus, 1)
    print(f"{args.gpus} GPU processes on {args.vcpus} vCPUs: {spare} CPU(s) left for loader workers "
          f"= ~{spare * whole:.0f} images/s at {args.pipeline_size} px if vCPUs were cores like these"
          + ("" if bare is None else f"; the GPUs need {args.gpus} x bare rate = {args.gpus * bare:.0f} images/s"
             + ("" if args.device == "cuda" else " (a CPU bare rate here: run with --device cuda on the GPU machine)")))
    return {f"pipeline_per_core_{args.pipeline_size}": whole, "pipeline_per_core_384_from_512": from_512,
            "loop_over_bare": None if real is None else real / bare}


def main() -> None:
    args, train_options = parse_args()
    cfg = bench_config(args, train_options)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", args.threads)) if args.smoke else args.threads)
    if args.smoke:
        smoke(cfg, args.images, args.device, args.json)
        return
    loop = None if args.pipeline_only else loop_vs_bare(cfg, args.batches, args.device)
    stages = pipeline(cfg, args.pipeline_size, args.pipeline_images)
    from_512, stages_512 = pipeline_from_512(cfg, min(args.pipeline_images, 512))
    figures = report(cfg, args, loop, stages, from_512, stages_512)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    from train.errors import TrainError

    try:
        main()
    except TrainError as err:  # a bad option or data folder: one line, as `python -m train` says it
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
