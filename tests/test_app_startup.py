"""`python app.py` without a usable model: one line saying how to get one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import REPO

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


import app  # noqa: E402  (app.py sits at the repository root; the Blocks it builds have analytics off)

pytestmark = pytest.mark.usefixtures("tripwire")  # no connection leaves the loopback (app_helpers)


def test_no_model_is_one_clear_line(tmp_path):
    """`python app.py` without a usable model: exit 1 with one line saying how to get one, no traceback."""
    env = {**os.environ, "MELANOMA_MODEL": str(tmp_path / "no-such-model"), "GRADIO_ANALYTICS_ENABLED": "False",
           "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, str(REPO / "app.py")], env=env, cwd=tmp_path, text=True,
                         capture_output=True, timeout=120)
    assert run.returncode == 1, (run.stdout, run.stderr)
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in run.stderr, run.stderr
    assert "no-such-model" in lines[0] and "MELANOMA_MODEL" in lines[0]
    assert "python -m train --config train/configs/cpu_default.yaml" in lines[0]


@pytest.mark.parametrize("kind", ["missing folder", "empty folder", "corrupt weights", "unknown backbone",
                                  "hub id offline"])
def test_every_unusable_model_is_one_line(kind, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = tmp_path / "model"
    if kind != "missing folder":
        folder.mkdir()
    if kind == "corrupt weights":
        shutil.copy(tiny_model_dir / "config.json", folder)
        (folder / "model.safetensors").write_bytes(b"not safetensors")
    if kind == "unknown backbone":
        shutil.copy(tiny_model_dir / "model.safetensors", folder)
        config = json.loads((tiny_model_dir / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "backbone": "no_such_net"}))
    source = "org/not-in-cache@0123abc" if kind == "hub id offline" else str(folder)
    with pytest.raises(SystemExit) as exit_:
        app.load_predictor(source)
    message = str(exit_.value.code)
    assert "\n" not in message and source in message and "MELANOMA_MODEL" in message, message


def test_the_space_runs_a_few_images_per_run_of_the_graph(tiny_model_dir):
    """The memory peak of a burst of uploads is the graph's activations (bench/memory.py): the app's Predictor
    runs half a request's 8 views at a time."""
    predictor = app.load_predictor(str(tiny_model_dir))
    assert predictor.rows_per_run == app.ROWS_PER_RUN == 4
