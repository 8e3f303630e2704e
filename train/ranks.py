"""Decisions and data that must agree across training processes (a no-op with one process)."""

from __future__ import annotations

import os

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object

from .errors import DataError


def any_rank(accelerator: Accelerator, flag: bool) -> bool:
    """True on every process if it is true on one: decisions that end loops must be unanimous."""
    return bool(accelerator.reduce(torch.tensor([float(flag)], device=accelerator.device), "sum").item() > 0)


def all_ranks(accelerator: Accelerator, items: list[str]) -> list[str]:
    """Every process's list joined (sorted, without repeats: padding can repeat a row), on every process."""
    return sorted(set(gather_object(items) if accelerator.num_processes > 1 else items))


def machines(accelerator: Accelerator) -> int:
    """How many machines the process group spans: the distinct node ranks (GROUP_RANK, which torchrun, and so
    `accelerate launch --num_machines N --machine_rank K`, sets in every process of machine K)."""
    return len(all_ranks(accelerator, [os.environ.get("GROUP_RANK", "0")]))


def check_batch(batch: dict, bad_images: str) -> list[str]:
    """The batch's unreadable images; with bad_images 'fail' the first one stops training, on this rank."""
    if batch["errors"] and bad_images == "fail":
        raise DataError(f"Cannot read image {batch['errors'][0]} Fix or remove it (or run with --bad_images skip).",
                        same_on_every_rank=False)
    return list(batch["errors"])


def sync_buffers(accelerator: Accelerator, model: torch.nn.Module) -> None:
    """Give every process rank 0's BatchNorm statistics before validating.

    Each rank updates its running statistics with its own batches; rank 0's are the ones saved, so
    they are the ones every rank must evaluate with. DDP's default (broadcast_buffers=True) already
    re-broadcasts them at each forward; this makes the guarantee independent of that setting.
    """
    if accelerator.num_processes > 1:
        for buffer in accelerator.unwrap_model(model).buffers():
            torch.distributed.broadcast(buffer, src=0)


def leave(code: int) -> None:
    """End this process now with `code` when it is one rank of a multi-process launch; return otherwise.

    Called once a rank's work is written and its files are closed. Left to the interpreter's shutdown, a rank's
    gloo threads can be destroyed while still running (SIGABRT, "terminate called without an active exception")
    or hang there: the launcher then reports a failure or waits for ever, and a rank that dies that way while
    rank 0 is still in its finalize makes the launcher stop rank 0 too. Both were seen in the Kaggle rehearsal
    on this machine (2026-12-03: a smoke run hung 10 minutes after printing its table; a CI session's training
    exited 1 with no error). `os._exit` skips that teardown: the process group is torn down by the OS."""
    import sys

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
