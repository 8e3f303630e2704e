"""`python -m train.ensemble`: fold models joined into one model folder and one ONNX graph (train/network.py's
FoldEnsemble), on two tiny real fold models of one folds.csv.

The served answer is the mean of the members' calibrated logits, its Grad-CAM is exact for that logit, its guard is
the first member's, and its triage lines come from every row's held-out answer.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from test_same_answers import autograd_grad_cam

from inference import Predictor
from inference.explain import grad_cam
from inference.layout import GUARD_ARRAYS, OPERATING_POINTS
from inference.metadata import encode, normalize
from train.ensemble import main as ensemble_main
from train.network import FoldEnsemble, load_model


@pytest.fixture(scope="module")
def ensemble(fold_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("ensemble") / "model"
    assert ensemble_main(["--members", *map(str, fold_models), "--output_dir", str(out)]) == 0
    return out


def test_the_answer_is_the_mean_of_the_members_calibrated_logits(ensemble, fold_models, isic_rows):
    served = Predictor.from_pretrained(ensemble)
    members = [Predictor.from_pretrained(m) for m in fold_models]
    paths = list(isic_rows.path[:6])
    got = served.predict_batch(paths, tta=False)
    each = [m.predict_batch(paths, tta=False) for m in members]
    for i, answer in enumerate(got):
        logs = np.mean([np.log([e[i]["diagnosis"][c] for c in served.classes]) for e in each], axis=0)
        expected = np.exp(logs) / np.exp(logs).sum()  # softmax of the mean of log-softmaxes: of the mean logits
        np.testing.assert_allclose([answer["diagnosis"][c] for c in served.classes], expected, rtol=1e-4)
    # as served (8 views), and the torch ensemble rebuilt from the folder gives the same
    torch_model = load_model(ensemble)
    assert isinstance(torch_model, FoldEnsemble) and len(torch_model.members) == 2
    a = served.predict(paths[0])
    assert a["tta"] is True and a["model_id"] == str(ensemble)


def test_grad_cam_is_exact_for_the_ensembles_logit(ensemble, isic_rows):
    served = Predictor.from_pretrained(ensemble)
    model = load_model(ensemble)
    compared = 0
    for path in isic_rows.path[:3]:
        pixels, meta = served.model_input(path), encode(normalize(None, None, None))
        with torch.no_grad():
            features = model.forward_features(torch.from_numpy(pixels)[None]).numpy()
        assert served.head.shape[1] == features.shape[1]  # the members' image columns side by side
        for target in range(len(served.classes)):  # (a tiny random model's map can be all zero for some class)
            with np.errstate(invalid="ignore"):
                expected = autograd_grad_cam(model, torch.from_numpy(pixels), torch.from_numpy(meta), target)
            if np.isfinite(expected).all():
                got = grad_cam(features[0], served.head[target, :features.shape[1]], served.config.image_size)
                assert np.abs(got - expected).max() <= 1e-4
                compared += 1
    assert compared >= 3


def test_guard_is_the_first_members_and_the_lines_come_from_every_held_out_row(ensemble, fold_models, isic_rows):
    first = fold_models[0]
    assert (ensemble / GUARD_ARRAYS).read_bytes() == (first / GUARD_ARRAYS).read_bytes()
    paths = list(isic_rows.path[:4])
    ours = [a["ood_score"] for a in Predictor.from_pretrained(ensemble).predict_batch(paths)]
    theirs = [a["ood_score"] for a in Predictor.from_pretrained(first).predict_batch(paths)]
    np.testing.assert_allclose(ours, theirs, rtol=1e-4)  # the embedding it reads is the first member's
    oof = pd.read_csv(ensemble / "oof_predictions.csv", dtype={"image_id": str})
    folds = pd.read_csv(first / "folds.csv", dtype={"image_id": str})
    assert sorted(oof.image_id) == sorted(folds.image_id)
    points = json.loads((ensemble / OPERATING_POINTS).read_text())
    assert points["views"] == 8 and points["n_melanoma"] + points["n_other"] == len(oof)
    mel = np.sort(oof.probability[oof.target == 1].to_numpy())
    assert points["low"]["threshold"] == pytest.approx(mel[int(np.floor(0.05 * len(mel)))])
    metrics = json.loads((ensemble / "metrics.json").read_text())
    assert set(metrics["out_of_fold_by_source"]) == set(oof.source)
    assert "2-fold ensemble" in (ensemble / "README.md").read_text()


def test_bad_members_are_one_line_errors(fold_models, ensemble, tmp_path, capsys):
    zero, one = fold_models
    assert ensemble_main(["--members", str(zero), str(zero), "--output_dir", str(tmp_path / "a")]) == 2
    assert ensemble_main(["--members", str(ensemble), str(one), "--output_dir", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "both validated on fold 0" in err[0] and "single models" in err[1]
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_crosscheck_of_an_ensemble_reports_only_what_no_member_saw(ensemble, data_dir, tmp_path, capsys):
    from studies.crosscheck import main as crosscheck_main

    out = tmp_path / "cc.json"
    assert crosscheck_main(["--model", str(ensemble), "--external", f"{data_dir / 'isic2017'}:Validation",
                            "--json", str(out)]) == 0
    assert list(json.loads(out.read_text())) == ["isic2017 validation (external)"]
    assert "no in-source row is held out from all its members" in capsys.readouterr().err
