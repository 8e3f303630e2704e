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
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO, make_subset, tiny_args

from inference import layout
from inference.model import CLASSES, probabilities
from train.epoch import batch_to_input
from train.network import MelanomaModel
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


def _machine(rank: int, port: int, args: list[str], log: Path) -> subprocess.Popen:
    """One `accelerate launch` per "machine", as docs/training.md's two-machine commands, here both on loopback."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "yes"}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "2",
               "--num_processes", "2", "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1",
               "--main_process_port", str(port), "--mixed_precision", "no", "--dynamo_backend", "no",
               "-m", "train", *args]
    with open(log, "w") as out:
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_machines_on_loopback_survive_one_dying_and_finish_with_resume(data_dir, tmp_path):
    """`--num_machines 2`: one process on each of two "machines" (two launches on loopback, gloo) form one group
    and share the run folder (a shared file system's role). When every process of machine 1 is killed, machine 0's
    rank says so in one line and exits within seconds; the same commands with --resume finish the run, and
    status.json records 2 processes on 2 machines."""
    import psutil

    isic, ham = make_subset(tmp_path / "data", data_dir, isic_benign=40, ham_per_dx=8)
    out = tmp_path / "run"
    args = tiny_args(isic, ham, out, epochs=30, train_folds="[0]", batch_size=8)
    port, logs = _free_port(), [tmp_path / f"machine{rank}.log" for rank in (0, 1)]
    machines = [_machine(rank, port, args, logs[rank]) for rank in (0, 1)]
    try:
        deadline = time.monotonic() + 300
        while "epoch 3/30" not in logs[0].read_text() and time.monotonic() < deadline and machines[0].poll() is None:
            time.sleep(0.2)
        assert "epoch 3/30" in logs[0].read_text(), logs[0].read_text()[-3000:]
        for process in [psutil.Process(machines[1].pid), *psutil.Process(machines[1].pid).children(recursive=True)]:
            process.kill()  # the whole machine: its launcher and its training process
        killed = time.monotonic()
        assert machines[0].wait(timeout=120) != 0
        assert time.monotonic() - killed < 60
    finally:
        for m in machines:
            if m.poll() is None:
                m.kill()
    said = [line for line in logs[0].read_text().splitlines() if line.startswith("error (rank 0): lost contact")]
    assert len(said) == 1 and "--resume" in said[0], logs[0].read_text()[-3000:]  # one line, not a traceback
    assert "Traceback" not in logs[0].read_text().split(said[0])[0]  # (the launcher's own report follows it)
    assert json.loads((out / layout.STATUS).read_text())["status"] == "running"

    port, logs = _free_port(), [tmp_path / f"resumed{rank}.log" for rank in (0, 1)]
    machines = [_machine(rank, port, [*args, "--resume"], logs[rank]) for rank in (0, 1)]
    try:
        codes = [m.wait(timeout=600) for m in machines]
    finally:
        for m in machines:
            if m.poll() is None:
                m.kill()
    text = [log.read_text() for log in logs]
    assert codes == [0, 0], text[0][-3000:] + text[1][-3000:]
    assert "resumed from" in text[0]
    status = json.loads((out / layout.STATUS).read_text())
    assert status["status"] == "complete" and status["processes"] == 2 and status["machines"] == 2, status
    assert re.search(r"2 process\(es\) on cpu\S* across 2 machines", text[0]), text[0][-2000:]
    assert (out / layout.MODEL_DIR / layout.ONNX).is_file()
