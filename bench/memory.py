"""The Space's memory under a burst of large uploads: does it stay in budget, and does it come back?

    python bench/memory.py                       # the bundled model, 3 bursts of 8 concurrent 3500×3500 PNGs
    python bench/memory.py --json out.json       # also writes the figures
    python bench/memory.py --patient 30          # each burst also sends one patient of 30 such PNGs (Patient tab)

One run: `python app.py` (README's command, `output/default`) as its own process on a free localhost port; one
/predict, then its resident memory (RSS) at rest; then `--bursts` bursts of `--clients` concurrent /predict calls
through plain HTTP, each with a PNG just under the PNG limit (12.25 MP: the most pixels an upload may make the
server decode in full), while a thread samples the server's RSS every 20 ms (the peak); then the RSS
`--settle` seconds after the last answer. With `--patient N`, each burst also sends one /predict_patient call with N
more such PNGs (distinct files: the same file twice is refused). The Space's budget is 450 MB (issue 30); docs/space.md quotes a run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import cv2  # noqa: E402
import httpx  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402

from bench.app_http import http_predict, http_predict_patient  # noqa: E402
from deploy.rehearse import free_port, stop, wait_for_200  # noqa: E402

BUDGET_MB = 450


def big_png(folder: Path, side: int, index: int) -> str:
    """A `side`² PNG: a skin-coloured field with a dark lesion, a few KB (flat areas compress to nothing)."""
    pixels = np.full((side, side, 3), (224, 172, 150), np.uint8)
    cv2.circle(pixels, (side // 2, side // 2), side // 5, (70 + index, 45, 40), -1)
    path = folder / f"burst-{index}.png"
    cv2.imwrite(str(path), cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR))
    return str(path)


def rss_mb(process: psutil.Process) -> float:
    return process.memory_info().rss / 2**20


class PeakSampler(threading.Thread):
    """The highest RSS seen, sampled every `every` seconds until stopped."""

    def __init__(self, process: psutil.Process, every: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.process, self.every, self.peak, self.done = process, every, 0.0, threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.every):
            self.peak = max(self.peak, rss_mb(self.process))


def measure(args: argparse.Namespace, work: Path) -> dict:
    port = free_port()
    env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
           "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_TEMP_DIR": str(work / "uploads"), "MELANOMA_MODEL": args.model}
    server = subprocess.Popen([sys.executable, "app.py"], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for_200(base + "/", server, 240)
        process = psutil.Process(server.pid)
        images = [big_png(work, args.side, i) for i in range(args.clients)]
        lesions = [big_png(work, args.side, args.clients + i) for i in range(args.patient)]
        with httpx.Client(base_url=base, timeout=300) as http:
            http_predict(http, str(sorted((REPO / "examples").glob("*.jpg"))[0]))
        time.sleep(args.settle)
        figures = {"rest_mb": rss_mb(process)}
        sampler = PeakSampler(process)
        sampler.start()
        answers, patients = [], []
        for _ in range(args.bursts):
            with ThreadPoolExecutor(args.clients + 1) as pool, httpx.Client(base_url=base, timeout=300) as http:
                patient = pool.submit(http_predict_patient, http, lesions) if lesions else None
                answers += list(pool.map(lambda image: http_predict(http, image), images))
                patients += [patient.result()] if patient else []
        sampler.done.set()
        sampler.join()
        time.sleep(args.settle)
        figures.update(peak_mb=sampler.peak, after_mb=rss_mb(process), answers=len(answers),
                       answered_all=all("melanoma_probability" in a for a in answers) and all(
                           len(p["lesions"]) == args.patient for p in patients), patients=len(patients))
        return figures
    finally:
        stop(server)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(REPO / "output" / "default"), help="MELANOMA_MODEL for the app")
    parser.add_argument("--side", type=int, default=3500, help="PNG side in pixels (12.5 MP is the PNG limit)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent requests per burst")
    parser.add_argument("--bursts", type=int, default=3)
    parser.add_argument("--patient", type=int, default=0, help="also one /predict_patient of this many PNGs a burst")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds of quiet before reading the RSS")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        figures = measure(args, Path(tmp))
    figures["after_over_budget"] = figures["after_mb"] / BUDGET_MB
    figures["peak_over_budget"] = figures["peak_mb"] / BUDGET_MB
    patient = f" and one patient of {args.patient}" if args.patient else ""
    print(f"\nThe app's RSS, {args.bursts} bursts of {args.clients} concurrent {args.side}×{args.side} PNGs{patient} "
          f"({figures['answers']} answers, {figures['patients']} patients, all scored: {figures['answered_all']})")
    print("| what | MB | budget | ratio |\n| --- | ---: | ---: | ---: |")
    print(f"| at rest, after one /predict | {figures['rest_mb']:.0f} | | |")
    print(f"| peak during the bursts | {figures['peak_mb']:.0f} | {BUDGET_MB} | {figures['peak_over_budget']:.2f} |")
    print(f"| {args.settle:.0f} s after the last answer | {figures['after_mb']:.0f} | {BUDGET_MB} | "
          f"{figures['after_over_budget']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
