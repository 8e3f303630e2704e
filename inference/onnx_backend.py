"""The onnxruntime session that serves a model: NumPy in, NumPy out, no torch.

`train.onnx_export` writes `model.onnx` beside `model.safetensors`, in one export, with inputs `image`
(B, 3, S, S) and `meta` (B, META_DIM) and three outputs: `logits` (B, n_classes), `embedding` (B, D: the
pooled backbone features the out-of-scope guard reads) and `features` (B, D, h, w: the last feature map,
from which `inference.explain` computes Grad-CAM). The batch dimension is dynamic. A run computes only
the outputs asked for, so scoring never copies the feature map out. Calibration (temperature, softmax)
stays in `inference.model.probabilities`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

LOGITS, EMBEDDING, FEATURES = "logits", "embedding", "features"
OUTPUTS = (LOGITS, EMBEDDING, FEATURES)


class ExportTooOld(ValueError):
    """A model.onnx written before the graph had every output in `OUTPUTS`."""


class OnnxSession:
    """One thread-safe onnxruntime session over a model folder's model.onnx."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        # One intra-op pool for the Space's cores; requests run side by side safely on one session.
        options.intra_op_num_threads = threads or int(os.environ.get("OMP_NUM_THREADS", 0)) or (os.cpu_count() or 1)
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # No spin-waiting between runs: on a 2-core Space, spinning workers starve the web server's event loop.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        missing = [name for name in OUTPUTS if name not in {o.name for o in self.session.get_outputs()}]
        if missing:
            folder = self.path.parent
            raise ExportTooOld(f"{self.path} has no {', '.join(missing)} output (exported before this version); "
                               f"re-export it: python -m train.onnx_export --model {folder}")
        # An image-only model (meta_hidden=0) ignores `meta`, and the exporter drops unused inputs.
        self.inputs = {i.name for i in self.session.get_inputs()}
        # Give the arena's free memory back after every run. Without it the arena keeps the largest batch it ever
        # served: with 8 views per request the Space sat at 431 MB after a burst (budget 450) and peaked at 517 MB,
        # a five-member ensemble at 589 / 681 MB (bench/memory.py, issue 29). It costs a few ms a request.
        self.run_options = ort.RunOptions()
        self.run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

    def run(self, images: np.ndarray, meta: np.ndarray, outputs: Sequence[str] = (LOGITS,)) -> list[np.ndarray]:
        """The named outputs for float32 `images` (B, 3, S, S) and `meta` (B, META_DIM)."""
        feeds = {"image": np.asarray(images, dtype=np.float32), "meta": np.asarray(meta, dtype=np.float32)}
        return self.session.run(list(outputs), {k: v for k, v in feeds.items() if k in self.inputs}, self.run_options)

