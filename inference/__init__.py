"""Everything the Space needs: metadata encoding, the eval transform, the Predictor.

Names are imported on first use (PEP 562), so `import inference.layout` (standard library only) pulls
in nothing else.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "ImageError": "image", "eval_transform": "image", "open_image": "image",
    "Metadata": "metadata", "encode": "metadata", "normalize": "metadata",
    "CLASSES": "model", "CLASS_NAMES": "model", "MALIGNANT": "model", "ModelConfig": "model",
    "Predictor": "predictor",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'inference' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
