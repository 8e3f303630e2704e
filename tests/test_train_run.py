"""End-to-end training on real data (tiny), resume after SIGKILL, NaN stop, time limit, Hub push.

One uninterrupted CLI run is the reference: it must produce a complete run folder, and the
interrupted-and-resumed runs must end with exactly its weights.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO, run_cli, start_cli, tiny_args
from huggingface_hub import ModelCard
from safetensors.torch import load_file

from inference import Predictor, layout
from inference.model import CLASSES

# Timing values (images/s, seconds) legitimately differ between runs; everything else must not.
TIMING_KEYS = {"train_images_per_s_mean"}


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / layout.WEIGHTS))


def _metrics(run: Path) -> dict:
    m = json.loads((run / layout.METRICS).read_text())
    return {k: v for k, v in m.items() if k not in TIMING_KEYS}


def test_tiny_real_run_produces_a_complete_run_folder(reference, subset):
    run, done = reference
    for name in (layout.RUN_CONFIG, layout.FOLDS, "oof_predictions.csv", layout.METRICS, "log.csv"):
        assert (run / name).is_file(), name
    model = run / layout.MODEL_DIR
    for name in (layout.CONFIG, layout.WEIGHTS, layout.ONNX, layout.CARD, layout.METRICS, layout.TRAINING_CONFIG,
                 *layout.PLOTS):
        assert (model / name).is_file() and (model / name).stat().st_size > 0, name

    folds = pd.read_csv(run / layout.FOLDS)
    oof = pd.read_csv(run / "oof_predictions.csv")
    assert len(oof) == len(folds) and oof.image_id.is_unique  # both folds trained: every image scored once
    assert set(oof.source) == {"isic2020", "ham10000"}
    assert np.allclose(oof[[f"prob_{c}" for c in CLASSES]].sum(axis=1), 1.0, atol=1e-6)
    # no patient/lesion group in two folds
    assert (folds.groupby("merged_group").fold.nunique() == 1).all()

    metrics = json.loads((run / layout.METRICS).read_text())
    for key in ("melanoma_auc", "melanoma_auc_isic2020", "melanoma_auc_ham10000", "melanoma_pauc_above_80_tpr",
                "sensitivity_at_90_specificity", "sensitivity_at_95_specificity", "malignant_auc",
                "diagnosis_balanced_accuracy", "diagnosis_weighted_f1", "ece_before_temperature",
                "ece_after_temperature"):
        assert metrics[key] is not None and np.isfinite(metrics[key]), key
    assert 0.0 <= metrics["melanoma_pauc_above_80_tpr"] <= 0.2
    assert np.asarray(metrics["confusion_matrix"]["counts"]).sum() == len(oof)
    ham = metrics["diagnosis_ham10000"]  # the seven-class differential on HAM rows only
    assert ham["n_images"] == (oof.source == "ham10000").sum() == np.asarray(ham["confusion_matrix"]["counts"]).sum()
    assert ham["classes"] == ham["confusion_matrix"]["labels"] and ham["classes"] == list(CLASSES)
    assert ham["majority_class_accuracy"] == pytest.approx((oof[oof.source == "ham10000"].label == "nv").mean())
    assert set(metrics["subgroups"]) >= {"sex", "age_band", "site"}
    assert "not recorded" in metrics["skin_type"]
    assert metrics["complete"] is True and metrics["folds_trained"] == [0, 1]

    # the temperature fitted on OOF logits is in the saved config, and the Space's Predictor loads the folder
    config = json.loads((model / layout.CONFIG).read_text())
    assert config["temperature"] == pytest.approx(metrics["temperature"])
    predictor = Predictor.from_pretrained(model)  # model.onnx was exported beside the weights
    image = pd.read_csv(subset[0] / "train.csv").image_name.iloc[0]
    answer = predictor.predict(subset[0] / "train" / f"{image}.jpg", age=50, sex="male", site="torso")
    assert 0.0 <= answer["melanoma_probability"] <= 1.0
    assert not any(k.startswith("module.") for k in _weights(model))

    card = ModelCard.load(model / layout.CARD)  # the Hub's own parser reads the metadata back
    assert card.data.license == "cc-by-nc-4.0" and "melanoma" in card.data.tags and card.data.datasets
    assert card.data.base_model is None  # backbone_weights none: no ImageNet model to name
    reported = {r.metric_name: r.metric_value for r in card.data.eval_results}
    assert reported["melanoma ROC AUC"] == round(metrics["melanoma_auc"], 4)
    assert reported["melanoma sensitivity at 90% specificity"] == round(metrics["sensitivity_at_90_specificity"], 4)
    assert reported["melanoma partial AUC above 80% sensitivity (max 0.2)"] == round(
        metrics["melanoma_pauc_above_80_tpr"], 4)
    assert f"{metrics['melanoma_auc']:.3f}" in card.text
    # every metrics.json key the card template reads exists (Jinja would print a missing one as blank)
    template = (REPO / "train" / "card_template.md").read_text()
    expressions = " ".join(re.findall(r"{{.*?}}|{%.*?%}", template, flags=re.S))
    assert set(re.findall(r"metrics\.(\w+)", expressions)) <= set(metrics)
    # the published model got its out-of-scope guard and triage lines from its own rows, and the card says so
    for name in (layout.GUARD_ARRAYS, layout.GUARD_JSON, layout.OPERATING_POINTS, layout.FOLDS):
        assert (model / name).is_file(), name
    assert "Triage bands" in card.text and "This model has no guard statistics" not in card.text
    assert predictor.predict(subset[0] / "train" / f"{image}.jpg")["triage"]["band"] in ("low", "intermediate", "high")
    for text in ("not a medical device", *layout.PLOTS, "HAM10000", "ISIC 2020", "non-commercial", "Limitations",
                 "Differential diagnosis on HAM10000 rows"):
        assert text in card.text, text
    assert "Traceback" not in done.stderr
    assert json.loads((run / layout.STATUS).read_text())["status"] == "complete"
    # the class × source table, and the warning for each class only one source supplies (HAM10000's rarer ones)
    assert "class × source:" in done.stdout and "ham10000" in done.stdout
    for label in ("akiec", "bcc", "df", "vasc"):
        assert f"warning: class '{label}' comes from one source only (ham10000)" in done.stdout
    assert "warning: class 'mel'" not in done.stdout and "warning: class 'nv'" not in done.stdout  # both sources


def _kill_after_first_epoch(args: list[str], out: Path) -> None:
    proc = start_cli(args)
    marker = out / "fold0" / "states" / "epoch-001" / "COMPLETE"
    deadline = time.monotonic() + 240
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert marker.exists(), "epoch 1 state never appeared"
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / layout.MODEL_DIR).exists() and not (out / layout.METRICS).exists()


def test_killed_after_first_epoch_then_resumed_matches_uninterrupted_run(reference, subset, tmp_path):
    ref_run, _ = reference
    out = tmp_path / "run"
    _kill_after_first_epoch(tiny_args(*subset, out), out)
    done = run_cli(tiny_args(*subset, out) + ["--resume"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from" in done.stdout
    # Bitwise equal: CPU kernels are deterministic for a fixed thread count, the state restores weights,
    # AdamW moments, scheduler and RNG streams exactly, and augmentation is seeded by (seed, epoch, row).
    # So the tightest tolerance holds: exact equality, for weights and for every non-timing metric.
    ref, got = _weights(ref_run / layout.MODEL_DIR), _weights(out / layout.MODEL_DIR)
    assert ref.keys() == got.keys()
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    assert _metrics(out) == _metrics(ref_run)


def test_the_weight_average_is_published_and_survives_a_resume(reference, subset, tmp_path):
    # --ema_decay: the published weights are the average, not those of the same fold trained without it (the
    # reference run's fold 0: same seed, same batches), and a run killed after epoch 1 continues the saved
    # average: the same weights, bit for bit
    ref_run, _ = reference
    options = {"ema_decay": 0.9, "train_folds": "[0]"}
    whole = run_cli(tiny_args(*subset, tmp_path / "whole", **options))
    assert whole.returncode == 0, whole.stderr[-3000:]
    out = tmp_path / "run"
    _kill_after_first_epoch(tiny_args(*subset, out, **options), out)
    assert (out / "fold0" / "states" / "epoch-001" / "ema.safetensors").is_file()
    done = run_cli(tiny_args(*subset, out, **options) + ["--resume"])
    assert done.returncode == 0, done.stderr[-3000:]
    averaged, resumed, plain = (_weights(folder) for folder in (tmp_path / "whole" / layout.MODEL_DIR,
                                                                out / layout.MODEL_DIR, ref_run / "fold0" / "best"))
    assert all(torch.equal(averaged[k], resumed[k]) for k in averaged)
    assert not all(torch.equal(averaged[k], plain[k]) for k in averaged)
    assert _metrics(out) == _metrics(tmp_path / "whole")


KILL_AFTER_RENAME = """
import os, signal
_replace = os.replace
def _replace_then_die(src, dst, *args, **kwargs):
    _replace(src, dst, *args, **kwargs)
    if str(dst).endswith(os.path.join("fold0", "states", "epoch-002")):  # renamed, COMPLETE not yet written
        os.kill(os.getpid(), signal.SIGKILL)
