"""The one place that picks a device for inference (training leaves it to accelerate)."""

from __future__ import annotations

import torch


def pick_device(preference: str | None = None) -> torch.device:
    """`preference` ('cpu', 'cuda', 'cuda:1', ...) if given, else CUDA when available, else CPU."""
    if preference:
        device = torch.device(preference)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"Device {preference!r} was requested but CUDA is not available.")
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
