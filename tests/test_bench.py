"""The bench scripts run end to end on the real data, and their summary ratios follow from their own rows.

Tiny sizes: the speeds themselves mean something only on an idle machine (`python bench/training.py`,
`python bench/inference.py`, `python bench/footprint.py`; README "Speed" and "Run the app"). What can break, and is checked here, is the arithmetic
between the table the scripts print and the ratios README quotes, and the rows the README names.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from conftest import REPO


def run(*args: str) -> str:
    done = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def number(pattern: str, text: str) -> float:
    found = re.search(pattern, text)
    assert found, f"{pattern!r} not in:\n{text}"
    return float(found.group(1))


def row(name: str, text: str, column: int = 0) -> float:
    """A table row's figure: `| name | figure | ... |`."""
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == name:
            return float(cells[1 + column])
    raise AssertionError(f"no row {name!r} in:\n{text}")


def test_training_bench_summary_follows_from_its_rows(data_dir, tmp_path):
    out = run("bench/training.py", "--batches", "2", "--pipeline-images", "32", "--data", str(data_dir),
              "--json", str(tmp_path / "training.json"), "--augment", "strong")  # the kind with named steps
    figures = json.loads((tmp_path / "training.json").read_text())
    loop = row("real training loop (train_one_epoch, 2 batches)", out)
    bare = row("bare forward/backward/step on one ready batch", out)
    # the rows are printed to 0.1 image/s: on a busy machine (a few images/s) that rounding alone moves the ratio
    rounding = loop / bare * (0.05 / loop + 0.05 / bare) + 0.006
    assert number(r"real loop / bare fwd-bwd = ([\d.]+)", out) == pytest.approx(loop / bare, abs=rounding)
    assert figures["loop_over_bare"] == pytest.approx(loop / bare, abs=rounding)
    whole = row("pipeline at 256 px, 1 core: whole pipeline: Dataset + collate", out)
    assert number(r"data pipeline at 256 px = (\d+) images/s per core", out) == pytest.approx(whole, abs=0.6)
    assert figures["pipeline_per_core_256"] == pytest.approx(whole, abs=0.6)
    from_512 = row("pipeline at 384 px from 512 px JPEGs, 1 core: whole pipeline: Dataset + collate", out)
    assert figures["pipeline_per_core_384_from_512"] == pytest.approx(from_512, abs=0.6) and from_512 > 0
    # the whole pipeline cannot beat its slowest stage, each measured alone on the same images
    stages = [row(f"pipeline at 256 px, 1 core: {s}", out) for s in (
        "decode (open_image, EXIF, RGB)", "resize + centre crop to 256 px", "augment ('strong')")]
    assert whole <= min(stages) * 1.25
    assert "its dearest steps, each alone on every image: CLAHE" in out


