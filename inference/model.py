"""What a trained model is, for serving: its classes, its config.json, and the one calibrated softmax.

One head over the seven HAM10000 diagnoses serves every source with one softmax: melanoma probability is
p(mel), malignant probability is p(mel) + p(bcc) + p(akiec). There is deliberately no class that only one
source supplies (such as ISIC 2020's "unknown" benign rows): a model learns to predict it from that
source's look rather than from the lesion (issue 24); see `train.sources.jpeg_melanoma.UNSPECIFIED`. The torch model that config.json rebuilds lives in `train.network`;
serving reads the same file as plain JSON (`ModelConfig`), so the Space needs no torch.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .layout import CONFIG
from .metadata import ENCODING_VERSION

CLASSES: tuple[str, ...] = ("mel", "nv", "bcc", "akiec", "bkl", "df", "vasc")
CLASS_NAMES = {
    "mel": "Melanoma",
    "nv": "Melanocytic nevus",
    "bcc": "Basal cell carcinoma",
    "akiec": "Actinic keratosis / intraepithelial carcinoma",
    "bkl": "Benign keratosis-like lesion",
    "df": "Dermatofibroma",
    "vasc": "Vascular lesion",
}
MALIGNANT: tuple[str, ...] = ("mel", "bcc", "akiec")
# The head's linear layer in model.safetensors: (n_classes, image features + metadata features). Serving
# reads its image part for Grad-CAM (inference/explain.py); `train.network.MelanomaModel` names it so.
HEAD_WEIGHT = "head.1.weight"


def check_config(classes: Any, temperature: Any, metadata_encoding: Any) -> None:
    """The checks every loader of a model makes (serving's `ModelConfig` and training's `MelanomaModel`)."""
    if metadata_encoding != ENCODING_VERSION:
        raise ValueError(
            f"Model expects metadata encoding {metadata_encoding!r}, this code has {ENCODING_VERSION!r}; "
            "install the project version the model was trained with."
        )
    if tuple(classes) != CLASSES:
        raise ValueError(f"classes must be {list(CLASSES)}, got {list(classes)}.")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive number, got {temperature}.")


@dataclass(frozen=True)
class ModelConfig:
    """The serving-relevant part of a model folder's config.json (written by `MelanomaModel.save_pretrained`)."""

    backbone: str
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    classes: tuple[str, ...]
    temperature: float
    meta_hidden: int
    colour_constancy: str = "none"  # `inference.image.prepare`'s colour correction, as in training

    @classmethod
    def load(cls, folder: str | Path) -> "ModelConfig":
        path = Path(folder) / CONFIG
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except KeyError as err:
            raise ValueError(f"{path} has no {err.args[0]!r}; it was not written by this project.") from None

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "ModelConfig":
        """From config.json's values (a torch model's `config` too); raises KeyError / ValueError."""
        check_config(raw.get("classes", CLASSES), raw.get("temperature", 1.0),
                     raw.get("metadata_encoding", ENCODING_VERSION))
        return cls(backbone=str(raw["backbone"]), image_size=int(raw["image_size"]),
                   mean=tuple(float(x) for x in raw["mean"]), std=tuple(float(x) for x in raw["std"]),
                   classes=tuple(raw.get("classes", CLASSES)), temperature=float(raw.get("temperature", 1.0)),
                   meta_hidden=int(raw.get("meta_hidden", 32)),
                   colour_constancy=str(raw.get("colour_constancy", "none")))


def probabilities(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Calibrated class probabilities: softmax(logits / temperature) over the last axis, in the logits'
    float precision (float32 at least). The one softmax of the project: serving, metrics and the
    temperature fit all call it. NumPy, not torch: on a handful of numbers torch's per-op dispatch costs
    more than the arithmetic, and serving has no torch."""
    z = np.asarray(logits)
    z = z.astype(np.result_type(z.dtype, np.float32)) / temperature
    z = np.exp(z - z.max(axis=-1, keepdims=True))  # shifted: no overflow for any logit
    return z / z.sum(axis=-1, keepdims=True)
