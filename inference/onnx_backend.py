"""onnxruntime backend: the same logits as the torch model, 2–3× faster on a CPU Space.

`train.onnx_export` writes `model.onnx` beside `model.safetensors` with inputs `image` (B, 3, S, S)
and `meta` (B, META_DIM) and output `logits` (B, n_classes), batch dimension dynamic; `train.fit_guard`
adds a second output, `embedding` (the pooled backbone features the guard scores), so one run of the
session gives both. Calibration
(temperature, softmax) stays in `inference.model.probabilities`, shared by both backends.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .layout import ONNX as ONNX_NAME
EMBEDDING = "embedding"


def available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


class OnnxLogits:
    """Callable (images, meta) → logits tensor, backed by one thread-safe onnxruntime session."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        # One intra-op pool sized like torch's (the Space's cores); requests run side by side safely.
        options.intra_op_num_threads = threads or int(os.environ.get("OMP_NUM_THREADS", 0)) or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # No spin-waiting between runs: on a 2-core Space, spinning workers starve the web server's event loop.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.path = Path(path)
        # An image-only model (meta_hidden=0) ignores `meta`, and the exporter drops unused inputs.
        self.inputs = {i.name for i in self.session.get_inputs()}
        self.has_embedding = EMBEDDING in {o.name for o in self.session.get_outputs()}

    def __call__(self, images: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        return self.run(images, meta, embedding=False)[0]

    def run(self, images: torch.Tensor, meta: torch.Tensor,
            embedding: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(logits, embedding or None when not asked for or the graph has no such output)."""
        feeds = {"image": images.detach().cpu().float().numpy(), "meta": meta.detach().cpu().float().numpy()}
        feeds = {name: value for name, value in feeds.items() if name in self.inputs}
        names = ["logits", EMBEDDING] if embedding and self.has_embedding else ["logits"]
        outputs = self.session.run(names, feeds)
        return torch.from_numpy(outputs[0]), torch.from_numpy(outputs[1]) if len(outputs) > 1 else None