def test_inference_bench_ratios_follow_from_its_rows(data_dir, tmp_path):
    out = run("bench/inference.py", "--runs", "2", "--data", str(data_dir), "--json", str(tmp_path / "inference.json"))
    figures = json.loads((tmp_path / "inference.json").read_text())
    session1 = row("onnxruntime session, ready tensor, batch 1", out)
    assert figures["predictor_bs1_ms"] == pytest.approx(row("Predictor (onnx): decode+transform+model, batch 1", out),
                                                        abs=0.006)
    assert figures["predictor_over_session_bs1"] == pytest.approx(figures["predictor_bs1_ms"] / session1, rel=1e-3)
    for batch in (1, 32):
        session = row(f"onnxruntime session, ready tensor, batch {batch}", out)
        eager = row(f"torch eager, ready tensor, batch {batch}", out)
        predictor = row(f"Predictor (onnx): decode+transform+model, batch {batch}", out)
        assert number(rf"batch {batch}: Predictor / bare session = ([\d.]+)x", out) == pytest.approx(
            predictor / session, abs=0.006)
        # rows are printed to 0.01 ms: on a loaded machine eager torch can be 30x the session, and that rounding
        # then moves the ratio by more than its own printed 0.01
        rounding = eager / session * (0.005 / eager + 0.005 / session) + 0.006
        assert number(rf"batch {batch}: .* torch eager / onnxruntime = ([\d.]+)x", out) == pytest.approx(
            eager / session, abs=rounding)
    # the in-flow breakdown: every step of the Predictor's flow was timed through its timer seam, and the rest
    # is the whole request less the named steps (a random model here: no guard, so no guard row;
    # `--model output/default` adds "guard")
    steps = ("decode", "resize + centre crop", "normalise", "metadata", "model", "calibration", "answer")
    flow = {name: row(name, out) for name in steps}
    assert "| guard |" not in out
    assert all(ms > 0 for ms in flow.values()), flow
    assert row("everything else (batching, copies)", out) == pytest.approx(
        row("whole request", out) - sum(flow.values()), abs=0.05)
    for name in steps[:3]:
        assert row(name, out, column=1) > 0  # the same step alone after a memory sweep
    served = row("Predictor (onnx), batch 1, 8 views in runs of 4 (as the Space)", out)
    assert figures["request_8_views_ms"] == pytest.approx(served, abs=0.006)
    assert number(r"a request as served \(8 views\): ([\d.]+) ms", out) == pytest.approx(served, abs=0.06)
    for client in ("gradio_client", "plain HTTP + server-sent events"):  # the app serves 8 views
        app = row(f"app via {client}, batch 1", out)
        assert number(rf"app via {re.escape(client)} - Predictor \(8 views\) = \+?(-?[\d.]+) ms", out) == \
            pytest.approx(app - served, abs=0.06)


def test_space_bench_builds_the_staged_space_without_torch(tmp_path):
    out = run("bench/footprint.py", "--rounds", "1", "--json", str(tmp_path / "space.json"))
    figures = json.loads((tmp_path / "space.json").read_text())
    assert figures["torch_modules_after_import_app"] == [] and "| [] | [] |" in out
    for name, key in (("venv size, MB", "venv_mb"), ("server RSS after one /predict, MB", "rss_after_request_mb"),
                      ("cold start − import gradio, s", "cold_start_over_import_gradio_s")):
        assert row(name, out) == pytest.approx(figures[key], abs=0.051), name
    assert figures["cold_start_over_import_gradio_s"] == pytest.approx(
        figures["cold_start_s"] - figures["import_gradio_s"], abs=1e-9)
    assert 0 < figures["venv_mb"] < 2000 and 0 < figures["rss_after_request_mb"] < 2000


def test_memory_bench_prints_the_rss_rows_and_their_ratios(tmp_path):
    """bench/memory.py end to end at a small size: the app answers every burst and the ratios follow from the rows."""
    out = run("bench/memory.py", "--side", "1200", "--clients", "2", "--bursts", "1", "--settle", "1",
              "--patient", "3", "--json", str(tmp_path / "memory.json"))
    figures = json.loads((tmp_path / "memory.json").read_text())
    assert figures["answers"] == 2 and figures["patients"] == 1 and figures["answered_all"] is True
    assert "and one patient of 3" in out
    after = row("1 s after the last answer", out)
    assert after == pytest.approx(figures["after_mb"], abs=0.5)
    assert row("1 s after the last answer", out, column=2) == pytest.approx(figures["after_mb"] / 450, abs=0.006)
    assert row("peak during the bursts", out) >= row("at rest, after one /predict", out) - 0.5


def test_patient_bench_ratio_follows_from_its_rows(data_dir, tmp_path):
    out = run("bench/patient.py", "--lesions", "3", "--runs", "1", "--data", str(data_dir),
              "--json", str(tmp_path / "patient.json"))
    together = row("predict_patient, 3 lesions (as the Space)", out)
    alone = row("predict, the same 3 lesions one by one", out)
    assert number(r"= ([\d.]+) of the 3 s budget", out) == pytest.approx(together / 3, abs=0.006)
    assert number(r"one by one / together = ([\d.]+)x", out) == pytest.approx(alone / together, rel=0.05, abs=0.01)
    figures = json.loads((tmp_path / "patient.json").read_text())
    assert figures["lesions"] == 3 and figures["patient_s"] == pytest.approx(together, abs=0.006)
