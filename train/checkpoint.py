"""Resumable training states that survive being killed at any instant, and the finite-weights guard.

accelerate's `save_state` is not atomic: with automatic naming it deletes old checkpoints first and
`load_state` takes the highest-numbered folder, complete or not. So a state is written in two steps:
`begin` makes a temporary folder that every process saves into, and `commit` (main process, after
all have written) renames it to `epoch-NNN` (a rename is atomic on one file system) and only then
marks it with a `COMPLETE` file. Resuming takes the newest folder with the marker, so a kill at any
point leaves either the previous complete state or the new one, never a half one.

Each state also holds `best/`, the fold's best model so far (hard links to the previous state's
copy when the epoch did not improve): the best model always belongs to the state it is restored
with, so a resumed run cannot end up with a best model from an epoch it re-did differently.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from inference.layout import BEST

from .errors import NonFiniteWeights

MARKER = "COMPLETE"
TMP_PREFIX = ".tmp-"
PROGRESS = "progress.json"


@dataclass
class FoldProgress:
    """What a fold has done so far. Saved in every state, so a resumed fold carries on exactly."""

    fold: int
    epochs_done: int = 0
    best_auc: float | None = None
    best_epoch: int | None = None
    epochs_without_gain: int = 0
    history: list[dict] = field(default_factory=list)

    def record(self, row: dict, val_auc: float | None) -> bool:
        """Append one epoch's log row; True if its validation AUC is the best so far."""
        improved = val_auc is not None and (self.best_auc is None or val_auc > self.best_auc)
        if improved:
            self.best_auc, self.best_epoch, self.epochs_without_gain = val_auc, row["epoch"], 0
        else:
            self.epochs_without_gain += 1
        self.history.append(row)
        self.epochs_done = row["epoch"]
        return improved

    def patience_spent(self, patience: int) -> bool:
        return bool(patience) and self.epochs_without_gain >= patience


@dataclass(frozen=True)
class PendingState:
    """A state being written: every process saves into `tmp`; `commit` makes it `final`."""

    tmp: Path
    final: Path


def assert_finite(model: torch.nn.Module, what: str) -> None:
    """Refuse to save or push weights containing NaN/inf (safetensors would store them happily)."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise NonFiniteWeights(f"Refusing to {what}: parameter {name} holds NaN or inf values.")


def complete_states(folder: Path) -> list[Path]:
    """Complete state folders, oldest first."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith("epoch-") and (p / MARKER).is_file()]
    return sorted(found, key=lambda p: p.name)


def latest_state(folder: Path) -> Path | None:
    states = complete_states(folder)
    return states[-1] if states else None


def read_progress(state: Path) -> FoldProgress:
    return FoldProgress(**json.loads((state / PROGRESS).read_text()))


def clean_incomplete(folder: Path) -> list[str]:
    """Remove leftovers of interrupted writes: temp folders and renamed-but-unmarked folders."""
    removed = []
    if folder.is_dir():
        for p in folder.iterdir():
            if p.is_dir() and (p.name.startswith(TMP_PREFIX) or not (p / MARKER).is_file()):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p.name)
    return removed


def begin(folder: Path, epoch: int, is_main: bool) -> PendingState:
    """Name the state of `epoch`; the main process makes its empty temporary folder.
    Every process must wait (accelerator.wait_for_everyone) before saving into it."""
    name = f"epoch-{epoch:03d}"
    pending = PendingState(folder / f"{TMP_PREFIX}{name}", folder / name)
    if is_main:
        shutil.rmtree(pending.tmp, ignore_errors=True)
        pending.tmp.mkdir(parents=True)
    return pending


def commit(pending: PendingState, progress: FoldProgress, previous: Path | None) -> Path:
    """Main process, after every process has saved into `pending.tmp`: make it the newest complete state.

    A `best/` the loop did not write (no improvement) is linked from the previous state."""
    tmp, final = pending.tmp, pending.final
    if not (tmp / BEST).is_dir() and previous is not None and (previous / BEST).is_dir():
        _link_or_copy(previous / BEST, tmp / BEST)
    (tmp / PROGRESS).write_text(json.dumps(asdict(progress), indent=1))
    _fsync_tree(tmp)
    shutil.rmtree(final, ignore_errors=True)  # an unmarked leftover of the same epoch
    os.replace(tmp, final)
    (final / MARKER).write_text("ok\n")
    return final


def prune(folder: Path, keep: int) -> None:
    """Delete all but the `keep` newest complete states (after a newer one is complete)."""
    for old in complete_states(folder)[:-keep]:
        (old / MARKER).unlink(missing_ok=True)  # unmark first: a half-deleted folder is never "complete"
        shutil.rmtree(old, ignore_errors=True)


def replace_dir(src: Path, dst: Path) -> None:
    """Make `src` appear at `dst`, replacing it. The old copy is moved aside first and removed last."""
    aside = dst.with_name(dst.name + ".old")
    shutil.rmtree(aside, ignore_errors=True)
    if dst.exists():
        os.replace(dst, aside)
    os.replace(src, dst)
    shutil.rmtree(aside, ignore_errors=True)


def _fsync_tree(folder: Path) -> None:
    """Flush file contents before the rename makes them official (a power cut must not leave zeros)."""
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for item in src.iterdir():
        try:
            os.link(item, dst / item.name)  # the files never change once written: sharing them is safe
        except OSError:
            shutil.copy2(item, dst / item.name)
