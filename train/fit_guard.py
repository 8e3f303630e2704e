"""Fit the out-of-scope guard and the operating points for an existing model folder.

    python -m train.fit_guard --model output/default     # data paths from its training_config.yaml
    python -m studies.guard_eval --model output/default    # then measure it, and the alternatives

The guard statistics come from the model's training rows, the guard threshold and the triage
lines from its validation rows (folds.csv: the fold the model was validated on), all scored by the
model itself (its torch weights, in batches through a data loader on the training device). Training can call
`fit_guard(model_dir, train_rows, val_rows)` at the end of a run. Serving reads the same embedding as the ONNX
graph's `embedding` output, from the same run as the logits, so the guard costs no second forward pass.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from inference import metadata as md
from inference.guard import Guard, colour_features, features, view_distance
from inference.image import correct_colour, crop, open_image, to_input
from inference.layout import FOLDS, TRAINING_CONFIG
from inference.model import probabilities
from inference.triage import OPERATING_POINTS

from .errors import DataError
from .network import FoldEnsemble, MelanomaModel, load_model


class _Rows(torch.utils.data.Dataset):
    """The rows' images as training and serving see them, with their encoded metadata and the colour statistics
    of the square as uploaded (before any colour correction): what serving computes for each answer."""

    def __init__(self, model: MelanomaModel | FoldEnsemble, rows: pd.DataFrame) -> None:
        self.size, self.mean, self.std, self.colour = model.image_size, model.mean, model.std, model.colour_constancy
        self.paths = rows["path"].tolist()
        self.meta = [md.encode(md.normalize(*(None if pd.isna(v) else v for v in (r.get("age"), r.get("sex"),
                                                                               r.get("site")))))
                     for r in rows.to_dict("records")]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        square = crop(open_image(self.paths[i], min_side=self.size), self.size)
        image = to_input(correct_colour(square, self.colour), self.mean, self.std)
        return torch.from_numpy(image), torch.from_numpy(self.meta[i]), torch.from_numpy(colour_features(square[None])[0])


@dataclass
class Embedded:
    """What the guard fit needs of each row: pooled embeddings (V, N, D) of V dihedral views (view 0: as uploaded),
    melanoma probability averaged over those views (N,), colour (N, 2)."""

    embeddings: np.ndarray
    probabilities: np.ndarray
    colours: np.ndarray

    def subset(self, keep: np.ndarray) -> "Embedded":
        return Embedded(self.embeddings[:, keep], self.probabilities[keep], self.colours[keep])


def dihedral_views(images: torch.Tensor) -> torch.Tensor:
    """`inference.predictor.dihedral_views` in torch, on the training device: (B, C, H, W) → (8·B, C, H, W),
    the same 8 flips/transposes in the same order (a test compares them)."""
    views = []
    for base in (images, images.transpose(-1, -2)):
        views += [base, base.flip(-1), base.flip(-2), base.flip(-2, -1)]
    return torch.cat(views)


@torch.inference_mode()
def embed_rows(model: MelanomaModel | FoldEnsemble, rows: pd.DataFrame, batch_size: int = 64, num_workers: int = 0,
               views: int = 1) -> Embedded:
    """The rows (`path`, + age/sex/site) through the model, batched through a data loader on the model's device
    (the training GPU at the end of a run): the guard fit embeds every training image, ~43k on Kaggle, and one
    image at a time would take most of the session's last minutes. `views` 8: each image's 8 dihedral views,
    probabilities averaged as `Predictor.predict` (tta=True) averages them."""
    if views not in (1, 8):
        raise ValueError(f"views must be 1 or 8, got {views}.")
    device = next(model.parameters()).device
    model.eval()
    mel = model.classes.index("mel")
    embeddings, probs, colours = [], [], []
    loader = torch.utils.data.DataLoader(_Rows(model, rows), batch_size=batch_size, num_workers=num_workers)
    for images, meta, colour in loader:
        images, meta, n = images.to(device), meta.to(device), len(images)
        if views == 8:
            images, meta = dihedral_views(images), meta.repeat(8, 1)
        logits, embedding = model.head_and_embedding(model.forward_features(images), meta)
        embeddings.append(embedding.float().cpu().numpy().reshape(views, n, -1))
        p = probabilities(logits.float().cpu().numpy(), model.temperature).reshape(views, n, -1).mean(axis=0)
        probs.append(p[:, mel])
        colours.append(colour.numpy())
    return Embedded(np.concatenate(embeddings, axis=1), np.concatenate(probs), np.concatenate(colours))


def _rounded(array: np.ndarray) -> np.ndarray:
    return np.asarray(array).astype(np.float32).astype(np.float64)  # what is stored is what was measured


def fit_statistics(x: np.ndarray, labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(means (K, D), shared Ledoit-Wolf precision (D, D)) of points `x`: one mean per label (the nearest-class
    guard, within-class covariance) or, with no labels, a single Gaussian (the guard before issue 22)."""
    from sklearn.covariance import LedoitWolf

    if labels is None:
        fitted = LedoitWolf().fit(x)
        return _rounded(fitted.location_[None]), _rounded(fitted.precision_)
    labels = np.asarray(labels)
    classes = sorted(set(labels))
    means = np.stack([x[labels == c].mean(axis=0) for c in classes])
    centred = x - means[np.searchsorted(classes, labels)]
    fitted = LedoitWolf(assume_centered=True).fit(centred)
    return _rounded(means), _rounded(fitted.precision_)


