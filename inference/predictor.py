"""Predictor: load a trained model once, score images + metadata, return plain dicts.

Thread-safe: the model is in eval mode, every call runs under `torch.inference_mode` and keeps its
state on the stack, so one Predictor can serve a multi-threaded web app.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import metadata as md
from .device import pick_device
from .hub import resolve
from .image import ImageInput, eval_transform, open_image
from .model import MALIGNANT, MelanomaModel, probabilities
from .onnx_backend import ONNX_NAME, OnnxLogits
from .onnx_backend import available as onnx_available


def dihedral_views(images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) → (8·B, C, H, W): the 8 flips/transposes of each image, view-major.

    Lesions have no canonical orientation, so averaging these views is free accuracy; stacking them
    lets test-time augmentation run as one batched forward instead of eight.
    """
    views = []
    for base in (images, images.transpose(-1, -2)):
        views += [base, base.flip(-1), base.flip(-2), base.flip(-1, -2)]
    return torch.cat(views, dim=0)


class Predictor:
    """Scores dermoscopic images with patient metadata using a `MelanomaModel`."""

    def __init__(self, model: MelanomaModel, model_id: str = "local", revision: str | None = None,
                 device: str | None = None, onnx_path: str | Path | None = None) -> None:
        """`onnx_path` (CPU only) makes onnxruntime compute the logits; the torch model stays loaded
        for its config and for Grad-CAM explanations."""
        self.device = pick_device(device)
        self.model = model.to(self.device).eval()
        self.model_id, self.revision = model_id, revision
        if onnx_path is not None and self.device.type != "cpu":
            raise ValueError("The onnxruntime backend runs on the CPU; use backend='torch' on CUDA.")
        self.onnx = OnnxLogits(onnx_path) if onnx_path is not None else None

    @property
    def backend(self) -> str:
        return "onnxruntime" if self.onnx is not None else "torch"

    @classmethod
    def from_pretrained(cls, source: str | Path, revision: str | None = None, device: str | None = None,
                        backend: str = "auto") -> "Predictor":
        """Load from a local folder, a Hub repo id, or 'repo_id@revision' (offline: the HF cache).

        backend: 'auto' (onnxruntime on CPU when the model has a model.onnx, else torch), 'onnx' or 'torch'.
        """
        if backend not in ("auto", "onnx", "torch"):
            raise ValueError(f"backend must be 'auto', 'onnx' or 'torch', got {backend!r}.")
        resolved = resolve(source, revision)
        model = MelanomaModel.from_pretrained(str(resolved.folder))
        onnx_file = resolved.folder / ONNX_NAME
        if backend == "onnx" and not onnx_file.is_file():
            raise FileNotFoundError(f"{resolved.model_id} has no {ONNX_NAME}; use backend='torch' or export one.")
        use_onnx = backend == "onnx" or (
            backend == "auto" and onnx_file.is_file() and pick_device(device).type == "cpu" and onnx_available()
        )
        return cls(model, model_id=resolved.model_id, revision=resolved.revision, device=device,
                   onnx_path=onnx_file if use_onnx else None)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.model.classes

    def image_tensor(self, image: ImageInput) -> torch.Tensor:
        """Open + eval-transform one image into a (3, S, S) tensor. Raises `ImageError` on bad input."""
        m = self.model
        return eval_transform(open_image(image, min_side=m.image_size), m.image_size, m.mean, m.std)

    @torch.inference_mode()
    def probabilities(self, images: torch.Tensor, meta: torch.Tensor, tta: bool = False) -> torch.Tensor:
        """Calibrated class probabilities (B, n_classes) for ready tensors, in one forward pass."""
        images, meta = images.to(self.device), meta.to(self.device)
        batch = images.shape[0]
        if tta:
            images, meta = dihedral_views(images), meta.repeat(8, 1)
        logits = self.onnx(images, meta) if self.onnx is not None else self.model(images, meta)
        probs = probabilities(logits, self.model.temperature)
        return probs.view(-1, batch, probs.shape[-1]).mean(dim=0).cpu()

    def _answer(self, probs: torch.Tensor, meta: md.Metadata, tta: bool) -> dict[str, Any]:
        values = dict(zip(self.classes, (float(p) for p in probs)))
        return {
            "melanoma_probability": values["mel"],
            "malignant_probability": sum(values[c] for c in MALIGNANT),
            "diagnosis": dict(sorted(values.items(), key=lambda kv: kv[1], reverse=True)),
            "metadata": meta.as_dict(),
            "tta": tta,
            "model_id": self.model_id,
            "model_revision": self.revision,
            "backend": self.backend,
        }

    def predict(self, image: ImageInput, age: Any = None, sex: Any = None, site: Any = None,
                tta: bool = False) -> dict[str, Any]:
        """Score one image. Raises ValueError (or its subclass ImageError) for bad input.

        Returns a plain dict: melanoma_probability, malignant_probability, diagnosis (class →
        probability, most likely first), metadata (as interpreted), tta, model_id, model_revision.
        """
        return self.predict_batch([image], [age], [sex], [site], tta=tta)[0]

    def predict_batch(self, images: Sequence[ImageInput], ages: Sequence[Any] | None = None,
                      sexes: Sequence[Any] | None = None, sites: Sequence[Any] | None = None,
                      tta: bool = False, batch_size: int = 32, progress: Any = None) -> list[dict[str, Any]]:
        """Score many images; metadata lists run parallel to `images` (None = all unknown).

        All metadata is validated before any image is scored; an error names the item's index.
        `progress`, if given, is called with the number of items finished after each batch.
        """
        n = len(images)
        columns = [list(col) if col is not None else [None] * n for col in (ages, sexes, sites)]
        if any(len(col) != n for col in columns):
            raise ValueError("ages, sexes and sites must have one entry per image.")
        metas = []
        for i, (age, sex, site) in enumerate(zip(*columns)):
            try:
                metas.append(md.normalize(age, sex, site))
            except ValueError as err:
                raise ValueError(f"item {i}: {err}") if n > 1 else err from None
        answers: list[dict[str, Any]] = []
        for start in range(0, n, batch_size):
            chunk = range(start, min(start + batch_size, n))
            # Batches are assembled in NumPy: torch.stack wakes torch's thread pool for a plain copy,
            # which costs milliseconds per request on a busy 2-core Space.
            pixels = torch.from_numpy(np.stack([self.image_tensor(images[i]).numpy() for i in chunk]))
            encoded = torch.from_numpy(np.stack([md.encode(metas[i]).numpy() for i in chunk]))
            probs = self.probabilities(pixels, encoded, tta=tta)
            answers += [self._answer(p, metas[i], tta) for p, i in zip(probs, chunk)]
            if progress is not None:
                progress(len(chunk))
        return answers
