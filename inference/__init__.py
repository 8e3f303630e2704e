"""Everything the Space needs: metadata encoding, the model, the eval transform, the Predictor."""

from .image import ImageError, eval_transform, open_image
from .metadata import Metadata, encode, normalize
from .model import CLASS_NAMES, CLASSES, MALIGNANT, MelanomaModel
from .predictor import Predictor

__all__ = [
    "CLASSES", "CLASS_NAMES", "MALIGNANT", "ImageError", "MelanomaModel", "Metadata", "Predictor",
    "encode", "eval_transform", "normalize", "open_image",
]