def threshold_for(scores: np.ndarray, max_flagged: float) -> float:
    """The smallest threshold that flags (score > threshold) at most `max_flagged` of `scores`."""
    ordered = np.sort(scores)
    allowed = int(np.floor(max_flagged * len(ordered)))
    return float(ordered[len(ordered) - allowed - 1])


# The lines, as shares of the validation images (in sample) that fall beyond them. Refusal hides the number, so it
# is kept rare (held out it must stay ≤ 1 %); a caution costs little, so it catches four times as many.
MAX_REFUSED, MAX_CAUTIONED, MAX_COLOUR = 0.005, 0.02, 0.01


def build_guard(train: Embedded, train_labels: np.ndarray | None, val: Embedded,
                max_refused: float = MAX_REFUSED, max_cautioned: float = MAX_CAUTIONED,
                max_colour: float = MAX_COLOUR) -> tuple[Guard, np.ndarray, np.ndarray]:
    """The guard fitted on `train` and its lines set on `val`; (guard, val embedding scores, val colour scores).
    `train_labels` None gives the single-Gaussian alternative. The colour box leaves out `max_colour` of the
    validation images: half by too little chroma, a quarter at each end of the hue angle."""
    means, precision = fit_statistics(features(train.embeddings[0]), train_labels)
    scores = view_distance(val.embeddings, means, precision)  # averaged over the views, as served
    chroma, angle = val.colours.T
    box = (float(np.quantile(chroma, max_colour / 2)), *(float(q) for q in np.quantile(
        angle, [max_colour / 4, 1 - max_colour / 4])))
    guard = Guard(means, precision, threshold_for(scores, max_refused), threshold_for(scores, max_cautioned), box,
                  views=len(val.embeddings))
    return guard, scores, guard.colour_distance(val.colours)


def operating_points(probs: np.ndarray, target: np.ndarray, what: str, sources: np.ndarray | None = None) -> dict:
    """The low (95 % sensitivity) and high (90 % specificity) lines on these validation scores, and (given each
    row's source) what each line kept on each source's own rows: one pooled promise can hide a source whose
    melanomas mostly fall below it."""
    mel, other = np.sort(probs[target == 1]), np.sort(probs[target == 0])
    if len(mel) < 20 or len(other) < 20:
        raise ValueError(f"operating points need ≥ 20 melanomas and ≥ 20 others, got {len(mel)} and {len(other)}.")

    def line(threshold: float) -> dict:
        above = int((mel >= threshold).sum())
        below = int((other < threshold).sum())
        return {"threshold": float(threshold), "sensitivity": above / len(mel), "specificity": below / len(other),
                "melanomas_above": above, "others_below": below}

    low = mel[int(np.floor(0.05 * len(mel)))]  # highest line with ≥ 95 % of melanomas at or above it
    high = other[int(np.ceil(0.90 * len(other)))]  # lowest line with ≥ 90 % of others strictly below it
    points = {"validation": what, "n_melanoma": len(mel), "n_other": len(other),
              "low": {"rule": "95 % sensitivity", **line(low)}, "high": {"rule": "90 % specificity", **line(high)}}
    if sources is not None:
        points["by_source"] = {}
        for source in sorted(set(sources)):
            keep = np.asarray(sources) == source
            m, o = probs[keep & (target == 1)], probs[keep & (target == 0)]
            points["by_source"][str(source)] = {
                "melanomas": int(len(m)), "others": int(len(o)),
                "low_sensitivity": float((m >= low).mean()) if len(m) else None,
                "high_sensitivity": float((m >= high).mean()) if len(m) else None,
                "high_specificity": float((o < high).mean()) if len(o) else None}
    return points


