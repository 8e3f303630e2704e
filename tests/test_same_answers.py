"""Serving without torch gives the answers serving with torch gave (issue 21), on 200 real images.

* Probabilities: the Predictor on the bundled model equals the answers recorded before the torch-free
  re-export (tests/data/answers_before_torch_free.json: onnxruntime, output/default as bundled at commit
  0e6eb83; 100 HAM10000 + 100 ISIC 2020 images of ../shared/data evenly spaced in id order, with their
  metadata) within 1e-5.
* Grad-CAM: the NumPy map from the graph's feature map and the head's weights (inference/explain.py)
  equals torch autograd's Grad-CAM of the melanoma logit on the torch model within 1e-4.
* `import app` imports no torch.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO

from inference import Predictor
from inference.explain import grad_cam
from inference.metadata import encode, normalize
from train.model import MelanomaModel

BUNDLED = REPO / "output" / "default"
RECORDED = json.loads((REPO / "tests" / "data" / "answers_before_torch_free.json").read_text())


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor.from_pretrained(BUNDLED)


@pytest.fixture(scope="module")
def rows(data_dir) -> list[dict]:
    rows = [{**r, "path": str(data_dir / r["image"])} for r in RECORDED["rows"]]
    assert len(rows) == 200 and {r["image"].split("/")[0] for r in rows} == {"ham10000", "isic2020"}
    return rows


def test_probabilities_equal_the_answers_recorded_with_torch_installed(predictor, rows):
    answers = predictor.predict_batch([r["path"] for r in rows], [r["age"] for r in rows], [r["sex"] for r in rows],
                                      [r["site"] for r in rows])
    got = np.array([[a["diagnosis"][c] for c in RECORDED["classes"]] for a in answers])
    want = np.array([r["probabilities"] for r in rows])
    assert np.abs(got - want).max() <= 1e-5
    np.testing.assert_allclose([a["ood_score"] for a in answers], [r["ood_score"] for r in rows], rtol=1e-5)


def autograd_grad_cam(model: MelanomaModel, image: torch.Tensor, meta: torch.Tensor, target: int) -> np.ndarray:
    """Grad-CAM the textbook way: d(logit)/d(feature map) by autograd, averaged per channel, weighted sum,
    ReLU, bilinear upsampling (align_corners=False), divided by the maximum."""
    features = model.forward_features(image[None]).detach().requires_grad_(True)
    logit = model.forward_head(features, meta[None])[0, target]
    (grads,) = torch.autograd.grad(logit, features)
    cam = torch.relu((grads.mean(dim=(2, 3), keepdim=True) * features).sum(1, keepdim=True)).detach()
    cam = torch.nn.functional.interpolate(cam, size=image.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    return (cam / cam.max()).numpy()


def test_numpy_grad_cam_equals_autograd_grad_cam(predictor, rows):
    model = MelanomaModel.from_pretrained(str(BUNDLED)).eval()
    mel = predictor.classes.index("mel")
    worst = 0.0
    for r in rows:
        pixels = predictor.model_input(r["path"])
        meta = encode(normalize(r["age"], r["sex"], r["site"]))
        (features,) = predictor.session.run(pixels[None], meta[None], ("features",))
        numpy_map = grad_cam(features[0], predictor.head[mel, :features.shape[1]], predictor.config.image_size)
        expected = autograd_grad_cam(model, torch.from_numpy(pixels), torch.from_numpy(meta), mel)
        worst = max(worst, float(np.abs(numpy_map - expected).max()))
    assert worst <= 1e-4, worst


def test_the_app_imports_no_torch():
    code = "import sys, app; bad = [m for m in ('torch', 'timm', 'torchvision') if m in sys.modules]; print(bad)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
