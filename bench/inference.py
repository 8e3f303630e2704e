"""Inference speed on this machine: Predictor vs bare onnxruntime vs torch eager vs the app round trip.

    python bench/inference.py                                  # tf_efficientnet_lite0 at 224 px
    python bench/inference.py --backbone tf_efficientnet_b3 --size 300 --no-app

Random weights (speed does not depend on them; `--model` times a model folder), real ISIC 2020 JPEGs. All
rows in one run, the bare session and the Predictor of each batch size in turns (torch eager just before them),
so the ratios compare like with like on any machine; targets and figures: docs/speed.md. The app round trip goes
through `gradio_client` and plain HTTP (`app_round_trips`); the Predictor's time over the bare session is timed
in its own flow (`steps_in_flow`), beside the image steps alone after a memory sweep (`after_sweep`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from bench.app_http import http_predict  # noqa: E402
from inference import Predictor  # noqa: E402
from inference.image import open_image, prepare, to_input  # noqa: E402
from inference.layout import data_root  # noqa: E402
from inference.metadata import META_DIM  # noqa: E402
from train.backbone import data_config  # noqa: E402
from train.network import EagerSession, MelanomaModel, load_model  # noqa: E402
from train.onnx_export import export_onnx  # noqa: E402

TTA_ROW = "Predictor (onnx), batch 1, 8 views in runs of 4 (as the Space)"
REQUEST_BUDGET_MS = 300  # issue 29: a Space request, as served (8 views, every member of an ensemble)


def timings(fn, runs: int, warmup: int = 5) -> tuple[float, float]:
    """p50 and p95 in milliseconds."""
    return interleaved({"fn": fn}, runs, warmup)["fn"]


def interleaved(fns: dict, runs: int, warmup: int = 3) -> dict[str, tuple[float, float]]:
    """p50/p95 of several functions measured in turns (a, b, c, a, b, c, ...): this VM's speed drifts by
    tens of percent within a minute, and timing one row after another would put that drift into the ratios
    between them."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            samples[name].append((time.perf_counter() - start) * 1000)
    return {name: (statistics.median(xs), sorted(xs)[min(len(xs) - 1, int(0.95 * len(xs)))])
            for name, xs in samples.items()}


