"""Real 2-process runs on CPU through `accelerate launch --multi_gpu` (gloo), as README's rehearsal.

The whole training function runs on two ranks (status.json records how many formed the group); validation must gather exactly one prediction per
validation image (accelerate pads the last batch so shards are even; gather_for_metrics must drop
the padding), and the AUC it reports must equal a single-process evaluation of the saved weights.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO, make_subset, tiny_args

from inference import layout
from inference.model import CLASSES, probabilities
from train.epoch import batch_to_input
from train.model import MelanomaModel
from train.data import LesionDataset, collate, load_sources
from train.metrics import MEL, auc


def _launch(args: list[str], use_cpu: bool, timeout: float = 600) -> subprocess.CompletedProcess:
    """`accelerate launch --multi_gpu --num_processes 2 -m train ARGS`, the README's CPU rehearsal."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}  # two ranks on two cores
    env.pop("ACCELERATE_USE_CPU", None)
    if use_cpu:
        env["ACCELERATE_USE_CPU"] = "yes"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "train", *args]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def test_two_process_validation_gathers_every_sample_once_and_matches_single_process(data_dir, tmp_path):
    isic, ham = make_subset(tmp_path / "data", data_dir, isic_benign=40, ham_per_dx=8)
    out = tmp_path / "run"
    # eval batch 7 on 2 ranks: the validation fold is (almost surely) not a multiple of 14, so padding happens
    done = _launch(tiny_args(isic, ham, out, epochs=1, train_folds="[0]", eval_batch_size=7, batch_size=8),
                   use_cpu=True)
    assert done.returncode == 0, done.stderr[-3000:]
    status = json.loads((out / "status.json").read_text())
    assert status["processes"] == 2 and status["status"] == "complete"  # two ranks formed one group
    assert "2 process(es) on cpu" in done.stdout

    folds = pd.read_csv(out / "folds.csv", dtype={"image_id": str})
    val_ids = set(folds.image_id[folds.fold == 0])
    gathered = pd.read_csv(out / "fold0" / "best" / "val_predictions.csv", dtype={"image_id": str})
    assert len(gathered) == len(val_ids) and set(gathered.image_id) == val_ids  # exactly N for N
    assert len(val_ids) % 14 != 0
    best = json.loads((out / "fold0" / "best" / "best.json").read_text())

    # single-process evaluation of the saved weights with the same eval transform
    model = MelanomaModel.from_pretrained(str(out / "fold0" / "best")).eval()
    frame, _ = load_sources([str(isic)], [str(ham)], "auto")
    rows = frame.set_index("image_id").loc[gathered.image_id].reset_index()
    dataset = LesionDataset(rows, 64)
    batch = collate([dataset[i] for i in range(len(dataset))])
    with torch.no_grad():
        logits = model(batch_to_input(batch["image"], model.mean, model.std), batch["meta"]).numpy()
    distributed = gathered[[f"logit_{c}" for c in CLASSES]].to_numpy()
    # same weights, different batch composition: float sums may differ in the last bits only
    np.testing.assert_allclose(distributed, logits, rtol=0, atol=1e-4)
    y = (batch["label"].numpy() == MEL).astype(int)
    single_auc = auc(y, probabilities(logits, 1.0)[:, MEL])
    assert single_auc == best["melanoma_auc"] == auc(y, probabilities(distributed, 1.0)[:, MEL])
    assert (out / "model" / "model.safetensors").is_file()  # the main rank finished the run


def test_two_processes_that_do_not_form_a_group_stop_and_both_say_why(data_dir, tmp_path):
    """--multi_gpu without ACCELERATE_USE_CPU on a CPU machine: each rank would train alone into one folder."""
    isic, ham = make_subset(tmp_path / "data", data_dir, isic_benign=40, ham_per_dx=8)
    out = tmp_path / "run"
    done = _launch(tiny_args(isic, ham, out, epochs=1, train_folds="[0]"), use_cpu=False, timeout=300)
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 2 and any(e.startswith("error (rank 1): ") for e in errors), done.stderr[-3000:]
    assert all("ACCELERATE_USE_CPU=yes" in e for e in errors)
    assert not out.exists()  # nothing claimed


SLOW_FINALIZE = """
import sys, time
from datetime import timedelta
from functools import partial

import accelerate
from accelerate.utils import InitProcessGroupKwargs

import train.loop as loop

# A collective timeout of a few seconds (NCCL's is 10 minutes on Kaggle) and a finalize slower than that.
TIMEOUT = {timeout}
loop.Accelerator = partial(accelerate.Accelerator,
                           kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=TIMEOUT))])
real_finalize = loop.finalize

def slow_finalize(*args, **kwargs):
    time.sleep(3 * TIMEOUT)
    return real_finalize(*args, **kwargs)

loop.finalize = slow_finalize
# A rank that writes its checkpoint files after rank 0 has written its own: rank 0 must not rename the folder
# under it.
import os
import accelerate.accelerator as accelerator_module
real_save = accelerator_module.save_accelerator_state

def late_save(*args, **kwargs):
    if os.environ["RANK"] != "0":
        time.sleep(TIMEOUT / 3)  # late, but inside the collective timeout
    return real_save(*args, **kwargs)

accelerator_module.save_accelerator_state = late_save
# The time limit, made deterministic: it "expires" before fold STOP_AT, after the earlier folds are done.
real_train_fold = loop.train_fold
loop.train_fold = lambda *args: "time_limit" if args[4] == {stop_at} else real_train_fold(*args)
sys.exit(loop.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("outcome", ["complete", "time_limit"])
def test_a_finalize_longer_than_the_collective_timeout_still_ends_as_the_run_did(data_dir, tmp_path, outcome):
    """Rank 0 works alone after the folds (OOF table, guard fit, ONNX export, push): no other rank may wait in a
    collective meanwhile (the collective timeout kills it), or exit non-zero (the launcher then stops rank 0);
    either way the run died with status.json saying "running". And a rank slower to write its part of a
    checkpoint must find the folder still there."""
    isic, ham = make_subset(tmp_path / "data", data_dir, isic_benign=40, ham_per_dx=8)
    out = tmp_path / "run"
    script = tmp_path / "slow_finalize.py"
    script.write_text(SLOW_FINALIZE.format(timeout=3, stop_at=1 if outcome == "time_limit" else -1))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "yes"}
    folds = "[0, 1]" if outcome == "time_limit" else "[0]"
    with socket.socket() as s:  # a free port: another job's ranks may be waiting on the default one
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    done = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                           "--main_process_port", port, str(script),
                           *tiny_args(isic, ham, out, epochs=1, train_folds=folds)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    status = json.loads((out / layout.STATUS).read_text())
    assert status["status"] == outcome and status["processes"] == 2, done.stderr[-3000:]
    assert (out / layout.MODEL_DIR / layout.ONNX).is_file() and status["model_dir"] == str(out / layout.MODEL_DIR)
    assert status["folds_done"] == [0]
    # the launcher's exit code: 0, or 1 for a clean time-limit stop (rank 0 exits 75; the notebook reads status.json)
    assert done.returncode == (0 if outcome == "complete" else 1), done.stderr[-3000:]
    if outcome == "time_limit":
        assert "(exitcode: 75)" in done.stderr and not re.search(r"rank\s*: 1 \(local_rank", done.stderr)  # rank 0 only
