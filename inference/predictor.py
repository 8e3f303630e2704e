"""Predictor: load a trained model once, assess images + metadata, return plain dicts. No torch.

The model runs as its exported ONNX graph in onnxruntime (`inference.onnx_backend`); config.json is read
as JSON (`inference.model.ModelConfig`). Thread-safe: one session serves concurrent requests and every
call keeps its state on the stack, so one Predictor can serve a multi-threaded web app.

Each answer also says whether the image looks like the dermoscopic images the model was trained on
(`inference.guard`; its `ood_score` is the one thing this project calls a score) and where its
melanoma probability falls on the validation scale (`inference.triage`). Both come from files beside
the weights; a model without them runs, and says so in its answers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from . import metadata as md
from .guard import UNAVAILABLE, Guard
from .hub import resolve
from .image import ImageInput, correct_colour, crop, open_image, to_input
from .layout import ONNX, WEIGHTS
from .model import HEAD_WEIGHT, MALIGNANT, ModelConfig, probabilities
from .onnx_backend import EMBEDDING, LOGITS, OnnxSession
from .triage import load_operating_points, triage

# A step timer: called with a step's name, returns the context manager that times it (bench/inference.py).
StepTimer = Callable[[str], AbstractContextManager]


def dihedral_views(images: np.ndarray) -> np.ndarray:
    """(B, C, H, W) → (8·B, C, H, W): the 8 flips/transposes of each image, view-major.

    Lesions have no canonical orientation, so averaging these views is free accuracy; stacking them
    lets test-time augmentation run as one batched forward instead of eight.
    """
    views = []
    for base in (images, images.swapaxes(-1, -2)):
        views += [base, base[..., ::-1], base[..., ::-1, :], base[..., ::-1, ::-1]]
    return np.ascontiguousarray(np.concatenate(views, axis=0))


class Predictor:
    """Assesses dermoscopic images with patient metadata using a model's ONNX graph."""

    def __init__(self, config: ModelConfig, session: Any, head: np.ndarray | None = None, model_id: str = "local",
                 revision: str | None = None, guard: Guard | None = None,
                 operating_points: dict | None = None) -> None:
        """`session`: anything with `OnnxSession.run`'s signature (training's eager torch session too).
        `head`: the head's weight matrix (n_classes, features + metadata), for Grad-CAM; None turns
        explanations off. `guard` / `operating_points`: see module doc."""
        self.config, self.session, self.head = config, session, head
        self.model_id, self.revision = model_id, revision
        self.guard, self.operating_points = guard, operating_points
        self.timer: StepTimer | None = None  # set to time each step of the flow (bench/inference.py)
        # At most this many images (views included) per run of the graph; None: the whole batch in one run. The
        # Space sets 4: a run's activations are its memory peak, and 8 views of 2 requests at a time in one go
        # took a burst of large uploads to 464 MB, in runs of 4 to 405 MB (budget 450; bench/memory.py).
        self.rows_per_run: int | None = None

    @classmethod
    def from_pretrained(cls, source: str | Path, revision: str | None = None,
                        threads: int | None = None) -> "Predictor":
        """Load from a local folder, a Hub repo id, or 'repo_id@revision' (offline: the HF cache)."""
        resolved = resolve(source, revision)
        folder = resolved.folder
        if not (folder / ONNX).is_file():
            raise FileNotFoundError(f"{resolved.model_id} has no {ONNX}; export one: "
                                    f"python -m train.onnx_export --model {folder}")
        from safetensors import safe_open

        with safe_open(str(folder / WEIGHTS), framework="numpy") as weights:
            head = weights.get_tensor(HEAD_WEIGHT)
        return cls(ModelConfig.load(folder), OnnxSession(folder / ONNX, threads=threads), head=head,
                   model_id=resolved.model_id, revision=resolved.revision, guard=Guard.load(folder),
                   operating_points=load_operating_points(folder))

    @property
    def classes(self) -> tuple[str, ...]:
        return self.config.classes

    def step(self, name: str) -> AbstractContextManager:
        """The context a step of the flow runs in: nothing, unless `timer` is set."""
        return self.timer(name) if self.timer is not None else nullcontext()

    def square(self, image: ImageInput) -> np.ndarray:
        """Open one image and crop the model's square from it, as uploaded: uint8 (S, S, 3). Raises `ImageError`."""
        with self.step("decode"):
            pixels = open_image(image, min_side=self.config.image_size)
        with self.step("resize + centre crop"):
            return crop(pixels, self.config.image_size)

    def to_model_input(self, square: np.ndarray) -> np.ndarray:
        """A cropped square → the model's (3, S, S) float32 input: its colour correction, then normalisation;
        with `square`, `inference.image.prepare` + `to_input`, exactly as training feeds the model."""
        c = self.config
        with self.step("normalise"):
            return to_input(correct_colour(square, c.colour_constancy), c.mean, c.std)

    def model_input(self, image: ImageInput) -> np.ndarray:
        """Open + eval-transform one image into the model's (3, S, S) float32 input. Raises `ImageError`."""
        return self.to_model_input(self.square(image))

    def forward(self, images: np.ndarray, meta: np.ndarray, tta: bool = False,
                outputs: Sequence[str] = (LOGITS, EMBEDDING)) -> tuple[np.ndarray, list[np.ndarray]]:
        """(calibrated probabilities (B, n_classes), the other `outputs`, each (V, B, ...): V = 8 views with `tta`,
        else 1; view 0 is the untransformed image).

        One run of the graph: the guard's embedding (and Grad-CAM's feature map) come out of the same
        forward pass as the logits. With `tta`, the probabilities average the 8 dihedral views."""
        batch = images.shape[0]
        if tta:
            images, meta = dihedral_views(images), np.tile(meta, (8, 1))
        names, step = (LOGITS, *(o for o in outputs if o != LOGITS)), self.rows_per_run or len(images) or 1
        with self.step("model"):
            runs = [self.session.run(images[i:i + step], meta[i:i + step], names)
                    for i in range(0, max(len(images), 1), step)]
            logits, *others = [np.concatenate(parts) for parts in zip(*runs)] if len(runs) > 1 else runs[0]
        with self.step("calibration"):
            probs = probabilities(logits, self.config.temperature)
            probs = probs.reshape(-1, batch, probs.shape[-1]).mean(axis=0)
        return probs, [o.reshape(-1, batch, *o.shape[1:]) for o in others]

    def _answer(self, probs: np.ndarray, ood: float | None, colour: float | None, meta: md.Metadata,
                tta: bool) -> dict[str, Any]:
        values = dict(zip(self.classes, (float(p) for p in probs)))
        guarded = self.guard is not None
        in_distribution, caution = self.guard.verdict(ood, colour) if guarded else (None, None)
        return {
            "melanoma_probability": values["mel"],
            "malignant_probability": sum(values[c] for c in MALIGNANT),
            "diagnosis": dict(sorted(values.items(), key=lambda kv: kv[1], reverse=True)),
            "in_distribution": in_distribution,
            "caution": caution,
            "ood_score": ood,
            "colour_score": colour,
            "guard": {"available": True, "refuse_above": self.guard.refuse, "caution_above": self.guard.caution,
                      "colour_box": list(self.guard.colour_box), "views": self.guard.views} if guarded else
                     {"available": False, "reason": UNAVAILABLE},
            # no band for an image the guard refuses: a program reading only `triage` must not act on a cat
            "triage": None if in_distribution is False else triage(values["mel"], self.operating_points),
            "metadata": meta.as_dict(),
            "tta": tta,
            "model_id": self.model_id,
            "model_revision": self.revision,
            "backend": "onnxruntime",
        }

    def predict(self, image: ImageInput, age: Any = None, sex: Any = None, site: Any = None,
                tta: bool = True) -> dict[str, Any]:
        """Assess one image. Raises ValueError (or its subclass ImageError) for bad input.

        `tta` (default): the mean over the 8 dihedral views, in one batched run: the answer the Space serves,
        on whose validation scores the triage lines and the guard's lines were set. `tta=False`: one view,
        about 8x cheaper, on the same lines (a little noisier; docs/model.md has both measured).

        Returns a plain dict: melanoma_probability, malignant_probability, diagnosis (class →
        probability, most likely first), in_distribution (False: clearly not a skin lesion under a
        dermatoscope, the number is not to be shown; None: no guard), caution (None, or one sentence: a lesion
        unlike the training images, or colours unlike a dermatoscope's), ood_score, colour_score, guard,
        triage (band + validation sensitivity/specificity, or None when refused), metadata (as interpreted),
        tta, model_id, model_revision, backend.
        """
        return self.predict_batch([image], [age], [sex], [site], tta=tta)[0]

    def predict_batch(self, images: Sequence[ImageInput], ages: Sequence[Any] | None = None,
                      sexes: Sequence[Any] | None = None, sites: Sequence[Any] | None = None,
                      tta: bool = True, batch_size: int = 32, progress: Any = None) -> list[dict[str, Any]]:
        """Assess many images; metadata lists run parallel to `images` (None = all unknown).

        All metadata is validated before any image is assessed; an error names the item's index.
        `progress`, if given, is called with the number of items finished after each batch.
        """
        n = len(images)
        columns = [list(col) if col is not None else [None] * n for col in (ages, sexes, sites)]
        if any(len(col) != n for col in columns):
            raise ValueError("ages, sexes and sites must have one entry per image.")
        metas = []
        with self.step("metadata"):
            for i, (age, sex, site) in enumerate(zip(*columns)):
                try:
                    metas.append(md.normalize(age, sex, site))
                except ValueError as err:
                    raise ValueError(f"item {i}: {err}") if n > 1 else err from None
            encoded = np.stack([md.encode(m) for m in metas]) if metas else np.zeros((0, md.META_DIM), np.float32)
        answers: list[dict[str, Any]] = []
        for start in range(0, n, batch_size):
            chunk = range(start, min(start + batch_size, n))
            squares = np.stack([self.square(images[i]) for i in chunk])
            answers += self.assess(squares, encoded[start:chunk.stop], metas[start:chunk.stop], tta)[0]
            if progress is not None:
                progress(len(chunk))
        return answers

    def assess(self, squares: np.ndarray, encoded: np.ndarray, metas: Sequence[md.Metadata],
               tta: bool = True) -> tuple[list[dict[str, Any]], np.ndarray]:
        """Cropped squares (B, S, S, 3) uint8 with their encoded and normalised metadata → (the answers, the pooled
        embedding of every view (V, B, D)): `predict_batch`'s work on one batch; `predict_patient` compares the
        lesions' embeddings too."""
        pixels = np.stack([self.to_model_input(s) for s in squares])
        probs, (embedding,) = self.forward(pixels, encoded, tta=tta, outputs=(LOGITS, EMBEDDING))
        ood: list = [None] * len(squares)
        colour: list = [None] * len(squares)
        if self.guard is not None:
            with self.step("guard"):
                ood, colour = self.guard.score(embedding).tolist(), self.guard.colour_score(squares).tolist()
        with self.step("answer"):
            answers = [self._answer(p, o, c, m, tta) for p, o, c, m in zip(probs, ood, colour, metas)]
        return answers, embedding

    def predict_patient(self, images: Sequence[ImageInput], age: Any = None, sex: Any = None,
                        sites: Sequence[Any] | None = None, tta: bool = True) -> dict[str, Any]:
        """Assess all of one patient's lesions together: `inference.patient.assess_patient`."""
        from .patient import assess_patient

        return assess_patient(self, images, age, sex, sites, tta)
