"""Shared fixtures: the real data in ../shared/data and small models saved the way training saves them."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from inference import MelanomaModel

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MELANOMA_DATA", REPO.parent / "shared" / "data"))


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
def tiny_model_dir(tmp_path_factory) -> Path:
    """A random timm `test_efficientnet` fused model saved with save_pretrained (fast, no real features)."""
    import torch

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_model")
    MelanomaModel(backbone="test_efficientnet", image_size=64, mean=[0.485, 0.456, 0.406],
                  std=[0.229, 0.224, 0.225]).save_pretrained(folder)
    return folder
