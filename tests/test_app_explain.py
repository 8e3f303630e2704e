"""Grad-CAM (inference/explain.py): a finite [0, 1] map of the right shape that depends on the image and the
target class, thread-safe. Its equality with torch autograd's Grad-CAM is tests/test_same_answers.py's."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from inference import Predictor
from inference.explain import colorize, explain, grad_cam, overlay
from inference.image import open_image, prepare


@pytest.fixture(scope="module")
def predictor(tiny_model_dir) -> Predictor:
    return Predictor.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def images(isic_rows, ham_rows) -> list[str]:
    return [isic_rows.path.iloc[0], isic_rows.path.iloc[1], ham_rows.path.iloc[0], ham_rows.path.iloc[3]]


def test_heat_map_is_finite_in_unit_range_and_image_sized(predictor, images):
    size = predictor.config.image_size
    shown, heat = explain(predictor, images[0], 60, "female", "torso")
    assert heat.shape == (size, size) and heat.dtype == np.float32
    assert np.isfinite(heat).all() and heat.min() >= 0.0 and heat.max() <= 1.0
    assert heat.max() == pytest.approx(1.0) and heat.std() > 0.01  # normalised, not constant
    assert shown.shape == (size, size, 3) and shown.dtype == np.uint8
    big, big_heat = explain(predictor, images[0], 60, "female", "torso", display_size=200)
    assert big.shape == (200, 200, 3) and big_heat.shape == (200, 200)
    assert np.isfinite(big_heat).all() and 0.0 <= big_heat.min() and big_heat.max() <= 1.0


def test_a_landscape_upload_is_shown_whole_with_the_models_square_marked(predictor, images):
    wide, heat = explain(predictor, images[2], display_size=120)  # HAM10000: 200×150
    assert heat.shape == (120, 120) and wide.shape == (120, 160, 3)
    border = 20  # (160 - 120) / 2: the dimmed sides, then the white frame of the square the model saw
    assert (wide[:, border - 1] == 255).all() and (wide[:, border + 120] == 255).all()  # just outside the square
    opened = prepare(open_image(images[2]), 120)
    sides = np.concatenate([wide[:, :border - 1], wide[:, -(border - 1):]], axis=1).astype(float)
    assert sides.mean() < 0.5 * opened.mean()  # dimmed


def test_heat_map_changes_with_the_image(predictor, images):
    heats = [explain(predictor, path)[1] for path in images]
    for a in range(len(heats)):
        for b in range(a + 1, len(heats)):
            assert np.abs(heats[a] - heats[b]).max() > 0.05, (a, b)


def test_target_class_matters_and_negative_evidence_gives_no_heat(predictor, images):
    mel, nv = explain(predictor, images[2])[1], explain(predictor, images[2], target="nv")[1]
    assert np.abs(mel - nv).max() > 0.05
    features = np.random.default_rng(0).random((16, 3, 3)).astype(np.float32)
    assert not grad_cam(features, -np.ones(16, np.float32), 32).any()  # every weighted activation negative


def test_thread_safe(predictor, images):
    sequential = [explain(predictor, path, 50, "male", "torso")[1] for path in images]
    results: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        for _ in range(3):
            results[i] = explain(predictor, images[i], 50, "male", "torso")[1]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(images))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for i, heat in enumerate(sequential):
        np.testing.assert_allclose(results[i], heat, atol=1e-5)


def test_bad_input_raises_the_predictors_errors(predictor, images, tmp_path):
    text = tmp_path / "note.jpg"
    text.write_text("not an image")
    with pytest.raises(ValueError, match="not an image we can read"):
        explain(predictor, text)
    with pytest.raises(ValueError, match="anatomical site"):
        explain(predictor, images[0], site="elbow")


def test_colour_map_and_overlay():
    ramp = np.linspace(0, 1, 256, dtype=np.float32)[None].repeat(4, 0)
    colours = colorize(ramp)
    assert colours.shape == (4, 256, 3) and colours.dtype == np.uint8
    brightness = colours.astype(int).sum(-1)[0]
    assert brightness[0] < 20 and brightness[-1] > 600 and (np.diff(brightness) >= -3).all()  # dark → bright
    rgb = np.full((4, 256, 3), 100, np.uint8)
    blended = overlay(rgb, ramp)
    assert (blended[:, 0] == 100).all()  # zero heat leaves the photo untouched
    assert not (blended[:, -1] == 100).all()
    assert colorize(np.array([[np.nan, -1.0, 2.0]])).shape == (1, 3, 3)
