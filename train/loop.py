"""The accelerate training loop, in the shape of accelerate's `examples/cv_example.py`.

`training_function(config)` validates the data, makes the folds, trains each requested fold
(one `accelerator.prepare` per fold, since every fold has a fresh model and optimizer), then the
main process writes the OOF predictions, metrics, plots, card and final model and, if asked, pushes.
`main()` turns bad input into one clear message and a non-zero exit, never a traceback.

Launch: `python -m train ...` (one process) or `accelerate launch -m train ...` (several).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import gather_object, is_tensorboard_available, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from inference.backbone import data_config, load_backbone_weights
from inference.model import CLASSES, MelanomaModel

from . import augment, checkpoint, publish, report
from .config import Config, ConfigError, recipe_changes, resolve, to_yaml, with_backbone_defaults
from .data import BalancedSampler, DataError, LesionDataset, class_weights, collate, load_sources
from .folds import assign_folds, fold_table
from .metrics import MEL, auc, softmax

EXIT_TIME_LIMIT = 75  # EX_TEMPFAIL: stopped by --time-limit; `--resume` continues


class TrainingError(RuntimeError):
    """Training cannot go on (NaN loss, non-finite weights); printed without a traceback."""

    every_rank = True


class Clock:
    """Wall-clock budget of this session (`--time-limit`)."""

    def __init__(self, limit_seconds: float | None) -> None:
        self.start, self.limit = time.monotonic(), limit_seconds

    def expired(self, margin: float = 0.0) -> bool:
        return self.limit is not None and time.monotonic() - self.start + margin >= self.limit


def build_model(cfg: Config, pretrained: bool) -> MelanomaModel:
    """The fused model for this config; ImageNet backbone weights loaded once here, at the start of a fold."""
    dc = data_config(cfg.backbone)
    model = MelanomaModel(backbone=cfg.backbone, image_size=cfg.image_size, mean=dc["mean"], std=dc["std"],
                          meta_hidden=cfg.meta_hidden if cfg.metadata_mode == "fused" else 0, dropout=cfg.dropout)
    if pretrained and cfg.backbone_weights != "none":
        try:
            load_backbone_weights(model.backbone, cfg.backbone, cfg.backbone_weights)
        except (ImportError, ValueError) as err:
            raise ConfigError(f"backbone_weights: {err}") from None
    return model


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases and normalisation weights (1-D tensors), as in nanoGPT and timm."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]


def warmup_cosine(warmup: int, total: int, min_ratio: float):
    """LR multiplier per scheduler step: linear warm-up, then cosine down to min_ratio."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return factor


def any_rank(accelerator: Accelerator, flag: bool) -> bool:
    """True on every process if it is true on one: decisions that end loops must be unanimous."""
    return bool(accelerator.reduce(torch.tensor([float(flag)], device=accelerator.device), "sum").item() > 0)


def all_ranks(accelerator: Accelerator, items: list[str]) -> list[str]:
    """Every process's list joined (sorted, without repeats: padding can repeat a row), on every process."""
    return sorted(set(gather_object(items) if accelerator.num_processes > 1 else items))


def check_batch(batch: dict, bad_images: str) -> list[str]:
    if batch["errors"] and bad_images == "fail":
        raise DataError(f"Cannot read image {batch['errors'][0]} Fix or remove it (or run with --bad_images skip).",
                        every_rank=True)
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


@torch.no_grad()
def evaluate(accelerator: Accelerator, model: torch.nn.Module, loader: DataLoader, bad_images: str) -> dict:
    """Logits, labels and dataset indices of every validation row exactly once, on every process."""
    model.eval()
    sync_buffers(accelerator, model)
    parts: dict[str, list] = {"logits": [], "label": [], "index": [], "ok": []}
    skipped: list[str] = []
    for batch in tqdm(loader, desc="validate", leave=False, disable=not accelerator.is_local_main_process):
        skipped += check_batch(batch, bad_images)
        logits = model(batch["image"], batch["meta"]).float()
        # per batch, so the padding accelerate adds to make shards even is dropped from the last one
        got = accelerator.gather_for_metrics({"logits": logits, "label": batch["label"], "index": batch["index"],
                                              "ok": batch["ok"]})
        for key in parts:
            parts[key].append(got[key].cpu())
    out = {k: torch.cat(v).numpy() for k, v in parts.items()}
    keep = out.pop("ok") == 1  # unreadable images (bad_images: skip) are not scored
    return {**{k: v[keep] for k, v in out.items()}, "skipped": all_ranks(accelerator, skipped)}


