"""Shared fixtures and helpers: the real data in ../shared/data, small models saved the way training saves
them, real-data subsets and the training CLI in a subprocess. Test files import the helpers with
`from conftest import ...` (pytest puts tests/ on sys.path).

Subsets are CSV files listing some of the real rows, with the image folders symlinked, so no image
is copied and the data stays real. A corrupt JPEG is the only file a test writes itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
from inference.layout import data_root  # noqa: E402  (standard library only)

DATA = data_root(REPO)
pytest_plugins = ["app_helpers"]  # the in-process app server's fixtures, for every test_app_*.py


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """../shared/data (or $MELANOMA_DATA): the real ISIC 2020 subset and HAM10000 images."""
    assert (DATA / "isic2020" / "train.csv").is_file(), f"real data not found at {DATA}; set MELANOMA_DATA"
    return DATA


@pytest.fixture(scope="session")
def isic_rows(data_dir: Path) -> pd.DataFrame:
    """ISIC 2020 rows (jpeg-melanoma layout) with an `path` column; includes both targets."""
    df = pd.read_csv(data_dir / "isic2020" / "train.csv")
    df["path"] = [str(data_dir / "isic2020" / "train" / f"{n}.jpg") for n in df.image_name]
    return df


@pytest.fixture(scope="session")
def ham_rows(data_dir: Path) -> pd.DataFrame:
    """HAM10000 rows with a `path` column."""
    df = pd.read_csv(data_dir / "ham10000" / "HAM10000_metadata.csv")
    df["path"] = [str(data_dir / "ham10000" / "images" / f"{n}.jpg") for n in df.image_id]
    return df


@pytest.fixture(scope="session")
def subset(tmp_path_factory, data_dir) -> tuple[Path, Path]:
    """39 ISIC melanomas + 60 benign rows and 12 HAM images per diagnosis: ~180 images, both sources."""
    return make_subset(tmp_path_factory.mktemp("subset"), data_dir)


@pytest.fixture(scope="session")
def reference(tmp_path_factory, subset) -> tuple[Path, subprocess.CompletedProcess]:
    """One uninterrupted tiny CLI run (2 folds, 2 epochs): the run other tests compare against."""
    out = tmp_path_factory.mktemp("ref") / "run"
    done = run_cli(tiny_args(*subset, out))
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done


@pytest.fixture(scope="session")
def fold_models(reference, subset, tmp_path_factory) -> tuple[Path, Path]:
    """Two fold models of one folds.csv: the reference run's (fold 0) and a run of fold 1 on the same rows and seed."""
    run, _ = reference
    other = tmp_path_factory.mktemp("fold1") / "run"
    done = run_cli(tiny_args(*subset, other, train_folds="[1]"))
    assert done.returncode == 0, done.stderr[-3000:]
    return run / "model", other / "model"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A random timm `test_efficientnet` fused model saved as training saves it (save_pretrained + model.onnx):
    fast, no real features."""
    import torch

    from train.network import MelanomaModel
    from train.onnx_export import export_onnx

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_model")
    model = MelanomaModel(backbone="test_efficientnet", image_size=64, mean=[0.485, 0.456, 0.406],
                          std=[0.229, 0.224, 0.225])
    model.save_pretrained(folder)
    export_onnx(model, folder)
    return folder


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


def cli_env(**extra: str) -> dict[str, str]:
    # Two threads at most: the suite shares two cores with other people's runs.
    return {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONPATH": str(REPO), **extra}


def run_cli(args: list[str], prelude: str = "", timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    """`python -m train ARGS` in a subprocess; `prelude` is Python run first (e.g. to install a kill hook);
    keyword arguments are extra environment variables."""
    code = f"{prelude}\nimport sys\nfrom train.loop import main\nsys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, env=cli_env(**env), capture_output=True,
                          text=True, timeout=timeout)


def start_cli(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "train", *args], cwd=REPO, env=cli_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def make_isic2019(root: Path, data_dir: Path, n: int = 60, seed: int = 0) -> Path:
    """A folder in the layout of `cdeotte/jpeg-isic2019-NxN` (train.csv with the 2019 abbreviations, patient_id -1,
    finer sites, a tfrecord column; train/<image_name>.jpg), made of real ISIC 2017 training images."""
    folder = data_dir / "isic2017"
    truth = pd.read_csv(folder / "ISIC-2017_Training_Part3_GroundTruth.csv")
    meta = pd.read_csv(folder / "ISIC-2017_Training_Data_metadata.csv")
    rows = truth.merge(meta, on="image_id").sample(n, random_state=seed).reset_index(drop=True)
    diagnosis = np.where(rows.melanoma == 1, "MEL", np.where(rows.seborrheic_keratosis == 1, "BKL", "NV"))
    sites = np.resize(["anterior torso", "posterior torso", "upper extremity", "head/neck", ""], len(rows))
    out = root / "jpeg-isic2019"
    (out / "train").mkdir(parents=True)
    for name in rows.image_id:
        os.symlink(folder / "ISIC-2017_Training_Data" / f"{name}.jpg", out / "train" / f"{name}.jpg")
    pd.DataFrame({"image_name": rows.image_id, "patient_id": -1, "sex": rows.sex.replace("unknown", ""),
                  "age_approx": pd.to_numeric(rows.age_approximate, errors="coerce"),
                  "anatom_site_general_challenge": sites, "diagnosis": diagnosis,
                  "benign_malignant": np.where(diagnosis == "MEL", "malignant", "benign"),
                  "target": (diagnosis == "MEL").astype(int), "tfrecord": np.arange(len(rows)) % 15,
                  "width": 1022, "height": 767}).to_csv(out / "train.csv", index=False)
    return out
