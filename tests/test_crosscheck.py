"""Judging a model per source (issue 24): the ISIC challenge layout read from the real ISIC 2017 files, and
`python -m train.crosscheck` reporting each source apart, the external one included."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from train.crosscheck import main as crosscheck_main
from train.errors import DataError
from train.sources.isic_challenge import load_isic_challenge


def test_isic_challenge_layout_reads_the_real_files(data_dir):
    train = load_isic_challenge(data_dir / "isic2017", "Training")
    assert len(train) == 1975 and train.label.value_counts().to_dict() == {"nv": 1355, "mel": 369, "bkl": 251}
    assert (train.target == (train.label == "mel")).all() and (train.source == "isic2017").all()
    assert (train.site == "unknown").all()  # the layout has no anatomical site
    assert set(train.sex) == {"male", "female", "unknown"} and train.age.isna().any() and train.age.max() <= 85
    assert train.group.is_unique  # no patient or lesion id: each image is its own group
    assert all(pd.Series(train.path).map(lambda p: p.endswith(".jpg")))
    val = load_isic_challenge(data_dir / "isic2017", "Validation")
    assert len(val) == 150 and val.label.value_counts().to_dict() == {"nv": 78, "bkl": 42, "mel": 30}
    assert not set(val.image_id) & set(train.image_id)
    with pytest.raises(DataError, match=r"expected one \*_Test_Part3_GroundTruth.csv .* parts here: ISIC-2017_Training"):
        load_isic_challenge(data_dir / "isic2017", "Test")


def test_isic_challenge_errors_name_the_rows(data_dir, tmp_path):
    source = data_dir / "isic2017"
    for name in ("ISIC-2017_Validation_Part3_GroundTruth.csv", "ISIC-2017_Validation_Data_metadata.csv"):
        shutil.copy(source / name, tmp_path / name)
    (tmp_path / "ISIC-2017_Validation_Data").mkdir()
    with pytest.raises(DataError, match=r"Missing images for ISIC-2017_Validation: 150 of 150 rows have no image"):
        load_isic_challenge(tmp_path, "Validation")
    (tmp_path / "ISIC-2017_Validation_Data").rmdir()
    (tmp_path / "ISIC-2017_Validation_Data").symlink_to(source / "ISIC-2017_Validation_Data")
    truth = pd.read_csv(tmp_path / "ISIC-2017_Validation_Part3_GroundTruth.csv")
    truth.loc[3, ["melanoma", "seborrheic_keratosis"]] = 1.0
    truth.to_csv(tmp_path / "ISIC-2017_Validation_Part3_GroundTruth.csv", index=False)
    with pytest.raises(DataError, match=rf"1 of 150 rows: {truth.image_id[3]}: melanoma=1, seborrheic_keratosis=1"):
        load_isic_challenge(tmp_path, "Validation")


def test_crosscheck_reports_each_source_apart(reference, data_dir, tmp_path, capsys):
    run, _ = reference
    model = run / "model"
    out = tmp_path / "cc.json"
    assert crosscheck_main(["--model", str(model), "--external", f"{data_dir / 'isic2017'}:Validation",
                            "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    published = json.loads((model / "metrics.json").read_text())["published_fold"]
    folds = pd.read_csv(model / "folds.csv")
    val = folds[folds.fold == published]
    assert list(results) == ["ham10000 validation (in-source)", "isic2020 validation (in-source)",
                             "isic2017 validation (external)"]
    for source in ("ham10000", "isic2020"):
        assert results[f"{source} validation (in-source)"]["images"] == (val.source == source).sum()
    external = results["isic2017 validation (external)"]
    assert (external["images"], external["melanomas"]) == (150, 30)
    for figures in results.values():
        assert 0 <= figures["guard_refuses"] <= 1 and 0 <= figures["melanomas_refused_or_low"] <= 1
        assert figures["melanoma_auc"] is None or figures["melanoma_auc_95ci"][0] <= figures["melanoma_auc"] \
            <= figures["melanoma_auc_95ci"][1]
    printed = capsys.readouterr().out
    assert "| isic2017 validation (external) | 150 (30) |" in printed and "pooled" not in printed.lower()
