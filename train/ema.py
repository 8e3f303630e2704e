"""Exponential moving average of the weights (`--ema_decay`): validated, kept as the best model and published
in place of the raw weights, which keep training.

Averaging the last few hundred optimizer steps smooths the noise of small batches and a high learning
rate. The decay warms up as min(decay, (1 + n) / (10 + n)) after n updates, so the average does not
remember the random head of the first steps in a short run. BatchNorm statistics are averaged too.
The average is saved in every resumable state (`ema.safetensors`), so a resumed run continues it.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

FILE = "ema.safetensors"


class WeightAverage:
    """The running average of `model`'s state (a deep copy that never trains)."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.updates = decay, 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """Move the average towards `model` (the unwrapped training model) after an optimizer step."""
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for mine, theirs in zip(self.model.state_dict().values(), model.state_dict().values()):
            if mine.is_floating_point():
                mine.lerp_(theirs.detach(), 1.0 - decay)
            else:  # BatchNorm's step counter
                mine.copy_(theirs)

    def save(self, folder: Path) -> None:
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        save_file(state, str(folder / FILE), metadata={"updates": str(self.updates)})

    def load(self, folder: Path) -> None:
        from safetensors import safe_open

        with safe_open(str(folder / FILE), "pt") as f:
            self.updates = int(f.metadata()["updates"])
        self.model.load_state_dict(load_file(str(folder / FILE), device=str(next(self.model.parameters()).device)))
