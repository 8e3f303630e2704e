"""Bad data → one clear message naming the problem, a non-zero exit, no traceback, no success artefacts.

Each case runs the real CLI in a subprocess on a real-data subset with one thing broken.
"""

from __future__ import annotations

import os

import pandas as pd
import pytest
from conftest import make_subset, run_cli, tiny_args

SUCCESS_ARTEFACTS = ("model", "metrics.json", "oof_predictions.csv")


def _break_missing_column(isic, ham):
    rows = pd.read_csv(isic / "train.csv")
    rows.drop(columns=["anatom_site_general_challenge"]).to_csv(isic / "train.csv", index=False)
    return ["missing required column(s) anatom_site_general_challenge", str(isic / "train.csv")]


def _break_missing_image(isic, ham):
    rows = pd.read_csv(ham / "HAM10000_metadata.csv")
    rows.loc[rows.index[:3], "image_id"] = ["ISIC_9999991", "ISIC_9999992", "ISIC_9999993"]
    rows.to_csv(ham / "HAM10000_metadata.csv", index=False)
    return ["Missing images", "3 of", "ISIC_9999991", "ISIC_9999992", "ISIC_9999993"]


def _break_unknown_site(isic, ham):
    rows = pd.read_csv(isic / "train.csv")
    rows.loc[rows.index[4], "anatom_site_general_challenge"] = "elbow"
    rows.to_csv(isic / "train.csv", index=False)
    return ["anatomical site", "'elbow'", "line 6"]


def _break_corrupt_jpeg(isic, ham):
    # A real folder of symlinks to the real images, with one image replaced by a truncated JPEG.
    rows = pd.read_csv(isic / "train.csv")
    real = (isic / "train").resolve()
    (isic / "train").unlink()
    (isic / "train").mkdir()
    for name in rows.image_name:
        os.symlink(real / f"{name}.jpg", isic / "train" / f"{name}.jpg")
    # pick an image of validation fold 0: every one of those is read in epoch 1 (training drops a last partial batch)
    from train.data import load_sources
    from train.folds import assign_folds

    frame, duplicates = load_sources([str(isic)], [str(ham)], "auto")
    folds = assign_folds(frame, 2, 7, duplicates)  # tiny_args: folds 2, seed 7
    victim = frame.image_id[(folds == 0) & (frame.source == "isic2020")].iloc[3]
    data = (real / f"{victim}.jpg").read_bytes()
    (isic / "train" / f"{victim}.jpg").unlink()
    (isic / "train" / f"{victim}.jpg").write_bytes(data[: len(data) // 3])  # header intact, pixels cut off
    return ["Cannot read image", f"{victim}.jpg", "damaged or truncated"]


@pytest.mark.parametrize("breaker", [_break_missing_column, _break_missing_image, _break_unknown_site,
                                     _break_corrupt_jpeg], ids=lambda f: f.__name__[7:])
def test_bad_data_gives_one_clear_message(breaker, data_dir, tmp_path):
    isic, ham = make_subset(tmp_path / "data", data_dir, isic_benign=40, ham_per_dx=6)
    expected = breaker(isic, ham)
    out = tmp_path / "run"
    done = run_cli(tiny_args(isic, ham, out, epochs=1, train_folds="[0]"))
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, done.stderr[-3000:]
    for text in expected:
        assert text in errors[0], (text, errors[0])
    for name in SUCCESS_ARTEFACTS:
        assert not (out / name).exists(), name


@pytest.mark.parametrize("option, value, expected", [
    ("backbone", "tf_efficientnet_b9x", ["backbone: 'tf_efficientnet_b9x' is not a timm model"]),
    ("backbone_weights", "timm", ["cannot load 'timm' ImageNet weights", "backbone_weights: pypi"]),
    ("backbone_weights", "/nowhere/weights.pth", ["cannot load '/nowhere/weights.pth'"]),
], ids=["unknown_backbone", "timm_weights_offline", "missing_weights_file"])
def test_a_recipe_typo_fails_before_the_run_folder_is_claimed(option, value, expected, data_dir, tmp_path):
    # image_size set (as both shipped configs do), so the backbone's own size lookup cannot catch the typo
    isic, ham = make_subset(tmp_path / "data", data_dir, isic_benign=40, ham_per_dx=6)
    out = tmp_path / "run"
    done = run_cli(tiny_args(isic, ham, out, epochs=1, **{option: value}), HF_HUB_OFFLINE="1")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, done.stderr[-3000:]
    for text in expected:
        assert text in errors[0], (text, errors[0])
    assert not out.exists()  # nothing to delete by hand: the corrected command runs in the same folder


def test_config_errors_name_the_key(tmp_path):
    from train.config import resolve_config
    from train.errors import ConfigError

    path = tmp_path / "c.yaml"
    path.write_text("isic_dirs: [x]\nlearning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="learning_rate"):
        resolve_config(["--config", str(path)])
    with pytest.raises(SystemExit):  # argparse: "unrecognized arguments: --learning_rate 0.1"
        resolve_config(["--config", str(path), "--learning_rate", "0.1"])
    path.write_text("isic_dirs: [x]\nimbalance: oversample\n")
    with pytest.raises(ConfigError, match="imbalance"):
        resolve_config(["--config", str(path)])


def test_bad_images_skip_counts_and_finishes(data_dir, tmp_path):
    from train.loop import main

    isic, ham = make_subset(tmp_path / "data", data_dir, isic_benign=40, ham_per_dx=6)
    victim = _break_corrupt_jpeg(isic, ham)[1]
    out = tmp_path / "run"
    assert main(tiny_args(isic, ham, out, epochs=1, train_folds="[0]") + ["--bad_images", "skip"]) == 0
    assert victim in (out / "fold0" / "skipped_images.txt").read_text()
    oof = pd.read_csv(out / "oof_predictions.csv")
    assert victim[:-4] not in set(oof.image_id)  # not scored, not silently scored as a black square
    assert (out / "model" / "model.safetensors").is_file()
