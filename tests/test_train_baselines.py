"""Metadata-only baselines and the blank-metadata evaluation, on the real data and the bundled run."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from train.baselines import compare, isic_full, rescore, same_folds
from train.data import DataError

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "output" / "default"


def test_metadata_only_on_the_full_isic_csv(data_dir):
    result = isic_full(data_dir / "isic2020" / "ISIC_2020_Training_GroundTruth_v2.csv")
    assert (result["rows"], result["melanomas"]) == (33126, 584)
    # age/sex/site carry real but weak signal: the competition's metadata-only models scored ~0.70
    assert 0.6 < result["melanoma_auc"] < 0.8


@pytest.fixture(scope="module")
def fold_rows():
    folds = pd.read_csv(BUNDLED / "folds.csv")
    return int((folds.fold == 0).sum())


def test_metadata_only_on_the_bundled_runs_folds(data_dir, fold_rows):
    result = same_folds(BUNDLED)
    assert result["n_images"] == fold_rows  # scored on exactly the bundled model's validation fold
    assert 0.55 < result["melanoma_auc"] < 0.85
    assert set(result["n_by_source"]) == {"isic2020", "ham10000"}


def test_blank_metadata_scores_every_validation_image(data_dir, fold_rows):
    result = rescore(BUNDLED, blank_metadata=True)
    assert result["n_images"] == fold_rows
    assert result["melanoma_auc"] > 0.8  # the image branch alone still ranks melanomas
    assert set(result["subgroups"]["site"]) >= {"torso", "unknown"}  # the true sites are kept for subgroups


def test_cli_says_what_is_wrong(tmp_path):
    done = subprocess.run([sys.executable, "-m", "train.baselines", "--run", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True)
    assert done.returncode == 1 and "is not a run folder" in done.stderr and "Traceback" not in done.stderr


def test_compare_gives_a_paired_interval_and_refuses_different_folds(data_dir, tmp_path):
    same = compare(BUNDLED, BUNDLED)  # a model against itself: identical scores, a difference of exactly 0
    assert same["ham10000"]["melanomas"] == 189 and same["ham10000"]["difference"] == 0.0
    assert same["ham10000"]["difference_ci95"] == [0.0, 0.0]
    card = json.loads((BUNDLED / "metrics.json").read_text())
    assert same["ham10000"]["auc"] == pytest.approx(card["melanoma_auc_ham10000"], abs=2e-3)  # the card's figure
    other = tmp_path / "other"
    shutil.copytree(BUNDLED, other)
    folds = pd.read_csv(other / "folds.csv")
    folds.loc[0, "fold"] = (folds.loc[0, "fold"] + 1) % 5
    folds.to_csv(other / "folds.csv", index=False)
    with pytest.raises(DataError, match="different folds"):
        compare(BUNDLED, other)
