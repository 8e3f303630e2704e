"""Save → load round trips through a folder and through a hand-built offline Hugging Face cache."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO
from safetensors.torch import load_file, save_file

from inference import Predictor
from inference.layout import SERVED_FILES
from train.network import MelanomaModel

SHA = "0123456789abcdef0123456789abcdef01234567"


def _batch(model, n=2):
    torch.manual_seed(1)
    return torch.randn(n, 3, model.image_size, model.image_size), torch.rand(n, 12)


def test_folder_round_trip_is_bit_identical(tiny_model_dir):
    model = MelanomaModel.from_pretrained(tiny_model_dir)
    again = MelanomaModel.from_pretrained(tiny_model_dir)
    images, meta = _batch(model)
    with torch.inference_mode():
        assert torch.equal(model(images, meta), again(images, meta))
    saved = load_file(tiny_model_dir / "model.safetensors")
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
    assert not any(k.startswith("module.") for k in saved)


def test_config_rebuilds_the_model_and_holds_no_download_flag(tiny_model_dir):
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert config["backbone"] == "test_efficientnet" and config["temperature"] == 1.0
    assert not any("pretrained" in key for key in config)
    rebuilt = MelanomaModel(**config)
    assert set(rebuilt.state_dict()) == set(load_file(tiny_model_dir / "model.safetensors"))
    assert not list(tiny_model_dir.glob("*.bin")) and not list(tiny_model_dir.glob("*.pth"))


def test_strict_loading_catches_a_missing_key(tiny_model_dir, tmp_path):
    shutil.copytree(tiny_model_dir, tmp_path / "m")
    weights = load_file(tmp_path / "m" / "model.safetensors")
    weights.pop("head.1.weight")
    save_file(weights, tmp_path / "m" / "model.safetensors")
    with pytest.raises(RuntimeError, match="head.1.weight"):
        MelanomaModel.from_pretrained(tmp_path / "m")


def test_temperature_is_saved_in_config_and_used(tiny_model_dir, tmp_path):
    model = MelanomaModel.from_pretrained(tiny_model_dir)
    model.set_temperature(2.5)
    model.save_pretrained(tmp_path / "calibrated")
    shutil.copy(tiny_model_dir / "model.onnx", tmp_path / "calibrated")  # the graph gives logits; T is applied after
    assert json.loads((tmp_path / "calibrated" / "config.json").read_text())["temperature"] == 2.5
    hot, cold = Predictor.from_pretrained(tmp_path / "calibrated"), Predictor.from_pretrained(tiny_model_dir)
    images, meta = (t.numpy() for t in _batch(model, 1))
    p_hot, p_cold = hot.forward(images, meta)[0], cold.forward(images, meta)[0]
    assert p_hot.max() < p_cold.max()  # a higher temperature flattens the distribution
    with pytest.raises(ValueError, match="temperature"):
        model.set_temperature(0.0)


def _fake_hub_cache(root: Path, model_dir: Path, repo="org/melanoma") -> Path:
    """The layout huggingface_hub writes: models--org--name/{refs/main, snapshots/<sha>/...}."""
    repo_dir = root / ("models--" + repo.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / SHA
    snapshot.mkdir(parents=True)
    for name in SERVED_FILES:
        if (model_dir / name).is_file():
            shutil.copy(model_dir / name, snapshot / name)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(SHA)
    return root


def _predict_in_subprocess(source: str, cache: Path, image: str) -> dict:
    # HF_HUB_OFFLINE and HF_HUB_CACHE are read when huggingface_hub is imported: a fresh process.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "PYTHONPATH": str(REPO)}
    code = (
        "import json, sys; from inference import Predictor\n"
        "try:\n"
        f"    p = Predictor.from_pretrained({source!r})\n"
        f"    print(json.dumps(p.predict({image!r}, 50, 'male', 'torso')))\n"
        "except FileNotFoundError as e:\n"
        "    print(json.dumps({'error': str(e)}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_offline_hub_cache_round_trip_is_bit_identical(tiny_model_dir, tmp_path, isic_rows):
    cache = _fake_hub_cache(tmp_path / "hub", tiny_model_dir)
    image = isic_rows.path[0]
    local = Predictor.from_pretrained(tiny_model_dir).predict(image, 50, "male", "torso")
    for source in ("org/melanoma", f"org/melanoma@{SHA}"):
        remote = _predict_in_subprocess(source, cache, image)
        assert remote["model_id"] == "org/melanoma" and remote["model_revision"] == SHA
        assert remote["melanoma_probability"] == local["melanoma_probability"]  # bit-identical floats
        assert remote["diagnosis"] == local["diagnosis"]
    missing = _predict_in_subprocess("org/absent", cache, image)
    assert "not in the local Hugging Face cache" in missing["error"]
