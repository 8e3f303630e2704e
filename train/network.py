"""The fused melanoma model in torch: a timm image encoder + a metadata MLP, concatenated, one linear head.

Training, the ONNX export and the eager backend use it; serving runs the exported ONNX file and reads
config.json as plain JSON (`inference.model.ModelConfig`). Every constructor argument is a plain JSON
value, so the `config.json` that `PyTorchModelHubMixin` writes rebuilds the model exactly; building never
downloads ImageNet weights (training loads them once with `train.backbone.load_backbone_weights`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from huggingface_hub import PyTorchModelHubMixin, hf_hub_download
from safetensors.torch import load_model
from torch import nn

from inference.layout import WEIGHTS
from inference.metadata import ENCODING_VERSION, META_DIM
from inference.image import COLOUR_CONSTANCY
from inference.model import CLASSES, HEAD_WEIGHT, check_config

from .backbone import create_backbone


class MelanomaModel(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="melanoma-triage",
    license="cc-by-nc-4.0",
    tags=["image-classification", "dermatology", "melanoma", "timm"],
):
    """Image + metadata → logits over `classes`.

    Args:
        backbone: timm architecture name, e.g. ``tf_efficientnet_lite0``.
        image_size: square input side the model was trained at (the eval transform reads it).
        mean, std: per-channel normalisation of the backbone's pretraining.
        classes: output classes; must be `CLASSES` for the probability helpers to apply.
        meta_hidden: width of the metadata MLP; 0 turns metadata off (an image-only model).
        dropout: dropout before the head.
        temperature: logits are divided by it before the softmax (fitted after training).
        colour_constancy: the colour correction `inference.image.prepare` applies before the model, in training
            and in serving ('none' or 'shades_of_gray').
        metadata_encoding: version tag of `inference.metadata.encode`, checked at load time.
    """

    def __init__(
        self,
        backbone: str = "tf_efficientnet_lite0",
        image_size: int = 224,
        mean: list[float] = (0.5, 0.5, 0.5),
        std: list[float] = (0.5, 0.5, 0.5),
        classes: list[str] = CLASSES,
        meta_hidden: int = 32,
        dropout: float = 0.3,
        temperature: float = 1.0,
        metadata_encoding: str = ENCODING_VERSION,
        colour_constancy: str = "none",
    ) -> None:
        super().__init__()
        check_config(classes, temperature, metadata_encoding)
        if colour_constancy not in COLOUR_CONSTANCY:
            raise ValueError(f"colour_constancy must be one of {', '.join(COLOUR_CONSTANCY)}, got {colour_constancy!r}.")
        self.colour_constancy = colour_constancy
        self.backbone_name = backbone
        self.image_size = int(image_size)
        self.mean, self.std = [float(x) for x in mean], [float(x) for x in std]
        self.classes = tuple(classes)
        self.backbone = create_backbone(backbone)
        self.meta = (
            nn.Sequential(nn.Linear(META_DIM, meta_hidden), nn.SiLU(), nn.Linear(meta_hidden, meta_hidden), nn.SiLU())
            if meta_hidden
            else None
        )
        self.head = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(self.backbone.num_features + meta_hidden, len(self.classes))
        )

    @property
    def config(self) -> dict:
        """The JSON config `save_pretrained` writes (and `from_pretrained` rebuilds from)."""
        return dict(self._hub_mixin_config)

    @property
    def temperature(self) -> float:
        return float(self._hub_mixin_config["temperature"])

    def set_temperature(self, value: float) -> None:
        """Store a fitted calibration temperature in the config that is saved with the weights."""
        check_config(self.classes, value, ENCODING_VERSION)
        self._hub_mixin_config["temperature"] = float(value)

    def forward_features(self, image: torch.Tensor) -> torch.Tensor:
        """Backbone feature map (B, C, H, W); Grad-CAM differentiates the logits against it."""
        return self.backbone.forward_features(image)

    def forward_head(self, features: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        return self.head_and_embedding(features, meta)[0]

    def head_and_embedding(self, features: torch.Tensor, meta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, pooled image embedding (B, num_features)); the out-of-scope guard reads the embedding."""
        pooled = self.backbone.forward_head(features, pre_logits=True)
        joined = torch.cat([pooled, self.meta(meta)], dim=1) if self.meta is not None else pooled
        return self.head(joined), pooled

    def forward(self, image: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        """Raw (uncalibrated) logits of shape (B, len(classes))."""
        return self.forward_head(self.forward_features(image), meta)

    @classmethod
    def _from_pretrained(cls, *, model_id: str, map_location: str = "cpu", strict: bool = True, **kwargs):
        """Called by `from_pretrained` with the config values: safetensors only, strict by default."""
        hub_args = {k: kwargs.pop(k) for k in ("revision", "cache_dir", "force_download", "local_files_only", "token")}
        folder = Path(model_id)
        weights = (folder / WEIGHTS if folder.is_dir()
                   else Path(hf_hub_download(model_id, WEIGHTS, **hub_args)))
        model = cls(**kwargs)
        load_model(model, str(weights), strict=strict, device=map_location)
        return model.eval()



class EagerSession:
    """The eager torch backend: `inference.onnx_backend.OnnxSession.run`'s signature over a `MelanomaModel`,
    so an `inference.Predictor` can run the torch model itself (on CUDA, or to compare with the export)."""

    def __init__(self, model: MelanomaModel, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()

    @torch.inference_mode()
    def run(self, images: np.ndarray, meta: np.ndarray, outputs: tuple[str, ...] = ("logits",)) -> list[np.ndarray]:
        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).to(self.device)
        m = torch.from_numpy(np.ascontiguousarray(meta, dtype=np.float32)).to(self.device)
        features = self.model.forward_features(x)
        logits, embedding = self.model.head_and_embedding(features, m)
        named = {"logits": logits, "embedding": embedding, "features": features}
        return [named[name].float().cpu().numpy() for name in outputs]
