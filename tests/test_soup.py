"""`python -m studies.soup`: a weight average of two real tiny runs on the same folds becomes a complete model
folder, scored afresh; models of other folds are refused."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
import torch
from conftest import run_cli, tiny_args
from safetensors.torch import load_file

from inference import Predictor, layout
from studies.soup import main as soup_main


@pytest.fixture(scope="module")
def second(subset, tmp_path_factory):
    """A second tiny run on the reference's folds (same data and seed) with another augmentation."""
    out = tmp_path_factory.mktemp("second") / "run"
    done = run_cli(tiny_args(*subset, out, augment="flips", epochs=1, train_folds="[0]"))
    assert done.returncode == 0, done.stderr[-3000:]
    return out / layout.MODEL_DIR


def test_a_weight_average_is_a_complete_model_scored_afresh(reference, second, subset, tmp_path, capsys):
    first = reference[0] / layout.MODEL_DIR
    out = tmp_path / "soup"
    assert soup_main(["--models", str(first), str(second), "--weights", "3", "1", "--output_dir", str(out)]) == 0
    model = out / layout.MODEL_DIR
    assert f"Model, metrics and card: {model}" in capsys.readouterr().out
    a, b, mix = (load_file(str(f / layout.WEIGHTS)) for f in (first, second, model))
    moved = 0
    for key, value in mix.items():
        if value.is_floating_point():
            assert torch.allclose(value, 0.75 * a[key] + 0.25 * b[key], atol=1e-6), key
            moved += not torch.equal(a[key], b[key])
    assert moved > 10  # the two runs really differ, so the average is a third model

    metrics = json.loads((model / layout.METRICS).read_text())
    assert [(p["weight"], p["recipe"]) for p in metrics["weight_average"]] == [
        (0.75, {"augment": "strong", "epochs": 2, "train_folds": None}), (0.25, {"augment": "flips", "epochs": 1,
                                                                               "train_folds": [0]})]
    # scored afresh on fold 0's validation rows: the average's own logits, not an ingredient's
    val = pd.read_csv(out / "fold0" / "best" / "val_predictions.csv")
    folds = pd.read_csv(first / layout.FOLDS)
    assert sorted(val.image_id) == sorted(folds[folds.fold == 0].image_id)
    ref = pd.read_csv(reference[0] / "fold0" / "best" / "val_predictions.csv")
    logits = [c for c in val.columns if c.startswith(layout.LOGIT_PREFIX)]
    assert not (val[logits].to_numpy() == ref[logits].to_numpy()).all()
    oof = pd.read_csv(out / "oof_predictions.csv")
    assert len(oof) == len(val) and metrics["folds_trained"] == [0] and metrics["published_fold"] == 0
    for name in (layout.CONFIG, layout.WEIGHTS, layout.ONNX, layout.TRAINING_CONFIG, layout.FOLDS, *layout.PLOTS[:3]):
        assert (model / name).is_file(), name
    assert not (model / layout.PLOTS[3]).exists()  # no training curves: nothing was trained
    card = (model / layout.CARD).read_text()
    assert "weight average" in card and "0.75 ×" in card and "augment: flips" in card
    assert "training_curves.png" not in card
    image = next((subset[0] / "train").glob("*.jpg"))  # the Space's path: ONNX, guard and bands of the average
    answer = Predictor.from_pretrained(model).predict(image, 50, "female", "torso")
    assert 0 < answer["melanoma_probability"] < 1 and answer["in_distribution"] is not None


def test_models_of_other_folds_or_a_used_folder_are_refused(reference, second, tmp_path, capsys):
    first = reference[0] / layout.MODEL_DIR
    other = tmp_path / "other"
    shutil.copytree(second, other)
    folds = pd.read_csv(other / layout.FOLDS)
    folds["fold"] = folds.fold.sample(frac=1, random_state=0).to_numpy()
    folds.to_csv(other / layout.FOLDS, index=False)
    out = tmp_path / "soup"
    assert soup_main(["--models", str(first), str(other), "--weights", "1", "1", "--output_dir", str(out)]) == 2
    assert "was trained on other folds than" in capsys.readouterr().err and not out.exists()
    assert soup_main(["--models", str(first), "--weights", "1", "--output_dir", str(out)]) == 2
    assert "two or more --models" in capsys.readouterr().err
    out.mkdir()
    (out / "x").write_text("")
    assert soup_main(["--models", str(first), str(second), "--weights", "1", "1", "--output_dir", str(out)]) == 2
    assert "is not empty" in capsys.readouterr().err
