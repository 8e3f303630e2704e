"""The bench scripts run end to end on the real data and print the ratios the README quotes.

Tiny sizes: these check that the scripts work (and keep working), not the speeds themselves,
which only mean something on an idle machine (`python bench/training.py`, `python bench/inference.py`).
"""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import REPO


def run(*args: str) -> str:
    done = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def number(pattern: str, text: str) -> float:
    found = re.search(pattern, text)
    assert found, f"{pattern!r} not in:\n{text}"
    return float(found.group(1))


def test_training_bench_times_the_real_loop_and_the_pipeline(data_dir):
    out = run("bench/training.py", "--batches", "2", "--pipeline-images", "32", "--data", str(data_dir))
    assert number(r"real loop / bare fwd-bwd = ([\d.]+)", out) > 0
    assert number(r"data pipeline at 256 px = (\d+) images/s per core", out) > 0
    for stage in ("decode", "resize + centre crop to 256 px", "augment ('strong')", "whole pipeline",
                  "its dearest steps, each alone on every image: CLAHE"):
        assert stage in out, stage


def test_inference_bench_compares_predictor_session_eager_and_both_app_clients(data_dir):
    out = run("bench/inference.py", "--runs", "2", "--data", str(data_dir))
    for batch in (1, 32):
        assert number(rf"batch {batch}: Predictor / bare session = ([\d.]+)x", out) > 0
    assert "app via gradio_client - Predictor" in out
    assert "app via plain HTTP + server-sent events - Predictor" in out
