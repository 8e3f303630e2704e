"""Resumable training states that survive being killed at any instant, and the finite-weights guard.

accelerate's `save_state` is not atomic: with automatic naming it deletes old checkpoints first and
`load_state` takes the highest-numbered folder, complete or not. So a state is written into a
temporary folder, renamed to `epoch-NNN` (a rename is atomic on one file system), and only then
marked complete with a `COMPLETE` file; resuming takes the newest folder that has the marker.
A kill at any point leaves either the previous complete state or the new one, never a half one.

Each state folder also holds `best/`, the fold's best model so far (a hard link to the previous
state's copy when the epoch did not improve): the best model always belongs to the state it is
restored with, so a resumed run cannot end up with a best model from an epoch it re-did differently.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

MARKER = "COMPLETE"
TMP_PREFIX = ".tmp-"


class NonFiniteWeights(RuntimeError):
    pass


def assert_finite(model: torch.nn.Module, what: str) -> None:
    """Refuse to save or push weights containing NaN/inf (safetensors would store them happily)."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise NonFiniteWeights(f"Refusing to {what}: parameter {name} holds NaN or inf values.")


def state_name(epoch: int) -> str:
    return f"epoch-{epoch:03d}"


def complete_states(folder: Path) -> list[Path]:
    """Complete state folders, oldest first."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith("epoch-") and (p / MARKER).is_file()]
    return sorted(found, key=lambda p: p.name)


def latest_state(folder: Path) -> Path | None:
    states = complete_states(folder)
    return states[-1] if states else None


def clean_incomplete(folder: Path) -> list[str]:
    """Remove leftovers of interrupted writes: temp folders and renamed-but-unmarked folders."""
    removed = []
    if folder.is_dir():
        for p in folder.iterdir():
            if p.is_dir() and (p.name.startswith(TMP_PREFIX) or not (p / MARKER).is_file()):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p.name)
    return removed


def _fsync_tree(folder: Path) -> None:
    """Flush file contents before the rename makes them official (a power cut must not leave zeros)."""
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())


def link_or_copy(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for item in src.iterdir():
        try:
            os.link(item, dst / item.name)  # the files never change once written: sharing them is safe
        except OSError:
            shutil.copy2(item, dst / item.name)


def write_state(folder: Path, epoch: int, save_accelerator_state, trainer: dict, write_best, previous: Path | None,
                is_main: bool, wait) -> Path:
    """Write state `epoch` atomically. Every process calls this (accelerate saves per-process RNG states).

    save_accelerator_state(path): accelerator.save_state into the temp folder.
    write_best(path) -> bool: on the main process, save the best model there if this epoch improved it.
    """
    tmp, final = folder / f"{TMP_PREFIX}{state_name(epoch)}", folder / state_name(epoch)
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    wait()
    save_accelerator_state(tmp)
    if is_main:
        if not write_best(tmp / "best") and previous is not None and (previous / "best").is_dir():
            link_or_copy(previous / "best", tmp / "best")
        (tmp / "trainer.json").write_text(json.dumps(trainer, indent=1))
        _fsync_tree(tmp)
        shutil.rmtree(final, ignore_errors=True)  # an unmarked leftover of the same epoch
        os.replace(tmp, final)
        (final / MARKER).write_text("ok\n")
    wait()
    return final


def prune(folder: Path, keep: int) -> None:
    """Delete all but the `keep` newest complete states (after a newer one is complete)."""
    for old in complete_states(folder)[:-keep]:
        (old / MARKER).unlink(missing_ok=True)  # unmark first: a half-deleted folder is never "complete"
        shutil.rmtree(old, ignore_errors=True)


def read_trainer(state: Path) -> dict:
    return json.loads((state / "trainer.json").read_text())


def replace_dir(src: Path, dst: Path) -> None:
    """Make `src` appear at `dst`, replacing it. The old copy is moved aside first and removed last."""
    aside = dst.with_name(dst.name + ".old")
    shutil.rmtree(aside, ignore_errors=True)
    if dst.exists():
        os.replace(dst, aside)
    os.replace(src, dst)
    shutil.rmtree(aside, ignore_errors=True)
