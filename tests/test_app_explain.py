"""Grad-CAM (inference/explain.py): a finite [0, 1] map of the right shape that depends on the image,
computed without hooks or side effects on the shared model, even under torch.inference_mode."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from inference import Predictor
from inference.explain import colorize, explain, grad_cam, overlay
from inference.image import open_image, prepare, to_tensor
from inference.metadata import encode, normalize


@pytest.fixture(scope="module")
def predictor(tiny_model_dir) -> Predictor:
    return Predictor.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def images(isic_rows, ham_rows) -> list[str]:
    return [isic_rows.path.iloc[0], isic_rows.path.iloc[1], ham_rows.path.iloc[0], ham_rows.path.iloc[3]]


def test_heat_map_is_finite_in_unit_range_and_image_sized(predictor, images):
    size = predictor.model.image_size
    with torch.inference_mode():  # how the Predictor calls the model: Grad-CAM must still get gradients
        shown, heat = explain(predictor, images[0], 60, "female", "torso")
    assert heat.shape == (size, size) and heat.dtype == np.float32
    assert np.isfinite(heat).all() and heat.min() >= 0.0 and heat.max() <= 1.0
    assert heat.max() == pytest.approx(1.0) and heat.std() > 0.01  # normalised, not constant
    assert shown.shape == (size, size, 3) and shown.dtype == np.uint8
    big, big_heat = explain(predictor, images[0], 60, "female", "torso", display_size=200)
    assert big.shape == (200, 200, 3) and big_heat.shape == (200, 200)
    assert np.isfinite(big_heat).all() and 0.0 <= big_heat.min() and big_heat.max() <= 1.0


def test_heat_map_changes_with_the_image(predictor, images):
    heats = [explain(predictor, path)[1] for path in images]
    for a in range(len(heats)):
        for b in range(a + 1, len(heats)):
            assert np.abs(heats[a] - heats[b]).max() > 0.05, (a, b)


def test_grad_cam_is_the_gradient_of_the_melanoma_logit(predictor, images):
    """Check against a hand computation with ordinary autograd on the whole model."""
    model = predictor.model
    x = to_tensor(prepare(open_image(images[2]), model.image_size), model.mean, model.std)[None]
    meta = encode(normalize(45, "male", "head/neck"))[None]
    features = model.forward_features(x).detach().requires_grad_(True)
    logit = model.forward_head(features, meta)[0, model.classes.index("mel")]
    (grads,) = torch.autograd.grad(logit, features)
    cam = torch.relu((grads.mean(dim=(2, 3), keepdim=True) * features).sum(1, keepdim=True)).detach()
    cam = torch.nn.functional.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    expected = cam / cam.max()
    got = grad_cam(model, x[0], meta[0], model.classes.index("mel"))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    other = grad_cam(model, x[0], meta[0], model.classes.index("nv"))
    assert not torch.allclose(got, other)  # the target class matters


def test_no_side_effects_on_the_model_and_thread_safe(predictor, images):
    model = predictor.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
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
    assert all(p.grad is None for p in model.parameters())
    assert not model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


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
