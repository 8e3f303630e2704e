"""Predictor: load a trained model once, score images + metadata, return plain dicts.

Thread-safe: the model is in eval mode, every call runs under `torch.inference_mode` and keeps its
state on the stack, so one Predictor can serve a multi-threaded web app.

Each answer also says whether the image looks like the dermoscopic images the model was trained on
(`inference.guard`) and where its melanoma probability falls on the validation scale (`inference.triage`).
Both come from files beside the weights; a model without them runs, and says so in its answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import metadata as md
from .device import pick_device
from .guard import UNAVAILABLE, Guard
from .hub import resolve
from .image import ImageInput, eval_transform, open_image
from .model import MALIGNANT, MelanomaModel, probabilities
from .onnx_backend import ONNX_NAME, OnnxLogits
from .onnx_backend import available as onnx_available
from .triage import load_operating_points, triage


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
                 device: str | None = None, onnx_path: str | Path | None = None, guard: Guard | None = None,
                 operating_points: dict | None = None) -> None:
        """`onnx_path` (CPU only) makes onnxruntime compute the logits; the torch model stays loaded
        for its config and for Grad-CAM explanations. `guard` / `operating_points`: see module doc."""
        self.device = pick_device(device)
        self.model = model.to(self.device).eval()
        self.model_id, self.revision = model_id, revision
        if onnx_path is not None and self.device.type != "cpu":
            raise ValueError("The onnxruntime backend runs on the CPU; use backend='torch' on CUDA.")
        self.onnx = OnnxLogits(onnx_path) if onnx_path is not None else None
        self.guard, self.operating_points = guard, operating_points

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
                   onnx_path=onnx_file if use_onnx else None, guard=Guard.load(resolved.folder),
                   operating_points=load_operating_points(resolved.folder))

    @property
    def classes(self) -> tuple[str, ...]:
        return self.model.classes

    def image_tensor(self, image: ImageInput) -> torch.Tensor:
        """Open + eval-transform one image into a (3, S, S) tensor. Raises `ImageError` on bad input."""
        m = self.model
        return eval_transform(open_image(image, min_side=m.image_size), m.image_size, m.mean, m.std)

    def probabilities(self, images: torch.Tensor, meta: torch.Tensor, tta: bool = False) -> torch.Tensor:
        """Calibrated class probabilities (B, n_classes) for ready tensors, in one forward pass."""
        return self.scores(images, meta, tta, embed=False)[0]

    @torch.inference_mode()
    def scores(self, images: torch.Tensor, meta: torch.Tensor, tta: bool = False,
               embed: bool = True) -> tuple[torch.Tensor, np.ndarray | None]:
        """(probabilities (B, n_classes), pooled embeddings (B, D) of the untransformed views, or None).

        The embedding comes out of the same forward pass (onnxruntime: the graph's `embedding`
        output; torch: the head's input); only an ONNX file without that output costs a second
        backbone pass, in torch."""
        images, meta = images.to(self.device), meta.to(self.device)
        batch = images.shape[0]
        if tta:
            images, meta = dihedral_views(images), meta.repeat(8, 1)
        if self.onnx is not None:
            logits, embedding = self.onnx.run(images, meta, embedding=embed)
            if embed and embedding is None:
                embedding = self.model.head_and_embedding(self.model.forward_features(images[:batch]), meta[:batch])[1]
        else:
            logits, embedding = self.model.head_and_embedding(self.model.forward_features(images), meta)
        probs = probabilities(logits.float().cpu().numpy(), self.model.temperature)
        # dihedral_views puts the untransformed images first: the guard was fitted on those.
        pooled = embedding[:batch].float().cpu().numpy() if embed and embedding is not None else None
        return torch.from_numpy(probs.reshape(-1, batch, probs.shape[-1]).mean(axis=0)), pooled

    def _answer(self, probs: torch.Tensor, ood: float | None, meta: md.Metadata, tta: bool) -> dict[str, Any]:
        values = dict(zip(self.classes, (float(p) for p in probs)))
        guarded = self.guard is not None
        in_distribution = bool(ood <= self.guard.threshold) if guarded else None
        return {
            "melanoma_probability": values["mel"],
            "malignant_probability": sum(values[c] for c in MALIGNANT),
            "diagnosis": dict(sorted(values.items(), key=lambda kv: kv[1], reverse=True)),
            "in_distribution": in_distribution,
            "ood_score": ood,
            "guard": {"available": True, "threshold": self.guard.threshold} if guarded else
                     {"available": False, "reason": UNAVAILABLE},
            # no band for an image the guard refuses: a program reading only `triage` must not act on a cat
            "triage": None if in_distribution is False else triage(values["mel"], self.operating_points),
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
        probability, most likely first), in_distribution (False: not like a dermoscopic image; None:
        no guard), ood_score, guard, triage (band + validation sensitivity/specificity, or None),
        metadata (as interpreted), tta, model_id, model_revision, backend.
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
            probs, embedding = self.scores(pixels, encoded, tta=tta, embed=self.guard is not None)
            ood = self.guard.score(embedding).tolist() if self.guard is not None else [None] * len(chunk)
            answers += [self._answer(p, o, metas[i], tta) for p, o, i in zip(probs, ood, chunk)]
            if progress is not None:
                progress(len(chunk))
        return answers
