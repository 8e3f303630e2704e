"""Export the fused model to ONNX beside its safetensors, check it, and re-export old model folders.

    python -m train.onnx_export --model output/default     # (re)write output/default/model.onnx

One export gives everything serving needs from one run of the graph (`inference.onnx_backend`):
`logits`, the pooled `embedding` the out-of-scope guard scores, and the last feature map `features`
from which `inference.explain` computes Grad-CAM in NumPy. That NumPy Grad-CAM is exact only when the
head is linear in the average-pooled feature map, so export refuses any other head (`check_linear_head`).

Choices, deliberately:
* The TorchScript-based exporter (`dynamo=False`): it handles timm EfficientNets directly and needs
  only the `onnx` package (the dynamo exporter also wants onnxscript), and the file it writes is
  plain ONNX that any onnxruntime reads.
* Opset 17: supported by every onnxruntime release since 1.14 (2023), so older Space images work,
  and it has every op an EfficientNet needs.
* Dynamic batch dimension only: image size is fixed by the model's config (the eval transform
  always produces it), and a fixed spatial size lets onnxruntime fold shapes at load time.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from inference.layout import ONNX
from inference.metadata import META_DIM
from inference.model import probabilities
from inference.onnx_backend import EMBEDDING, FEATURES, LOGITS, OUTPUTS, OnnxSession

from .network import FoldEnsemble, MelanomaModel, load_model

OPSET = 17


class _Graph(nn.Module):
    """(image, meta) → (logits, pooled embedding, feature map): the exported function."""

    def __init__(self, model: MelanomaModel | FoldEnsemble) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor, meta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        features = self.model.forward_features(image)
        logits, pooled = self.model.head_and_embedding(features, meta)
        return logits, pooled, features


def check_linear_head(model: MelanomaModel | FoldEnsemble, features: torch.Tensor, meta: torch.Tensor) -> None:
    """Raise ValueError unless the logits are one linear layer over [mean-pooled features, metadata branch]:
    the condition under which Grad-CAM is W·A (inference/explain.py). Checked by structure and by value; for a
    fold ensemble, each member on its part of the joined feature map."""
    if isinstance(model, FoldEnsemble):
        for member, part in zip(model.members, features.chunk(len(model.members), dim=1)):
            check_linear_head(member, part, meta)
        return
    pool = getattr(model.backbone, "global_pool", None)
    linear = [m for m in model.head if not isinstance(m, nn.Dropout)]
    if getattr(pool, "pool_type", None) != "avg" or len(linear) != 1 or not isinstance(linear[0], nn.Linear):
        raise ValueError("export needs average pooling and a single Linear head (plus dropout): the Space's NumPy "
                         f"Grad-CAM is exact only then; got pooling {getattr(pool, 'pool_type', pool)!r} and head "
                         f"{[type(m).__name__ for m in model.head]}.")
    with torch.inference_mode():
        logits, pooled = model.head_and_embedding(features, meta)
        branch = model.meta(meta) if model.meta is not None else features.new_zeros(len(meta), 0)
        linear_logits = torch.cat([features.mean(dim=(2, 3)), branch], dim=1) @ linear[0].weight.T + linear[0].bias
    if not torch.allclose(pooled, features.mean(dim=(2, 3)), atol=1e-5) or \
            not torch.allclose(logits, linear_logits, atol=1e-4):
        raise ValueError("the head's logits are not linear in the mean-pooled feature map; the NumPy Grad-CAM "
                         "would not be exact, so this model cannot be exported for the Space.")


def export_onnx(model: MelanomaModel | FoldEnsemble, folder: str | Path, atol: float = 1e-4) -> Path:
    """Write `folder/model.onnx` for `model` and verify every output against torch: probabilities within `atol`,
    the embedding and the feature map within `atol` of their own scale (a trained feature map reaches ~70, where
    float32 rounding alone differs by ~1e-4). The file is replaced only once it has passed."""
    path = Path(folder) / ONNX
    model = model.cpu().eval()
    torch.manual_seed(0)
    images = torch.randn(2, 3, model.image_size, model.image_size)
    meta = torch.rand(2, META_DIM)
    with torch.inference_mode():
        expected = _Graph(model)(images, meta)
    check_linear_head(model, expected[2], meta)
    candidate = path.with_name(path.name + ".partial")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation chatter is not actionable
        torch.onnx.export(
            _Graph(model), (images, meta), str(candidate), input_names=["image", "meta"], output_names=list(OUTPUTS),
            dynamic_axes={name: {0: "batch"} for name in ("image", "meta", *OUTPUTS)},
            opset_version=OPSET, dynamo=False,
        )
    got = dict(zip(OUTPUTS, OnnxSession(candidate, threads=1).run(images.numpy(), meta.numpy(), OUTPUTS)))
    want = dict(zip(OUTPUTS, (t.numpy() for t in expected)))
    errors = {LOGITS: np.abs(probabilities(got[LOGITS], 1.0) - probabilities(want[LOGITS], 1.0)).max(),
              **{name: np.abs(got[name] - want[name]).max() / max(1.0, float(np.abs(want[name]).max()))
                 for name in (EMBEDDING, FEATURES)}}
    if max(errors.values()) > atol:
        candidate.unlink()
        worst = ", ".join(f"{k} {v:.2e}" for k, v in errors.items())
        raise RuntimeError(f"ONNX export disagrees with torch ({worst}); {path} left as it was.")
    candidate.replace(path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.onnx_export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, type=Path, help="model folder (config.json + model.safetensors)")
    args = parser.parse_args(argv)
    try:
        path = export_onnx(load_model(args.model), args.model)
    except (OSError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
