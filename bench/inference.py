"""Inference speed on this machine: Predictor vs bare onnxruntime vs torch eager vs the app round trip.

    python bench/inference.py                                  # tf_efficientnet_lite0 at 224 px
    python bench/inference.py --backbone tf_efficientnet_b3 --size 300 --no-app

Random weights (speed does not depend on them), real ISIC 2020 JPEGs from ../shared/data. All rows
are measured in one run, so the ratios compare like with like on whatever machine runs it. Targets
(issue 5): Predictor ≤ 1.15× the bare session; app round trip ≤ Predictor + 30 ms at p50.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from inference import MelanomaModel, Predictor  # noqa: E402
from inference.backbone import data_config  # noqa: E402
from inference.metadata import META_DIM  # noqa: E402
from train.onnx_export import export_onnx  # noqa: E402


def timings(fn, runs: int, warmup: int = 5) -> tuple[float, float]:
    """p50 and p95 in milliseconds."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, int(0.95 * len(samples)))]


def app_round_trip(predictor: Predictor, image: str, runs: int) -> tuple[float, float]:
    """p50/p95 of gradio_client → app → Predictor → JSON, on localhost."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from gradio_client import Client, handle_file

    import app

    demo = app.build_demo(predictor)
    demo.queue().launch(prevent_thread_lock=True, quiet=True, server_name="127.0.0.1")
    try:
        client = Client(demo.local_url, verbose=False)
        call = lambda: client.predict(handle_file(image), 50, "female", "torso", api_name="/predict")  # noqa: E731
        return timings(call, runs)
    finally:
        demo.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--no-app", action="store_true", help="skip the gradio_client round trip")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)

    images = sorted((args.data / "isic2020" / "train").glob("*.jpg"))[:32]
    folder = Path(tempfile.mkdtemp(prefix="bench_"))
    model = MelanomaModel(backbone=args.backbone, **{**data_config(args.backbone), "image_size": args.size})
    model.save_pretrained(folder)
    export_onnx(model, folder)
    onnx = Predictor.from_pretrained(folder, backend="onnx")
    eager = Predictor.from_pretrained(folder, backend="torch")
    rows: dict[str, tuple[float, float]] = {}
    for batch in (1, 32):
        paths = [str(p) for p in images[:batch]]
        pixels = torch.stack([onnx.image_tensor(p) for p in paths])
        feeds = {"image": pixels.numpy(), "meta": np.zeros((batch, META_DIM), np.float32)}
        runs = args.runs if batch == 1 else max(5, args.runs // 5)
        rows[f"onnxruntime session, ready tensor, batch {batch}"] = timings(
            lambda: onnx.onnx.session.run(["logits"], feeds), runs)
        with torch.inference_mode():
            rows[f"torch eager, ready tensor, batch {batch}"] = timings(
                lambda: eager.model(pixels, torch.zeros(batch, META_DIM)), runs)
        rows[f"Predictor (onnx): decode+transform+model, batch {batch}"] = timings(
            lambda: onnx.predict_batch(paths, [50] * batch, ["female"] * batch, ["torso"] * batch, batch_size=batch),
            runs)
    if not args.no_app:
        rows["app via gradio_client, batch 1"] = app_round_trip(onnx, str(images[0]), args.runs)

    print(f"\n{args.backbone} at {args.size} px, {args.threads} threads, torch {torch.__version__}, "
          f"{os.cpu_count()} cores")
    print(f"| {'what':<58} | p50 ms | p95 ms |\n| {'-' * 58} | -----: | -----: |")
    for name, (p50, p95) in rows.items():
        print(f"| {name:<58} | {p50:6.1f} | {p95:6.1f} |")
    print()
    for batch in (1, 32):
        ready = rows[f"onnxruntime session, ready tensor, batch {batch}"][0]
        print(f"batch {batch}: Predictor / bare session = "
              f"{rows[f'Predictor (onnx): decode+transform+model, batch {batch}'][0] / ready:.2f}x (target <= 1.15x); "
              f"torch eager / onnxruntime = {rows[f'torch eager, ready tensor, batch {batch}'][0] / ready:.2f}x")
    if not args.no_app:
        extra = rows["app via gradio_client, batch 1"][0] - rows["Predictor (onnx): decode+transform+model, batch 1"][0]
        print(f"app round trip - Predictor = {extra:+.1f} ms at p50 (target <= +30 ms)")


if __name__ == "__main__":
    main()
