"""The errors training reports to the person running it: one line each, no traceback.

`main()` in loop.py catches `TrainError` only. `same_on_every_rank` says whether every process
raises the same error at the same point (a check of the config or the data, which every process
runs on the same files): then only the main process prints it. An error one process meets alone
(an unreadable image in its shard, a NaN on its batch) is printed by that process, so no rank
ever dies silently.
"""

from __future__ import annotations


class TrainError(Exception):
    """Base class: a message for people, printed as `error: ...` with this exit code."""

    exit_code = 1
    same_on_every_rank = True

    def __init__(self, message: str, same_on_every_rank: bool | None = None) -> None:
        super().__init__(message)
        if same_on_every_rank is not None:
            self.same_on_every_rank = same_on_every_rank


class ConfigError(TrainError, ValueError):
    """A bad option; the message names it and says what is allowed."""

    exit_code = 2


class DataError(TrainError):
    """Bad input data (missing files, unmapped labels, unreadable images)."""


class TrainingError(TrainError):
    """Training cannot go on (NaN loss, non-finite weights, no best model)."""


class NonFiniteWeights(TrainingError):
    """Weights holding NaN or inf: never saved, never pushed."""


class PushError(TrainError):
    """The Hub upload failed; the local model folder is intact."""


LOST_PEER = ("lost contact with the other processes of this run: a machine or a process stopped (its own log says "
             "why). Every complete epoch is saved in the run folder: run the same command with --resume on every "
             "machine to continue.")


def lost_peer(err: BaseException) -> bool:
    """Whether `err` is a collective failing because another process of the group is gone (its connection reset or
    closed, or the collective timed out): torch's DistError, or gloo's and NCCL's own RuntimeErrors."""
    import re

    import torch.distributed

    text = str(err)
    return isinstance(err, torch.distributed.DistError) or bool(
        re.search(r"gloo|nccl|connection (reset|closed)|timed? ?out", text, re.IGNORECASE))
