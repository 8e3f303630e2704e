"""Export the fused model to ONNX beside its safetensors, and check that both give the same answer.

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

import warnings
from pathlib import Path

import torch

from inference.metadata import META_DIM
from inference.model import MelanomaModel
from inference.onnx_backend import ONNX_NAME, OnnxLogits

OPSET = 17


def export_onnx(model: MelanomaModel, folder: str | Path, atol: float = 1e-4) -> Path:
    """Write `folder/model.onnx` for `model` and verify its probabilities against torch within `atol`."""
    path = Path(folder) / ONNX_NAME
    model = model.cpu().eval()
    torch.manual_seed(0)
    images = torch.randn(2, 3, model.image_size, model.image_size)
    meta = torch.rand(2, META_DIM)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation chatter is not actionable
        torch.onnx.export(
            model, (images, meta), str(path), input_names=["image", "meta"], output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "meta": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=OPSET, dynamo=False,
        )
    with torch.inference_mode():
        expected = torch.softmax(model(images, meta), dim=-1)
    got = torch.softmax(OnnxLogits(path, threads=1)(images, meta), dim=-1)
    if not torch.allclose(expected, got, atol=atol):
        path.unlink()
        raise RuntimeError(f"ONNX export disagrees with torch by {float((expected - got).abs().max()):.2e}.")
    return path
