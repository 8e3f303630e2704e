"""Judging a model per source (issue 24): the ISIC challenge layout read from the real ISIC 2017 files, and
`python -m studies.crosscheck` reporting each source apart, the external one included."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from studies.crosscheck import main as crosscheck_main
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


def test_against_pairs_two_models_on_the_same_images_and_seen_images_are_left_out(reference, data_dir, tmp_path,
                                                                                  capsys):
    run, _ = reference
    model = run / "model"
    # an "external" set in the challenge layout made of 12 ISIC 2020 images: 6 the model trained or validated
    # on (in its folds.csv), 6 benign ones it never saw
    folds = pd.read_csv(model / "folds.csv")
    isic = pd.read_csv(data_dir / "isic2020" / "train.csv")
    seen = folds[folds.source == "isic2020"].image_id.head(6).tolist()
    unseen = isic[~isic.image_name.isin(folds.image_id)].image_name.head(6).tolist()  # (every melanoma was used)
    external = tmp_path / "external"
    (external / "X_Validation_Data").mkdir(parents=True)
    picked = isic.set_index("image_name").loc[seen + unseen].reset_index()
    for name in picked.image_name:
        (external / "X_Validation_Data" / f"{name}.jpg").symlink_to(data_dir / "isic2020" / "train" / f"{name}.jpg")
    pd.DataFrame({"image_id": picked.image_name, "melanoma": picked.target, "seborrheic_keratosis": 0}).to_csv(
        external / "X_Validation_Part3_GroundTruth.csv", index=False)
    pd.DataFrame({"image_id": picked.image_name, "age_approximate": picked.age_approx, "sex": picked.sex}).to_csv(
        external / "X_Validation_Data_metadata.csv", index=False)
    out = tmp_path / "cc.json"
    assert crosscheck_main(["--model", str(model), "--against", str(model), "--external", f"{external}:Validation",
                            "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    name = "x validation (external), 6 seen left out"
    assert results[name]["images"] == 6 and results[name]["melanomas"] == 0
    assert "6 of 12 images of x validation (external) were in the model's data" in capsys.readouterr().err
    for figures in results.values():  # the same model against itself: no difference, on the same images
        if figures["melanoma_auc"] is not None:
            assert figures["against"]["difference"] == 0 and figures["against"]["difference_95ci"] == [0.0, 0.0]


def test_leave_one_source_out_scores_the_source_the_run_never_saw(reference, subset, tmp_path, capsys):
    import yaml

    from conftest import tiny_args
    from studies.loso import main as loso_main

    run, _ = reference
    args = tiny_args(*subset, tmp_path / "unused", epochs=1, train_folds="[0]")
    recipe = {k.lstrip("-"): yaml.safe_load(v) for k, v in zip(args[::2], args[1::2]) if k != "--output_dir"}
    config = tmp_path / "recipe.yaml"
    config.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "loso.json"
    assert loso_main(["--reference", str(run / "model"), "--config", str(config), "--runs", str(tmp_path / "loso"),
                      "--sources", "isic2020", "--epochs", "1", "--json", str(out)]) == 0
    without = tmp_path / "loso" / "without_isic2020"
    assert set(pd.read_csv(without / "folds.csv").source) == {"ham10000"}  # it never saw an ISIC 2020 image
    [result] = json.loads(out.read_text())
    folds = pd.read_csv(run / "model" / "folds.csv")
    published = json.loads((run / "model" / "metrics.json").read_text())["published_fold"]
    held_out = folds[(folds.fold == published) & (folds.source == "isic2020")]
    assert result["without"]["images"] == result["with"]["images"] == len(held_out)
    assert result["epochs"] == {"without": 1, "with": 2}
    assert result["difference"] == pytest.approx(result["without"]["melanoma_auc"] - result["with"]["melanoma_auc"])
    assert "| isic2020 |" in capsys.readouterr().out
    assert loso_main(["--table", "--json", str(out)]) == 0
    # a row of another source, already in the file, stays when only isic2020 is asked for again (the finished
    # run is not retrained, only rescored), and isic2020's row is replaced, not added twice
    other = {**result, "source": "ham10000"}
    out.write_text(json.dumps([other, result]))
    assert loso_main(["--reference", str(run / "model"), "--config", str(config), "--runs", str(tmp_path / "loso"),
                      "--sources", "isic2020", "--epochs", "1", "--json", str(out)]) == 0
    assert [r["source"] for r in json.loads(out.read_text())] == ["ham10000", "isic2020"]
    assert "python -m train " not in capsys.readouterr().out