def train_one_epoch(accelerator: Accelerator, model, loader, optimizer, scheduler, weights, cfg: Config,
                    clock: Clock, desc: str) -> dict:
    model.train()
    loss_sum = seen = 0.0
    skipped: list[str] = []
    pending = torch.zeros(2, device=accelerator.device)  # loss x images, images since the last sync
    stopped, start = False, time.monotonic()
    bar = tqdm(total=len(loader), desc=desc, leave=False, disable=not accelerator.is_local_main_process)
    for batch in loader:
        skipped += check_batch(batch, cfg.bad_images)
        with accelerator.accumulate(model):
            logits = model(batch["image"], batch["meta"]).float()
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
            # one small all-reduce per optimizer step: the loss for the log, NaN on any rank, time up on any rank
            flags = accelerator.reduce(torch.cat([pending, torch.tensor([float(clock.expired())],
                                                                        device=accelerator.device)]), "sum").tolist()
            pending.zero_()
            if not math.isfinite(flags[0]):
                raise TrainingError(f"{desc}: the training loss became NaN/inf; stopping. The last complete state "
                                    "and best model on disk are intact (lower lr or check the data).")
            loss_sum, seen = loss_sum + flags[0], seen + flags[1]
            if accelerator.is_local_main_process and seen:
                bar.set_postfix(loss=f"{loss_sum / seen:.4f}")
            if flags[2] > 0:
                stopped = True
                break
    bar.close()
    return {"loss": loss_sum / max(seen, 1.0), "images": seen, "seconds": time.monotonic() - start,
            "stopped": stopped, "skipped": all_ranks(accelerator, skipped)}


def _val_table(val_rows: pd.DataFrame, val: dict) -> pd.DataFrame:
    table = pd.DataFrame(val["logits"], columns=[f"logit_{c}" for c in CLASSES])
    table.insert(0, "image_id", val_rows["image_id"].to_numpy()[val["index"]])
    table.insert(1, "label", [CLASSES[i] for i in val["label"]])
    return table.sort_values("image_id").reset_index(drop=True)