def steps_in_flow(predictor: Predictor, image: str, runs: int) -> dict[str, float]:
    """Median ms per request of each step as the Predictor runs it (batch 1, as served: 8 views; `runs`
    requests), through its step-timer seam (`Predictor.timer`): the real flow, not a copy of it. Each step
    follows a model run here, which may have pushed its code and data out of the caches (`after_sweep`)."""
    samples: dict[str, list[float]] = {}

    @contextmanager
    def timer(name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            samples.setdefault(name, []).append((time.perf_counter() - start) * 1000)

    predictor.timer = timer
    try:
        for _ in range(5):
            predictor.predict(image, 50, "female", "torso")
        samples.clear()
        for _ in range(runs):
            with timer("whole request"):
                predictor.predict(image, 50, "female", "torso")
    finally:
        predictor.timer = None
    medians = {name: statistics.median(xs) for name, xs in samples.items()}
    steps = sum(ms for name, ms in medians.items() if name != "whole request")
    medians["everything else (batching, copies)"] = medians["whole request"] - steps
    return medians


def after_sweep(fns: dict, runs: int, megabytes: int = 40) -> dict[str, float]:
    """Median ms of each function when a `megabytes` memory sweep (untimed) runs before it, as the model run
    does in a request: the same steps, with cold caches and no onnxruntime involved."""
    sweep = np.ones(megabytes * 2**20 // 8)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            sweep.sum()
            start = time.perf_counter()
            fn()
            samples[name].append((time.perf_counter() - start) * 1000)
    return {name: statistics.median(xs) for name, xs in samples.items()}


def app_round_trips(predictor: Predictor, image: str, runs: int) -> dict[str, tuple[float, float]]:
    """p50/p95 of a request through the app on localhost, two ways: `gradio_client`, and plain HTTP
    (upload, POST /gradio_api/call/predict, read the server-sent events), which is what the browser and
    `curl` do. gradio_client checks for new messages every 50 ms (a sleep in its SSE loop), plain HTTP
    is told the moment the server answers, so the difference is the client's, not the app's."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import httpx
    from gradio_client import Client, handle_file

    import app

    demo = app.build_demo(predictor)  # its own queue settings, as the Space runs it
    demo.launch(prevent_thread_lock=True, quiet=True, server_name="127.0.0.1", **app.LAUNCH)
    try:
        client = Client(demo.local_url, verbose=False)
        rows = {"app via gradio_client, batch 1": timings(
            lambda: client.predict(handle_file(image), 50, "female", "torso", api_name="/predict"), runs)}
        with httpx.Client(base_url=demo.local_url, timeout=60) as http:
            rows["app via plain HTTP + server-sent events, batch 1"] = timings(lambda: http_predict(http, image), runs)
        return rows
    finally:
        demo.close()


@dataclass
class Case:
    """One timed row: `fn` run `runs` times. Cases that share a `group` are timed in turns (`interleaved`), so the
    ratios between them carry none of the VM's drift; a case alone is timed after a one-second pause."""
    name: str
    fn: Callable[[], object]
    runs: int
    group: str | None = None


def model_cases(onnx: Predictor, eager: EagerSession, images: list[Path], runs: int) -> list[Case]:
    """Eager torch, the bare onnxruntime session and the whole Predictor, at batch 1 and 32, on real JPEGs."""
    cases = []
    for batch in (1, 32):
        paths = [str(p) for p in images[:batch]]
        pixels = np.stack([onnx.model_input(p) for p in paths])
        meta = np.zeros((batch, META_DIM), np.float32)
        n = runs if batch == 1 else max(5, runs // 5)
        # Eager PyTorch alone first: its OpenMP threads spin-wait after each forward, and the run that followed
        # one (the Predictor's, when all three took turns) paid for it.
        cases += [Case(f"torch eager, ready tensor, batch {batch}", lambda x=pixels, m=meta: eager.run(x, m), n),
                  Case(f"onnxruntime session, ready tensor, batch {batch}",
                       lambda f={"image": pixels, "meta": meta}: onnx.session.session.run(["logits"], f), n,
                       f"b{batch}"),
                  Case(f"Predictor (onnx): decode+transform+model, batch {batch}",
                       lambda ps=paths, b=batch: onnx.predict_batch(ps, [50] * b, ["female"] * b, ["torso"] * b,
                                                                     tta=False, batch_size=b), n, f"b{batch}")]
    return cases


def upload_cases(onnx: Predictor, space: Predictor, first: str, phone: Path, runs: int) -> list[Case]:
    """Where the Predictor's extra time goes (the steps of `model_input` on one image), a request as `space` (the
    app's Predictor) serves it, and a 12 MP phone JPEG: decoded by libjpeg at 1/4 scale (`min_side`) against a full
    decode."""
    size, mean, std = onnx.config.image_size, onnx.config.mean, onnx.config.std
    opened = open_image(first)
    prepared = prepare(opened, size)
    few = max(5, runs // 5)
    return [Case("  of which: decode (open_image), 1 image", lambda: open_image(first), runs),
            Case(f"  of which: resize + centre crop to {size} px, 1 image", lambda: prepare(opened, size), runs),
            Case("  of which: normalise, 1 image", lambda: to_input(prepared, mean, std), runs),
            Case(TTA_ROW, lambda: space.predict(first, 50, "female", "torso"), runs),
            Case("Predictor (onnx), batch 1, a 12 MP JPEG upload",
                 lambda: onnx.predict(str(phone), 50, "female", "torso", tta=False), few),
            Case("  of which: decode + resize, reduced-scale decode",
                 lambda: prepare(open_image(str(phone), min_side=size), size), few),
            Case("  the same from a full-scale decode (no min_side)",
                 lambda: prepare(open_image(str(phone)), size), few)]


def measure(cases: list[Case]) -> dict[str, tuple[float, float]]:
    """The one runner: p50/p95 ms of every case, in the declared order; a group is timed in turns."""
    rows: dict[str, tuple[float, float]] = {}
    for i, case in enumerate(cases):
        if case.name in rows:
            continue
        if case.group is None:
            time.sleep(1)
            rows[case.name] = timings(case.fn, case.runs)
        else:
            group = {c.name: c.fn for c in cases[i:] if c.group == case.group}
            rows.update(interleaved(group, case.runs))
    return rows


def report(rows: dict, flow: dict, swept: dict, args: argparse.Namespace) -> dict:
    """The one reporter: the table, the steps in the Predictor's flow, the ratios against their targets; returns
    the headline figures (p50) under the names the project's targets use."""
    print(f"\n{args.backbone} at {args.size} px, {args.threads} threads, torch {torch.__version__}, "
          f"{os.cpu_count()} cores")
    print(f"| {'what':<58} |  p50 ms |  p95 ms |\n| {'-' * 58} | ------: | ------: |")
    for name, (p50, p95) in rows.items():
        print(f"| {name:<58} | {p50:7.2f} | {p95:7.2f} |")
    print(f"\nPredictor, batch 1: median ms per request of each step, {args.runs * 4} requests; alone = the table's "
          f"'each step alone' (warm caches); after a sweep = alone, right after an untimed 40 MB memory sweep")
    print("| step | in the Predictor's flow | alone, after a sweep |\n| --- | ---: | ---: |")
    for name, ms in flow.items():
        print(f"| {name} | {ms:.2f} | {f'{swept[name]:.2f}' if name in swept else ''} |")
    print()
    for batch in (1, 32):
        ready = rows[f"onnxruntime session, ready tensor, batch {batch}"][0]
        print(f"batch {batch}: Predictor / bare session = "
              f"{rows[f'Predictor (onnx): decode+transform+model, batch {batch}'][0] / ready:.2f}x (target <= 1.15x); "
              f"torch eager / onnxruntime = {rows[f'torch eager, ready tensor, batch {batch}'][0] / ready:.2f}x")
    predictor, served = rows["Predictor (onnx): decode+transform+model, batch 1"][0], rows[TTA_ROW][0]
    for name in ("app via gradio_client, batch 1", "app via plain HTTP + server-sent events, batch 1"):
        if name in rows:  # the app serves 8 views: its overhead is over the Predictor's 8-view request
            print(f"{name.removesuffix(', batch 1')} - Predictor (8 views) = {rows[name][0] - served:+.1f} ms at p50 "
                  "(target <= +30 ms)")
    print(f"a request as served (8 views): {served:.1f} ms at p50, one view {predictor:.1f} ms (budget <= "
          f"{REQUEST_BUDGET_MS} ms)")
    session = rows["onnxruntime session, ready tensor, batch 1"][0]
    return {"predictor_bs1_ms": predictor, "predictor_over_session_bs1": predictor / session, "session_bs1_ms": session,
            "request_8_views_ms": served}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--data", type=Path, default=data_root(REPO), help="default: $MELANOMA_DATA or ../shared/data")
    parser.add_argument("--no-app", action="store_true", help="skip the gradio_client round trip")
    parser.add_argument("--model", type=Path, help="time this model folder (e.g. output/default, with its guard) "
                                                   "instead of a random --backbone at --size")
    parser.add_argument("--json", type=Path, help="also write the headline figures to this JSON file")
    return parser.parse_args()


def main() -> None:
    import app

    args = parse_args()
    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    images = sorted((args.data / "isic2020" / "train").glob("*.jpg"))[:32]
    folder = Path(tempfile.mkdtemp(prefix="bench_"))
    model_dir = args.model
    if model_dir is None:  # a random model of the asked backbone and size: speed does not depend on the weights
        model = MelanomaModel(backbone=args.backbone, **{**data_config(args.backbone), "image_size": args.size})
        model.save_pretrained(folder)
        export_onnx(model, folder)
        model_dir = folder
    onnx = Predictor.from_pretrained(model_dir, threads=args.threads)
    space = Predictor.from_pretrained(model_dir, threads=args.threads)
    space.rows_per_run = app.ROWS_PER_RUN  # and 8 views: the request as the Space serves it
    args.backbone, args.size = onnx.config.backbone, onnx.config.image_size  # what was really timed
    eager = EagerSession(load_model(model_dir))
    first, phone = str(images[0]), folder / "phone.jpg"  # a real image enlarged to 4000×3000 (12 MP)
    Image.fromarray(open_image(first)).resize((4000, 3000), Image.Resampling.BICUBIC).save(phone, quality=92)
    rows = measure(model_cases(onnx, eager, images, args.runs) + upload_cases(onnx, space, first, phone, args.runs))
    size, opened = args.size, open_image(first)
    prepared = prepare(opened, size)
    swept = after_sweep({"decode": lambda: open_image(first, min_side=size), "resize + centre crop":
                         lambda: prepare(opened, size), "normalise": lambda: to_input(prepared, onnx.config.mean,
                                                                                      onnx.config.std)}, args.runs * 4)
    flow = steps_in_flow(onnx, first, args.runs * 4)
    if not args.no_app:
        rows.update(app_round_trips(onnx, first, args.runs))
    figures = report(rows, flow, swept, args)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