os.replace = _replace_then_die
"""


def test_killed_while_writing_a_checkpoint_resumes_from_the_previous_complete_one(reference, subset, tmp_path):
    ref_run, _ = reference
    out = tmp_path / "run"
    killed = run_cli(tiny_args(*subset, out), prelude=KILL_AFTER_RENAME)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    states = out / "fold0" / "states"
    assert (states / "epoch-002").is_dir() and not (states / "epoch-002" / "COMPLETE").exists()
    assert (states / "epoch-001" / "COMPLETE").is_file()  # the previous complete state is still there

    done = run_cli(tiny_args(*subset, out) + ["--resume"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "removed incomplete state(s) epoch-002" in done.stdout
    assert "epoch-001 (epoch 1 done)" in done.stdout
    ref, got = _weights(ref_run / layout.MODEL_DIR), _weights(out / layout.MODEL_DIR)
    assert all(torch.equal(ref[k], got[k]) for k in ref)


# --- in-process runs: the Hub client is the only thing faked ---------------------------------

class FakeHub:
    """Stands in for huggingface_hub.HfApi; records what would be uploaded."""

    calls: list = []

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, **kwargs):
        FakeHub.calls.append(("create_repo", repo_id))

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        files = sorted(p.name for p in Path(folder_path).iterdir())
        FakeHub.calls.append(("upload_folder", repo_id, folder_path, files, kwargs))
        # what would be uploaded must be loadable as it is
        Predictor.from_pretrained(folder_path)
        return types.SimpleNamespace(oid="0123456789abcdef0123456789abcdef01234567")


@pytest.fixture
def fake_hub(monkeypatch):
    import train.publish

    FakeHub.calls = []
    monkeypatch.setattr(train.publish, "HfApi", FakeHub)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    return FakeHub


def test_push_uploads_the_complete_model_folder_in_one_commit(fake_hub, subset, tmp_path, capsys):
    from train.loop import main

    out = tmp_path / "run"
    # grad_accum 2 and the balanced sampler: the less travelled loop paths, in the same short run
    args = tiny_args(*subset, out, epochs=1, train_folds="[0]", grad_accum=2, imbalance="balanced_sampler")
    args += ["--push_to_hub", "someone/melanoma-test"]
    assert main(args) == 0
    uploads = [c for c in fake_hub.calls if c[0] == "upload_folder"]
    assert len(uploads) == 1
    _, repo, folder, files, _ = uploads[0]
    assert repo == "someone/melanoma-test" and Path(folder) == out / layout.MODEL_DIR
    assert {layout.CONFIG, layout.WEIGHTS, layout.ONNX, layout.CARD, layout.METRICS, layout.TRAINING_CONFIG,
            *layout.PLOTS} <= set(files)
    assert "0123456789abcdef0123456789abcdef01234567" in capsys.readouterr().out


def test_nan_loss_stops_keeps_last_good_state_and_never_pushes(fake_hub, subset, tmp_path, monkeypatch, capsys):
    import torch.nn.functional as F

    import train.epoch
    from train.loop import main

    calls = {"n": 0}

    def cross_entropy(*args, **kwargs):  # NaN from the 10th training batch on (epoch 1 has 8-9 batches)
        loss = F.cross_entropy(*args, **kwargs)
        if kwargs.get("reduction") == "none":
            calls["n"] += 1
            if calls["n"] >= 10:
                return loss * float("nan")
        return loss

    monkeypatch.setattr(train.epoch, "F", types.SimpleNamespace(cross_entropy=cross_entropy))
    out = tmp_path / "run"
    code = main(tiny_args(*subset, out, train_folds="[0]") + ["--push_to_hub", "someone/melanoma-test"])
    assert code != 0
    assert "NaN" in capsys.readouterr().err
    assert (out / "fold0" / "states" / "epoch-001" / "COMPLETE").is_file()
    assert not (out / layout.MODEL_DIR).exists() and not (out / layout.METRICS).exists()
    assert not any(c[0] == "upload_folder" for c in fake_hub.calls)


def test_time_limit_stops_cleanly_and_resume_finishes(subset, tmp_path, capsys):
    from train.loop import EXIT_TIME_LIMIT, main

    out = tmp_path / "run"
    args = tiny_args(*subset, out, epochs=1, train_folds="[0]")
    assert main(args + ["--time_limit", "0.001"]) == EXIT_TIME_LIMIT
    assert "time limit" in capsys.readouterr().out
    assert not (out / layout.MODEL_DIR).exists()
    # the marker the Kaggle notebook reads (the launcher's exit code cannot tell a clean stop from a crash)
    assert json.loads((out / layout.STATUS).read_text()) == {
        "status": "time_limit", "folds_done": [], "model_dir": None, "commit": None, "processes": 1, "machines": 1}
    assert main(args + ["--resume"]) == 0
    assert (out / layout.MODEL_DIR / layout.WEIGHTS).is_file()
    assert json.loads((out / layout.STATUS).read_text())["status"] == "complete"
