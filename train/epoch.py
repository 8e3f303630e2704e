"""One pass over the data: `train_one_epoch` (forward, loss, backward, step) and `validate`.

Both run on every process. Training syncs once per optimizer step (loss for the log, NaN or an
expired time budget on any rank); validation gathers every row exactly once with
`gather_for_metrics`, so the metrics do not depend on the number of processes.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from inference.image import scale_shift

from .config import Config
from .ema import WeightAverage
from .errors import TrainingError
from .ranks import all_ranks, check_batch, sync_buffers


class Clock:
    """Wall-clock budget of this session (`--time_limit`)."""

    def __init__(self, limit_seconds: float | None) -> None:
        self.start, self.limit = time.monotonic(), limit_seconds

    def expired(self, margin: float = 0.0) -> bool:
        return self.limit is not None and time.monotonic() - self.start + margin >= self.limit


def batch_to_input(images: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    """uint8 (..., H, W, 3) → float32 (..., 3, H, W): `inference.image.to_input`'s arithmetic on a whole batch.

    Images stay uint8 (a quarter of float32's bytes) through augmentation, collation and the copy to
    the device; this is the last step, run on the batch where the model is. The result is a permuted
    view of the HWC pixels, i.e. channels-last in memory, the layout the convolutions run fastest in.
    """
    scale, shift = (torch.from_numpy(a).to(images.device) for a in scale_shift(mean, std))
    return (images.float() * scale - shift).movedim(-1, -3)


def model_input(accelerator: Accelerator, model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """The batch's uint8 pixels, normalised on the device with the model's own mean/std (the ones its
    config.json gives the Predictor), channels-last."""
    net = accelerator.unwrap_model(model)
    return batch_to_input(batch["image"], net.mean, net.std)


@torch.no_grad()
def validate(accelerator: Accelerator, model: torch.nn.Module, loader: DataLoader, bad_images: str) -> dict:
    """Logits, labels and dataset indices of every validation row exactly once, on every process."""
    model.eval()
    sync_buffers(accelerator, model)
    parts: dict[str, list] = {"logits": [], "label": [], "index": [], "ok": []}
    skipped: list[str] = []
    for batch in tqdm(loader, desc="validate", leave=False, disable=not accelerator.is_local_main_process):
        skipped += check_batch(batch, bad_images)
        logits = model(model_input(accelerator, model, batch), batch["meta"]).float()
        # per batch, so the padding accelerate adds to make shards even is dropped from the last one
        got = accelerator.gather_for_metrics({k: batch[k] for k in ("label", "index", "ok")} | {"logits": logits})
        for key in parts:
            parts[key].append(got[key].cpu())
    out = {k: torch.cat(v).numpy() for k, v in parts.items()}
    keep = out.pop("ok") == 1  # unreadable images (bad_images: skip) are not scored
    return {**{k: v[keep] for k, v in out.items()}, "skipped": all_ranks(accelerator, skipped)}


def train_one_epoch(accelerator: Accelerator, model: torch.nn.Module, loader: DataLoader,
                    optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
                    weights: torch.Tensor | None, cfg: Config, clock: Clock, desc: str,
                    ema: WeightAverage | None = None) -> dict:
    """One pass over the loader; stops early (stopped=True) when the time budget runs out on any rank.
    `ema`, if given, is updated after every optimizer step."""
    model.train()
    loss_sum = seen = 0.0
    skipped: list[str] = []
    pending = torch.zeros(2, device=accelerator.device)  # loss x images, images since the last sync
    stopped, start = False, time.monotonic()
    bar = tqdm(total=len(loader), desc=desc, leave=False, disable=not accelerator.is_local_main_process)
    for batch in loader:
        skipped += check_batch(batch, cfg.bad_images)
        with accelerator.accumulate(model):
            logits = model(model_input(accelerator, model, batch), batch["meta"]).float()
            ok = batch["ok"].float()
            per = F.cross_entropy(logits, batch["label"], weight=weights, reduction="none",
                                  label_smoothing=cfg.label_smoothing)
            norm = (weights[batch["label"]] * ok) if weights is not None else ok
            loss = (per * ok).sum() / norm.sum().clamp_min(1e-8)  # weighted mean over readable images
            accelerator.backward(loss)
            if accelerator.sync_gradients and cfg.clip_grad_norm:
                accelerator.clip_grad_norm_(model.parameters(), cfg.clip_grad_norm)
            optimizer.step()
            scheduler.step()  # accelerate steps it only when the optimizer stepped
            optimizer.zero_grad(set_to_none=True)
        pending += torch.stack([loss.detach() * ok.sum(), ok.sum()])
        bar.update()
        if accelerator.sync_gradients:
            if ema is not None:
                ema.update(accelerator.unwrap_model(model))
            # one small all-reduce per optimizer step: the loss for the log, NaN on any rank, time up on any rank
            expired = torch.tensor([float(clock.expired())], device=accelerator.device)
            step_loss, step_images, time_up = accelerator.reduce(torch.cat([pending, expired]), "sum").tolist()
            pending.zero_()
            if not math.isfinite(step_loss):
                raise TrainingError(f"{desc}: the training loss became NaN/inf; stopping. The last complete state "
                                    "and best model on disk are intact (lower lr or check the data).")
            loss_sum, seen = loss_sum + step_loss, seen + step_images
            if accelerator.is_local_main_process and seen:
                bar.set_postfix(loss=f"{loss_sum / seen:.4f}")
            if time_up > 0:
                stopped = True
                break
    bar.close()
    return {"loss": loss_sum / max(seen, 1.0), "images": seen, "seconds": time.monotonic() - start,
            "stopped": stopped, "skipped": all_ranks(accelerator, skipped)}