def train_fold(accelerator: Accelerator, cfg: Config, frame: pd.DataFrame, fold_of: pd.Series, fold: int,
               run: Path, clock: Clock) -> str:
    """Train one fold to its end (or early stop); returns 'done' or 'time_limit'."""
    fold_dir, main = run / f"fold{fold}", accelerator.is_main_process
    if (fold_dir / "DONE").is_file():
        accelerator.print(f"fold {fold}: already done, skipping")
        return "done"
    states = fold_dir / "states"
    if main:
        removed = checkpoint.clean_incomplete(states)
        if removed:
            accelerator.print(f"fold {fold}: removed incomplete state(s) {', '.join(removed)}")
    accelerator.wait_for_everyone()
    set_seed(cfg.seed + fold, device_specific=True)

    train_rows, val_rows = frame[fold_of != fold], frame[fold_of == fold]
    dc = data_config(cfg.backbone)
    fused = cfg.metadata_mode == "fused"
    model = build_model(cfg, pretrained=True)
    train_ds = LesionDataset(train_rows, cfg.image_size, dc["mean"], dc["std"],
                             augment.build(cfg.augment, cfg.image_size), cfg.meta_dropout, fused, seed=cfg.seed + fold)
    val_ds = LesionDataset(val_rows, cfg.image_size, dc["mean"], dc["std"], None, 0.0, fused)
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
    opt_steps = math.ceil((len(train_ds) // cfg.batch_size // accelerator.num_processes) / cfg.grad_accum)
    scale = opt_steps * accelerator.num_processes
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(max(1, round(cfg.warmup_epochs * scale)), cfg.epochs * scale, cfg.min_lr_ratio))
    model, optimizer, train_dl, val_dl, scheduler = accelerator.prepare(model, optimizer, train_dl, val_dl, scheduler)

    trainer = {"fold": fold, "epoch": 0, "best_auc": None, "best_epoch": None, "bad_epochs": 0, "history": []}
    latest = checkpoint.latest_state(states)
    if latest is not None:
        accelerator.load_state(str(latest))
        trainer = checkpoint.read_trainer(latest)
        accelerator.print(f"fold {fold}: resumed from {latest} (epoch {trainer['epoch']} done)")
    accelerator.print(f"fold {fold}: {len(train_ds)} training / {len(val_ds)} validation images "
                      f"({int(val_rows.target.sum())} melanomas), {opt_steps} optimizer steps per epoch")

    outcome, epoch_seconds = "done", None
    for epoch in range(trainer["epoch"], cfg.epochs):
        if cfg.patience and trainer["bad_epochs"] >= cfg.patience:
            break
        if epoch_seconds is not None and any_rank(accelerator, clock.expired(margin=1.1 * epoch_seconds)):
            outcome = "time_limit"  # the next epoch would not finish in time: stop at a complete state
            break
        t0 = time.monotonic()
        train_ds.set_epoch(epoch)
        train_dl.set_epoch(epoch)
        stats = train_one_epoch(accelerator, model, train_dl, optimizer, scheduler, weights, cfg, clock,
                                desc=f"fold {fold} epoch {epoch + 1}/{cfg.epochs}")
        if stats["stopped"]:
            outcome = "time_limit"  # the partial epoch is dropped; the previous complete state stands
            break
        val = evaluate(accelerator, model, val_dl, cfg.bad_images)
        y_mel = (val["label"] == MEL).astype(int)
        val_auc = auc(y_mel, softmax(val["logits"])[:, MEL])
        val_loss = float(F.cross_entropy(torch.from_numpy(val["logits"]), torch.from_numpy(val["label"])).item())
        improved = val_auc is not None and (trainer["best_auc"] is None or val_auc > trainer["best_auc"])
        if improved:
            trainer.update(best_auc=val_auc, best_epoch=epoch + 1, bad_epochs=0)
        else:
            trainer["bad_epochs"] += 1
        row = {"fold": fold, "epoch": epoch + 1, "train_loss": stats["loss"], "val_loss": val_loss,
               "val_melanoma_auc": val_auc, "lr": scheduler.get_last_lr()[0],
               "train_images_per_s": stats["images"] / stats["seconds"], "epoch_seconds": time.monotonic() - t0,
               "skipped_images": len(stats["skipped"]) + len(val["skipped"])}
        trainer["history"].append(row)
        accelerator.log({f"fold{fold}/{k}": v for k, v in row.items() if k not in ("fold", "epoch") and v is not None},
                        step=epoch + 1)
        trainer["epoch"] = epoch + 1

        unwrapped = accelerator.unwrap_model(model)
        checkpoint.assert_finite(unwrapped, f"save the fold {fold} epoch {epoch + 1} checkpoint")

        def write_best(path: Path) -> bool:
            if not improved:
                return False
            unwrapped.save_pretrained(path)  # config.json + model.safetensors, no `module.` prefixes
            _val_table(val_rows, val).to_csv(path / "val_predictions.csv", index=False)
            (path / "best.json").write_text(json.dumps({"fold": fold, "epoch": epoch + 1, "melanoma_auc": val_auc}))
            return True

        latest = checkpoint.write_state(states, epoch + 1, lambda p: accelerator.save_state(str(p)), trainer,
                                        write_best, latest, main, accelerator.wait_for_everyone)
        if main:
            checkpoint.prune(states, cfg.keep_states)
            pd.DataFrame(trainer["history"]).to_csv(fold_dir / "log.csv", index=False)
            if row["skipped_images"]:
                with open(fold_dir / "skipped_images.txt", "a") as f:
                    f.write("".join(f"epoch {epoch + 1}: {e}\n" for e in stats["skipped"] + val["skipped"]))
        auc_text = "n/a" if val_auc is None else f"{val_auc:.4f}"
        best_text = "n/a" if trainer["best_auc"] is None else f"{trainer['best_auc']:.4f} @ {trainer['best_epoch']}"
        accelerator.print(
            f"fold {fold} epoch {epoch + 1}/{cfg.epochs}  train_loss {stats['loss']:.4f}  val_loss {val_loss:.4f}  "
            f"val_mel_auc {auc_text} (best {best_text})  "
            f"lr {row['lr']:.2e}  {row['train_images_per_s']:.1f} img/s  {row['epoch_seconds']:.0f}s"
            + (f"  skipped {row['skipped_images']} unreadable images" if row["skipped_images"] else ""))
        if cfg.patience and trainer["bad_epochs"] >= cfg.patience:
            accelerator.print(f"fold {fold}: early stop, no better validation AUC for {cfg.patience} epochs")
        epoch_seconds = time.monotonic() - t0

    if outcome == "done":
        if latest is None or not (latest / "best").is_dir():
            raise TrainingError(f"fold {fold}: finished without a best model (validation AUC was never defined).")
        if main:
            tmp = fold_dir / ".tmp-best"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(latest / "best", tmp)
            checkpoint.replace_dir(tmp, fold_dir / "best")
            shutil.copy2(latest / "trainer.json", fold_dir / "trainer.json")
            (fold_dir / "DONE").write_text("ok\n")
            shutil.rmtree(states, ignore_errors=True)  # a finished fold is never resumed: free the disk
        accelerator.wait_for_everyone()
    accelerator.free_memory()  # drop this fold's model/optimizer from accelerate's lists before the next
    return outcome


def prepare_run(cfg: Config, run: Path, folds_csv: pd.DataFrame) -> None:
    """Claim or re-open the run folder. Checks run on every process (same files → same answer)."""
    saved = run / "config.yaml"
    if saved.is_file() and not cfg.resume:
        raise ConfigError(f"{run} already holds a run; pass --resume to continue it or choose another output_dir.")
    if saved.is_file():
        import yaml

        changes = recipe_changes(yaml.safe_load(saved.read_text()), cfg)
        if changes:
            raise ConfigError(f"--resume: the recipe differs from the saved run in {', '.join(changes)}; "
                              f"resume with the same settings or start a new output_dir.")
        old = run / "folds.csv"
        if old.is_file() and not pd.read_csv(old, dtype={"image_id": str})[["image_id", "fold"]].equals(
                folds_csv[["image_id", "fold"]].reset_index(drop=True)):
            raise DataError(f"--resume: the data or folds differ from {old}; resume with the same data.")


def training_function(cfg: Config) -> dict:
    clock = Clock(cfg.time_limit_seconds)
    if cfg.push_to_hub and not os.environ.get("HF_TOKEN"):
        raise ConfigError("--push-to-hub needs a Hugging Face write token in the HF_TOKEN environment variable.")
    accelerator = Accelerator(
        mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.grad_accum,
        log_with="tensorboard" if is_tensorboard_available() else None, project_dir=cfg.output_dir,
        # shuffling seeded by data_seed + epoch: identical on every process and after a resume
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=cfg.seed))
    run = Path(cfg.output_dir)
    frame, duplicates = load_sources(cfg.isic_dirs, cfg.ham_dirs, cfg.isic_duplicates)
    fold_of = assign_folds(frame, cfg.folds, cfg.seed, duplicates, cfg.fold_source)
    for fold in cfg.folds_to_train:
        n_mel = int(frame.target[fold_of == fold].sum())
        if n_mel == 0 or n_mel == int((fold_of == fold).sum()):
            raise DataError(f"Validation fold {fold} has {n_mel} melanomas among {int((fold_of == fold).sum())} "
                            "images: "
                            "melanoma AUC is undefined. Use fewer folds or more data.")
    table = fold_table(frame, fold_of, duplicates)
    prepare_run(cfg, run, table)
    accelerator.wait_for_everyone()  # every rank has checked the folder before rank 0 writes into it
    if accelerator.is_main_process:
        run.mkdir(parents=True, exist_ok=True)
        (run / "config.yaml").write_text(to_yaml(cfg))
        table.to_csv(run / "folds.csv", index=False)
    accelerator.wait_for_everyone()
    if accelerator.log_with:  # TensorBoard only when it is installed; the CSV logs are always written
        accelerator.init_trackers("tensorboard")
    per_source = ", ".join(f"{s}: {n}" for s, n in frame.source.value_counts().items())
    accelerator.print(f"{len(frame)} images ({per_source}), "
                      f"{int(frame.target.sum())} melanomas; {cfg.folds} folds, training {cfg.folds_to_train}; "
                      f"{accelerator.num_processes} process(es) on {accelerator.device}, "
                      f"mixed precision {accelerator.mixed_precision}")

    outcome = "done"
    for fold in cfg.folds_to_train:
        outcome = train_fold(accelerator, cfg, frame, fold_of, fold, run, clock)
        if outcome != "done":
            break
    done = [f for f in cfg.folds_to_train if (run / f"fold{f}" / "DONE").is_file()]
    result = {"status": "complete" if outcome == "done" else "time_limit", "folds_done": done, "commit": None}
    if accelerator.is_main_process:
        if outcome != "done":
            accelerator.print(f"Stopped by the time limit after folds {done or 'none'}; continue with --resume.")
        model_dir = report.finalize(cfg, run, frame, done, partial=outcome != "done")
        if model_dir is not None:
            accelerator.print(f"Model, metrics and card: {model_dir}")
            if cfg.push_to_hub:
                result["commit"] = publish.push(model_dir, cfg.push_to_hub, os.environ["HF_TOKEN"])
                accelerator.print(f"Pushed to https://huggingface.co/{cfg.push_to_hub}/tree/{result['commit']} "
                                  f"- pin it as {cfg.push_to_hub}@{result['commit']}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return result


def main(argv: list[str] | None = None) -> int:
    rank = int(os.environ.get("RANK", "0"))
    try:
        cfg = with_backbone_defaults(resolve(argv))
        result = training_function(cfg)
    except (ConfigError, DataError, TrainingError, checkpoint.NonFiniteWeights, publish.PushError) as err:
        if rank == 0 or getattr(err, "every_rank", False):
            print(f"error: {err}", file=sys.stderr, flush=True)
        return 2 if isinstance(err, ConfigError) else 1
    except KeyboardInterrupt:
        print("interrupted; continue with --resume", file=sys.stderr)
        return 130
    return 0 if result["status"] == "complete" else EXIT_TIME_LIMIT
