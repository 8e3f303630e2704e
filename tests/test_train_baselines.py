"""Metadata-only baselines, re-scoring a run through the Predictor, and the paired comparison of two runs.

The run-based checks use the tiny reference run (conftest) and one more tiny run on the same folds, so
they compare two different models and can be checked against the runs' own OOF tables; the full
ISIC 2020 table is the one real-size figure (README quotes it).
"""

import json
import subprocess
import sys

import pandas as pd
import pytest
from conftest import REPO, run_cli, tiny_args

from inference import layout
from studies.baselines import compare, isic_full, rescore, same_folds, tta_gain
from train.errors import DataError
from train.metrics import auc


@pytest.fixture(scope="module")
def other_run(tmp_path_factory, subset):
    """Same data and seed as the reference run (so the same folds), another model: no augmentation."""
    out = tmp_path_factory.mktemp("other") / "run"
    done = run_cli(tiny_args(*subset, out, augment="none"))
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_metadata_only_on_the_full_isic_csv(data_dir):
    result = isic_full(data_dir / "isic2020" / "ISIC_2020_Training_GroundTruth_v2.csv")
    assert (result["rows"], result["melanomas"]) == (33126, 584)
    # age/sex/site carry real but weak signal: the competition's metadata-only models scored ~0.70
    assert 0.6 < result["melanoma_auc"] < 0.8


def test_metadata_only_scores_exactly_the_runs_validation_rows(reference):
    run, _ = reference
    folds = pd.read_csv(run / layout.FOLDS)
    result = same_folds(run)
    assert result["n_images"] == len(folds)  # both folds trained: every row scored once, out of fold
    assert result["n_by_source"] == folds.source.value_counts().sort_index().to_dict()


def test_rescore_through_the_predictor_reproduces_the_training_metrics(reference):
    run, _ = reference
    card = json.loads((run / layout.METRICS).read_text())
    again = rescore(run)  # the published fold's model on its own validation fold, as the app scores
    oof = pd.read_csv(run / "oof_predictions.csv")
    published = oof[oof.fold == card["published_fold"]]
    assert again["n_images"] == len(published)
    # the Predictor's probabilities carry the model's temperature, as the OOF table's do ("uncalibrated":
    # before the re-fit that rescore adds on top, which can reorder melanoma probabilities slightly)
    assert again["melanoma_auc_uncalibrated"] == pytest.approx(
        auc(published.target.to_numpy(), published.melanoma_probability.to_numpy()), abs=1e-3)
    blank = rescore(run, blank_metadata=True)
    assert blank["n_images"] == again["n_images"]
    assert blank["melanoma_auc"] != again["melanoma_auc"]  # the fused model really received the metadata
    assert set(blank["subgroups"]["site"]) == set(again["subgroups"]["site"])  # true sites kept for subgroups


def test_compare_gives_the_paired_difference_and_refuses_different_folds(reference, other_run, tmp_path):
    run, _ = reference
    result = compare(run, other_run)
    for r in result.values():
        assert r["difference"] == pytest.approx(r["auc"] - r["auc_other"])
        lo, hi = r["difference_ci95"]
        assert lo <= r["difference"] <= hi and lo < hi  # two different models: a real interval
    oof = pd.read_csv(run / "oof_predictions.csv")
    fold = oof[(oof.fold == 0) & (oof.source == "ham10000")]
    assert result["ham10000"]["melanomas"] == int(fold.target.sum())
    assert result["ham10000"]["auc"] == pytest.approx(auc(fold.target.to_numpy(),
                                                          fold.melanoma_probability.to_numpy()), abs=1e-3)
    shifted = tmp_path / "shifted"
    shifted.mkdir()
    for name in (layout.FOLDS, layout.RUN_CONFIG):
        (shifted / name).write_bytes((other_run / name).read_bytes())
    folds = pd.read_csv(shifted / layout.FOLDS)
    folds.loc[0, "fold"] = 1 - folds.loc[0, "fold"]
    folds.to_csv(shifted / layout.FOLDS, index=False)
    with pytest.raises(DataError, match="different folds"):
        compare(run, shifted)


def test_tta_gain_pairs_the_eight_views_with_the_single_view_on_the_same_rows(reference):
    run, _ = reference
    gain = tta_gain(run)
    single = compare(run, run)  # the same model against itself: no difference, a zero-width interval
    assert single["ham10000"]["difference"] == 0 and single["ham10000"]["difference_ci95"] == [0.0, 0.0]
    for source, r in gain.items():
        assert r["auc_other"] == pytest.approx(single[source]["auc"])  # the single view is the compared one
        assert r["difference"] == pytest.approx(r["auc"] - r["auc_other"])
        lo, hi = r["difference_ci95"]
        assert lo <= r["difference"] <= hi


def test_cli_says_what_is_wrong(tmp_path):
    done = subprocess.run([sys.executable, "-m", "studies.baselines", "--run", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True)
    assert done.returncode == 1 and "is not a run folder" in done.stderr and "Traceback" not in done.stderr
