"""The fused melanoma model in torch: a timm image encoder + a metadata MLP, concatenated, one linear head.

Training, the ONNX export and the eager backend use it; serving runs the exported ONNX file and reads
config.json as plain JSON (`inference.model.ModelConfig`). Every constructor argument is a plain JSON
value, so the `config.json` that `PyTorchModelHubMixin` writes rebuilds the model exactly; building never
downloads ImageNet weights (training loads them once with `train.backbone.load_backbone_weights`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from huggingface_hub import PyTorchModelHubMixin, hf_hub_download
from safetensors.torch import load_file, save_file
from safetensors.torch import load_model as load_safetensors
from torch import nn

from inference.layout import CONFIG, WEIGHTS
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
        load_safetensors(model, str(weights), strict=strict, device=map_location)
        return model.eval()



class FoldEnsemble(nn.Module):
    """Fold models of one architecture as one model: its logits are the mean of the members' calibrated logits
    (each divided by its own temperature), so its probabilities are the normalised geometric mean of theirs.

    It has `MelanomaModel`'s serving interface (`forward_features`, `head_and_embedding`, the eval-transform
    attributes, `temperature` 1: the members' are inside), so the ONNX export, the eager backend and the guard fit
    take either. The feature map is the members' maps side by side, and `cam_head` their heads' image columns side
    by side, scaled like their logits: Grad-CAM of the ensemble's logit stays exact (inference/explain.py). The
    embedding is the first member's: the guard's statistics and lines are that member's, fitted on its own
    training and held-out rows (no in-source row is held out from every member)."""

    def __init__(self, members: list[MelanomaModel]) -> None:
        super().__init__()
        shapes = [{k: v for k, v in m.config.items() if k != "temperature"} for m in members]
        if len(members) < 2 or any(shape != shapes[0] for shape in shapes[1:]):
            raise ValueError("an ensemble needs two or more members of one architecture (config.json but the "
                             "temperature).")
        self.members = nn.ModuleList(members)
        first = members[0]
        self.image_size, self.mean, self.std = first.image_size, first.mean, first.std
        self.classes, self.colour_constancy, self.temperature = first.classes, first.colour_constancy, 1.0
        self.register_buffer("scale", torch.tensor([1.0 / (len(members) * m.temperature) for m in members]),
                             persistent=False)

    @property
    def config(self) -> dict:
        return {**self.members[0].config, "temperature": 1.0,
                "members": [{"temperature": m.temperature} for m in self.members]}

    def forward_features(self, image: torch.Tensor) -> torch.Tensor:
        return torch.cat([m.forward_features(image) for m in self.members], dim=1)

    def head_and_embedding(self, features: torch.Tensor, meta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, embedding = None, None
        for member, part, scale in zip(self.members, features.chunk(len(self.members), dim=1), self.scale):
            member_logits, pooled = member.head_and_embedding(part, meta)
            logits = scale * member_logits if logits is None else logits + scale * member_logits
            embedding = pooled if embedding is None else embedding
        return logits, embedding

    def forward_head(self, features: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        return self.head_and_embedding(features, meta)[0]

    def forward(self, image: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(image), meta)

    def cam_head(self) -> torch.Tensor:
        """(n_classes, members · features): the head row Grad-CAM weighs the joined feature map with."""
        return torch.cat([m.head[-1].weight[:, :m.backbone.num_features] * s for m, s in zip(self.members, self.scale)],
                         dim=1)

    def save_pretrained(self, folder: str | Path) -> None:
        """config.json and model.safetensors (every member's weights, and `cam_head` under HEAD_WEIGHT)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CONFIG).write_text(json.dumps(self.config, indent=2) + "\n")
        state = {k: v.contiguous() for k, v in self.state_dict().items()}
        save_file({**state, HEAD_WEIGHT: self.cam_head().detach().contiguous()}, str(folder / WEIGHTS))


def load_model(folder: str | Path) -> MelanomaModel | FoldEnsemble:
    """The torch model of a local model folder: one model, or a fold ensemble (config.json lists `members`)."""
    config = json.loads((Path(folder) / CONFIG).read_text())
    members = config.pop("members", None)
    if members is None:
        return MelanomaModel.from_pretrained(str(folder))
    ensemble = FoldEnsemble([MelanomaModel(**{**config, "temperature": m["temperature"]}) for m in members])
    weights = load_file(str(Path(folder) / WEIGHTS))
    weights.pop(HEAD_WEIGHT)
    ensemble.load_state_dict(weights)
    return ensemble.eval()


class EagerSession:
    """The eager torch backend: `inference.onnx_backend.OnnxSession.run`'s signature over a `MelanomaModel`,
    so an `inference.Predictor` can run the torch model itself (on CUDA, or to compare with the export)."""

    def __init__(self, model: MelanomaModel | FoldEnsemble, device: str | torch.device = "cpu") -> None:
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