def fit_guard(model_dir: Path, train_rows: pd.DataFrame, val_rows: pd.DataFrame, what: str = "validation rows",
              num_workers: int = 0, views: int = 8) -> dict:
    """Fit guard.safetensors + guard.json and operating_points.json in `model_dir`; returns a summary.

    train_rows: `path`, `label` (images the model was trained on). val_rows: `path`, `target` (1 = melanoma),
    optional source, age/sex/site. The lines are set on the validation images (MAX_REFUSED, MAX_CAUTIONED,
    MAX_COLOUR). Scored on the GPU when there is one, with `num_workers` loader processes. `views` 8 (the default):
    the validation images are scored as the Predictor serves them by default, the 8 dihedral views averaged, so the
    lines hold for the answers given; the guard's statistics come from the training images as uploaded."""
    model_dir = Path(model_dir)
    model = load_model(model_dir).to("cuda" if torch.cuda.is_available() else "cpu")
    train = embed_rows(model, train_rows, num_workers=num_workers)
    val = embed_rows(model, val_rows, num_workers=num_workers, views=views)
    guard, scores, colours = build_guard(train, train_rows["label"].to_numpy(), val)
    info = {"fitted_on": f"{len(train_rows)} training images ({len(guard.means)} diagnoses)",
            "lines_set_on": f"{len(val_rows)} {what}",
            "validation_refused": float((scores > guard.refuse).mean()),
            "validation_cautioned": float(((scores > guard.caution) & (scores <= guard.refuse)).mean()),
            "validation_colour_cautioned": float((colours > 0).mean())}
    guard.save(model_dir, info)
    sources = val_rows["source"].to_numpy() if "source" in val_rows else None
    points = operating_points(val.probabilities, val_rows["target"].to_numpy(), f"{len(val_rows)} {what}", sources)
    points["views"] = views
    (model_dir / OPERATING_POINTS).write_text(json.dumps(points, indent=1) + "\n")
    return {"guard": {"refuse": guard.refuse, "caution": guard.caution, "colour_box": guard.colour_box, **info},
            "operating_points": points, "validation_scores": scores, "validation_probabilities": val.probabilities}


def model_rows(model_dir: Path, fold: int | None, **dirs: list[str] | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training rows, validation rows) of a model folder from its folds.csv and training_config.yaml.
    `dirs` (isic_dirs=, ham_dirs=, challenge_dirs=) override where the config says the data are."""
    import yaml

    from train.data import config_sources

    config = yaml.safe_load((model_dir / TRAINING_CONFIG).read_text())
    if fold is None:
        if len(config.get("train_folds") or []) != 1:
            raise ValueError("the model was trained on several folds: pass --fold (the one it was validated on).")
        fold = int(config["train_folds"][0])
    config.update({key: value for key, value in dirs.items() if value}, isic_duplicates="none")
    frame, _ = config_sources(config)
    folds = pd.read_csv(model_dir / FOLDS, usecols=["image_id", "fold"])
    rows = frame.merge(folds, on="image_id", how="inner", validate="one_to_one")
    if len(rows) != len(folds):
        raise ValueError(f"{len(folds) - len(rows)} rows of folds.csv have no image in the data folders given.")
    return rows[rows.fold != fold].reset_index(drop=True), rows[rows.fold == fold].reset_index(drop=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="model folder with folds.csv")
    parser.add_argument("--isic_dirs", nargs="*", help="default: the model's training_config.yaml")
    parser.add_argument("--ham_dirs", nargs="*", help="default: the model's training_config.yaml")
    parser.add_argument("--challenge_dirs", nargs="*", help="default: the model's training_config.yaml")
    parser.add_argument("--fold", type=int, help="the validation fold (default: the config's one train fold)")
    parser.add_argument("--views", type=int, choices=(1, 8), default=8,
                        help="score validation images as served: the mean of 8 dihedral views (default) or 1")
    args = parser.parse_args(argv)
    try:
        train_rows, val_rows = model_rows(args.model, args.fold, isic_dirs=args.isic_dirs, ham_dirs=args.ham_dirs,
                                          challenge_dirs=args.challenge_dirs)
        fitted = fit_guard(args.model, train_rows, val_rows, what="validation (fold) rows", views=args.views)
        g, p = fitted["guard"], fitted["operating_points"]
        print(f"guard: refuses above {g['refuse']:.1f} ({g['validation_refused']:.2%} of {g['lines_set_on']}), "
              f"cautions above {g['caution']:.1f} ({g['validation_cautioned']:.2%}), colour box "
              f"{tuple(round(v, 3) for v in g['colour_box'])} ({g['validation_colour_cautioned']:.2%} outside)")
        for name in ("low", "high"):
            line = p[name]
            print(f"{name} line ({line['rule']}): {line['threshold']:.4f}  sensitivity {line['sensitivity']:.3f} "
                  f"({line['melanomas_above']}/{p['n_melanoma']})  specificity {line['specificity']:.3f} "
                  f"({line['others_below']}/{p['n_other']})")
        print(f"measure it: python -m studies.guard_eval --model {args.model}")
    except (ValueError, FileNotFoundError, RuntimeError, DataError) as err:
        sys.exit(f"fit_guard: {err}")


if __name__ == "__main__":
    main()
