"""A real 2-process run on CPU (accelerate's debug_launcher: gloo, forked processes).

The whole training function runs on two ranks; validation must gather exactly one prediction per
validation image (accelerate pads the last batch so shards are even; gather_for_metrics must drop
the padding), and the AUC it reports must equal a single-process evaluation of the saved weights.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from test_train_helpers import make_subset, tiny_args

from inference.backbone import data_config
from inference.model import CLASSES, MelanomaModel
from train.config import resolve, with_backbone_defaults
from train.data import LesionDataset, collate, load_sources
from train.metrics import MEL, auc, softmax

REPO = Path(__file__).resolve().parents[1]


def _train(argv: list[str]) -> None:
    from train.loop import training_function

    torch.set_num_threads(1)  # two ranks on two cores
    training_function(with_backbone_defaults(resolve(argv)))


def test_two_process_validation_gathers_every_sample_once_and_matches_single_process(data_dir, tmp_path):
    isic, ham = make_subset(tmp_path / "data", data_dir, isic_benign=40, ham_per_dx=8)
    out = tmp_path / "run"
    # eval batch 7 on 2 ranks: the validation fold is (almost surely) not a multiple of 14, so padding happens
    argv = tiny_args(isic, ham, out, epochs=1, train_folds="[0]", eval_batch_size=7, batch_size=8)
    # debug_launcher forks; forking this pytest process, whose earlier tests left torch/onnxruntime
    # thread pools running, can deadlock the children. A fresh interpreter forks cleanly.
    code = ("import json, sys; from accelerate import debug_launcher; from test_train_distributed import _train; "
            f"debug_launcher(_train, args=(json.loads({json.dumps(argv)!r}),), num_processes=2)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

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
    dc = data_config("test_efficientnet")
    dataset = LesionDataset(rows, 64, dc["mean"], dc["std"])
    batch = collate([dataset[i] for i in range(len(dataset))])
    with torch.no_grad():
        logits = model(batch["image"], batch["meta"]).numpy()
    distributed = gathered[[f"logit_{c}" for c in CLASSES]].to_numpy()
    # same weights, different batch composition: float sums may differ in the last bits only
    np.testing.assert_allclose(distributed, logits, rtol=0, atol=1e-4)
    y = (batch["label"].numpy() == MEL).astype(int)
    single_auc = auc(y, softmax(logits)[:, MEL])
    assert single_auc == best["melanoma_auc"] == auc(y, softmax(distributed)[:, MEL])
    assert (out / "model" / "model.safetensors").is_file()  # the main rank finished the run
