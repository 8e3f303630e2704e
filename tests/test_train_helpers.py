"""Helpers for the training tests (no tests here): small real-data subsets and running the CLI.

Subsets are CSV files listing some of the real rows, with the image folders symlinked, so no image
is copied and the data stays real. A corrupt JPEG is the only file a test writes itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


def make_subset(root: Path, data_dir: Path, isic_benign: int = 60, ham_per_dx: int = 12, seed: int = 0,
                isic_melanoma: int | None = None) -> tuple[Path, Path]:
    """ISIC (all melanomas + `isic_benign` benign rows) and HAM (`ham_per_dx` per diagnosis) subsets."""
    isic = pd.read_csv(data_dir / "isic2020" / "train.csv")
    mel = isic[isic.target == 1]
    if isic_melanoma is not None:
        mel = mel.sample(isic_melanoma, random_state=seed)
    rows = pd.concat([mel, isic[isic.target == 0].sample(isic_benign, random_state=seed)])
    isic_dir, ham_dir = root / "isic", root / "ham"
    isic_dir.mkdir(parents=True)
    rows.to_csv(isic_dir / "train.csv", index=False)
    os.symlink(data_dir / "isic2020" / "train", isic_dir / "train")
    ham = pd.read_csv(data_dir / "ham10000" / "HAM10000_metadata.csv")
    picked = pd.concat([g.sample(min(len(g), ham_per_dx), random_state=seed) for _, g in ham.groupby("dx")])
    ham_dir.mkdir(parents=True)
    picked.to_csv(ham_dir / "HAM10000_metadata.csv", index=False)
    os.symlink(data_dir / "ham10000" / "images", ham_dir / "images")
    return isic_dir, ham_dir


def tiny_args(isic_dir: Path, ham_dir: Path, out: Path, **overrides) -> list[str]:
    """CLI options for a seconds-long run: timm's 'test_efficientnet' at 64 px, random init, 2 folds."""
    options = {
        "isic_dirs": f"[{isic_dir}]", "ham_dirs": f"[{ham_dir}]", "backbone": "test_efficientnet",
        "backbone_weights": "none", "image_size": "64", "folds": "2", "epochs": "2", "batch_size": "16",
        "num_workers": "0", "augment": "strong", "output_dir": str(out), "seed": "7",
    }
    options.update({k: str(v) for k, v in overrides.items()})
    return [part for k, v in options.items() for part in (f"--{k}", v)]


def cli_env() -> dict[str, str]:
    # Two threads at most: the suite shares two cores with other people's runs.
    return {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONPATH": str(REPO)}


def run_cli(args: list[str], prelude: str = "", timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m train ARGS` in a subprocess; `prelude` is Python run first (e.g. to install a kill hook)."""
    code = f"{prelude}\nimport sys\nfrom train.loop import main\nsys.exit(main(sys.argv[1:]))"
    return subprocess.run([PYTHON, "-c", code, *args], cwd=REPO, env=cli_env(), capture_output=True, text=True,
                          timeout=timeout)


def start_cli(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([PYTHON, "-m", "train", *args], cwd=REPO, env=cli_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
