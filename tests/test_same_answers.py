"""Serving without torch gives the answers of the torch model it was exported from, on 200 real images.

* Probabilities and the guard's distance: the Predictor on the bundled model (onnxruntime + NumPy, what the
  Space runs) equals the same Predictor driving the torch model (`train.network.EagerSession`) on 200 images of
  ../shared/data (70 HAM10000, 70 ISIC 2020, 60 ISIC 2017, evenly spaced in id order, with their metadata).
* Grad-CAM: the NumPy map from the graph's feature map and the head's weights (inference/explain.py)
  equals torch autograd's Grad-CAM of the melanoma logit on the torch model within 1e-4.
* `import app` imports no torch.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO

from inference import Predictor
from inference.explain import grad_cam
from inference.metadata import encode, normalize
from inference.model import ModelConfig
from train.data import load_sources
from train.network import EagerSession, MelanomaModel

BUNDLED = REPO / "output" / "default"


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor.from_pretrained(BUNDLED)


@pytest.fixture(scope="module")
def rows(data_dir) -> list[dict]:
    frame, _ = load_sources([str(data_dir / "isic2020")], [str(data_dir / "ham10000")], "none",
                            [str(data_dir / "isic2017")])
    picked = []
    for source, n in (("ham10000", 70), ("isic2020", 70), ("isic2017", 60)):
        part = frame[frame.source == source].sort_values("image_id")
        picked += part.iloc[np.linspace(0, len(part) - 1, n).astype(int)].to_dict("records")
    return [{"path": r["path"], "age": None if np.isnan(r["age"]) else r["age"], "sex": r["sex"], "site": r["site"]}
            for r in picked]


def test_probabilities_equal_the_torch_models_answers(predictor, rows):
    torch_predictor = Predictor(ModelConfig.load(BUNDLED), EagerSession(MelanomaModel.from_pretrained(str(BUNDLED))),
                                guard=predictor.guard, operating_points=predictor.operating_points)
    args = ([r["path"] for r in rows], [r["age"] for r in rows], [r["sex"] for r in rows], [r["site"] for r in rows])
    served, trained = predictor.predict_batch(*args), torch_predictor.predict_batch(*args)
    got = np.array([[a["diagnosis"][c] for c in predictor.classes] for a in served])
    want = np.array([[a["diagnosis"][c] for c in predictor.classes] for a in trained])
    assert np.abs(got - want).max() <= 1e-5
    np.testing.assert_allclose([a["ood_score"] for a in served], [a["ood_score"] for a in trained], rtol=1e-4)
    assert [a["in_distribution"] for a in served] == [a["in_distribution"] for a in trained]


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
    """The NumPy Grad-CAM is exact: on torch's own feature map it equals autograd's within float rounding. The
    Space feeds it onnxruntime's feature map, which differs from torch's by ~1e-5 of its scale; after the map
    is divided by its maximum that can grow to a few 1e-4, still far below one level of an 8-bit heat map."""
    model = MelanomaModel.from_pretrained(str(BUNDLED)).eval()
    mel = predictor.classes.index("mel")
    exact = served = 0.0
    for r in rows:
        pixels = predictor.model_input(r["path"])
        meta = encode(normalize(r["age"], r["sex"], r["site"]))
        (features,) = predictor.session.run(pixels[None], meta[None], ("features",))
        with torch.no_grad():
            torch_features = model.forward_features(torch.from_numpy(pixels)[None]).numpy()
        expected = autograd_grad_cam(model, torch.from_numpy(pixels), torch.from_numpy(meta), mel)
        head = predictor.head[mel, :features.shape[1]]
        exact = max(exact, float(np.abs(grad_cam(torch_features[0], head, predictor.config.image_size) - expected).max()))
        served = max(served, float(np.abs(grad_cam(features[0], head, predictor.config.image_size) - expected).max()))
    assert exact <= 1e-4, exact
    assert served <= 2e-3, served


def test_the_app_imports_no_torch():
    code = "import sys, app; bad = [m for m in ('torch', 'timm', 'torchvision') if m in sys.modules]; print(bad)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
