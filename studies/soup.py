"""Average the weights of models trained on the same folds with different recipes into one model folder.

    python -m studies.soup --models runs/cpu_flips/model runs/cpu_device/model --weights 0.3 0.7 \\
        --output_dir runs/soup

A weight average of models fine-tuned from the same ImageNet start (a "model soup": Wortsman et al., ICML
2022, arXiv:2203.05482) keeps one model's cost and often generalises better than either. Here it joins a
model trained with `flips` (best on the sources it saw) and one trained with `device` augmentation (best on
other clinics' images, worse on HAM10000's own): issue 24, docs/model.md "Recipe ablations across sources".

The models must share the architecture (config.json), the folds (folds.csv) and the published fold. The
average is then treated as a trained fold: its validation logits are computed afresh on that fold's rows,
and finalize's steps run as after training (temperature, metrics.json, ONNX, guard and triage lines,
plots, card). metrics.json records the ingredients and their weights under `weight_average`; the card says
so. BatchNorm running statistics are averaged like the weights (the models started from the same weights
and stay close; `python -m studies.crosscheck` measures the result).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd
import torch
import yaml
from accelerate import Accelerator
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from inference.layout import (BEST, BEST_JSON, CONFIG, FOLDS, METRICS, TRAINING_CONFIG, VAL_PREDICTIONS, WEIGHTS, fold_dir,
                              logit_columns)
from inference.model import CLASSES, probabilities

from train.checkpoint import assert_finite
from train.config import Config, make, recipe_changes, to_yaml
from train.data import LesionDataset, collate
from train.epoch import validate
from train.errors import ConfigError, DataError, TrainError
from train.finalize import build_model_folder
from train.metrics import MEL, auc
from train.network import MelanomaModel
from train.run_folder import load_run_data


def read_ingredient(folder: Path) -> tuple[Config, dict, pd.DataFrame, int]:
    """(recipe, architecture without temperature, folds, published fold) of one model folder."""
    missing = [n for n in (CONFIG, WEIGHTS, TRAINING_CONFIG, FOLDS, METRICS) if not (folder / n).is_file()]
    if missing:
        raise ConfigError(f"{folder} is not a trained model folder (no {', '.join(missing)}); give the `model/` "
                          "folder a training run wrote.")
    arch = json.loads((folder / CONFIG).read_text())
    arch.pop("temperature", None)
    cfg = make(yaml.safe_load((folder / TRAINING_CONFIG).read_text()))
    folds = pd.read_csv(folder / FOLDS, dtype={"image_id": str})[["image_id", "fold"]]
    return cfg, arch, folds, json.loads((folder / METRICS).read_text())["published_fold"]


def average_weights(folders: list[Path], weights: list[float]) -> dict[str, torch.Tensor]:
    """Σ wᵢ · stateᵢ over the floating-point tensors (weights normalised to sum to 1); integer buffers
    (BatchNorm's step counter) are taken from the first model."""
    total = sum(weights)
    states = [load_file(f / WEIGHTS) for f in folders]
    out = {}
    for key, first in states[0].items():
        if not first.is_floating_point():
            out[key] = first
            continue
        out[key] = sum((w / total) * s[key].double() for w, s in zip(weights, states)).to(first.dtype)
    return out


def validation_table(cfg: Config, model: MelanomaModel, rows: pd.DataFrame) -> pd.DataFrame:
    """The model's validation logits per image, in the layout `train.loop.run_epoch` saves."""
    accelerator = Accelerator()
    dataset = LesionDataset(rows, cfg.image_size, None, 0.0, cfg.metadata_mode == "fused", colour=cfg.colour_constancy)
    loader = DataLoader(dataset, batch_size=cfg.eval_batch_size or 2 * cfg.batch_size, shuffle=False,
                        num_workers=cfg.num_workers, collate_fn=collate)
    model, loader = accelerator.prepare(model.to(memory_format=torch.channels_last), loader)
    val = validate(accelerator, model, loader, cfg.bad_images)
    table = pd.DataFrame(val["logits"], columns=logit_columns(CLASSES))
    table.insert(0, "image_id", rows["image_id"].to_numpy()[val["index"]])
    table.insert(1, "label", [CLASSES[i] for i in val["label"]])
    return table.sort_values("image_id").reset_index(drop=True)


def soup(folders: list[Path], weights: list[float], output_dir: Path) -> Path:
    """Average the models in `folders` with `weights` into `output_dir/model`; returns that folder."""
    if len(folders) < 2 or len(weights) != len(folders) or min(weights) < 0 or sum(weights) <= 0:
        raise ConfigError("give two or more --models and one non-negative --weights value per model.")
    if output_dir.exists() and any(output_dir.iterdir()):
        raise ConfigError(f"{output_dir} is not empty; choose another --output_dir.")
    ingredients = [read_ingredient(f) for f in folders]
    cfg, arch, folds, fold = ingredients[0]
    for folder, (_, other_arch, other_folds, other_fold) in zip(folders[1:], ingredients[1:]):
        if other_arch != arch:
            raise ConfigError(f"{folder} has another architecture than {folders[0]} (config.json); only models of "
                              "one architecture can be averaged.")
        if not other_folds.equals(folds) or other_fold != fold:
            raise ConfigError(f"{folder} was trained on other folds than {folders[0]}; average models trained on "
                              "the same folds.csv and published fold, or the validation figures would be leaked.")
    base = yaml.safe_load(to_yaml(cfg))
    cfg = make({**base, "output_dir": str(output_dir), "resume": False})
    data = load_run_data(cfg)
    if not data.folds_csv[["image_id", "fold"]].reset_index(drop=True).equals(folds.reset_index(drop=True)):
        raise DataError(f"the data under the recipe's paths no longer gives {folders[0]}'s folds.csv; average "
                        "with the data the models were trained on.")
    model = MelanomaModel.from_pretrained(str(folders[0]))
    model.load_state_dict(average_weights(folders, weights))
    model.set_temperature(1.0)  # refitted on the average's own validation logits
    assert_finite(model, "save the weight average")
    best = fold_dir(output_dir, fold) / BEST
    best.mkdir(parents=True)
    val_rows = data.frame[data.fold_of == fold]
    table = validation_table(cfg, model, val_rows)
    model.save_pretrained(best)
    table.to_csv(best / VAL_PREDICTIONS, index=False)
    val_auc = auc((table.label == "mel").astype(int).to_numpy(),
                  probabilities(table[logit_columns(CLASSES)].to_numpy(), 1.0)[:, MEL])
    (best / BEST_JSON).write_text(json.dumps({"fold": fold, "epoch": None, "melanoma_auc": val_auc}))
    data.folds_csv.to_csv(output_dir / FOLDS, index=False)
    total = sum(weights)
    differ = sorted({k for c, *_ in ingredients for k in recipe_changes(base, c)} - {"output_dir"})
    summary = {
        "complete": True, "folds_total": cfg.folds, "folds_requested": [fold], "folds_trained": [fold],
        "per_fold_best": {str(fold): json.loads((best / BEST_JSON).read_text())}, "published_fold": fold,
        "model_selection_note": "A weight average of models each chosen by melanoma AUC on this validation fold: "
                                "these figures are slightly optimistic.",
        "train_images_per_s_mean": None,
        # each ingredient's settings where the recipes differ (the rest: training_config.yaml)
        "weight_average": [{"model": str(f), "weight": w / total, "recipe": {k: getattr(c, k) for k in differ}}
                           for f, w, (c, *_) in zip(folders, weights, ingredients)],
    }
    return build_model_folder(cfg, output_dir, data, [fold], summary, history=None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studies.soup", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, nargs="+", required=True, help="model folders written by training runs")
    parser.add_argument("--weights", type=float, nargs="+", required=True, help="one weight per model (normalised)")
    parser.add_argument("--output_dir", type=Path, required=True, help="a new folder: the average goes to its model/")
    args = parser.parse_args(argv)
    try:
        folder = soup(args.models, args.weights, args.output_dir)
    except (TrainError, FileNotFoundError) as err:
        print(f"soup: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    print(f"Model, metrics and card: {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
