"""`python -m studies.folds`: the out-of-fold table of fold models, and the candidates on an external set.

Two tiny real fold models of one folds.csv (the reference run's fold 0, and a run of fold 1 on the same rows and
seed): every row gets exactly one held-out answer, the one its own fold's model gives through the Predictor.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

from inference import Predictor
from studies.folds import main as folds_main


def test_every_row_gets_its_own_folds_answer_and_the_candidates_are_paired(fold_models, data_dir, tmp_path, capsys):
    zero, one = fold_models
    out = tmp_path / "folds"
    assert folds_main(["--models", str(zero), str(one), "--output_dir", str(out), "--external",
                       f"{data_dir / 'isic2017'}:Validation", "--average"]) == 0
    result = json.loads((out / "folds.json").read_text())
    oof = pd.read_csv(out / "oof_predictions.csv", dtype={"image_id": str})
    folds = pd.read_csv(zero / "folds.csv", dtype={"image_id": str})
    assert result["missing_rows"] == 0 and sorted(oof.image_id) == sorted(folds.image_id)  # each row once
    assert (oof.merge(folds, on="image_id").pipe(lambda d: d.fold_x == d.fold_y)).all()
    row = oof[(oof.fold == 1) & (oof.source == "isic2020")].iloc[0]
    for source, figures in result["oof"].items():
        rows = oof[oof.source == source]
        assert (figures["images"], figures["melanomas"]) == (len(rows), int(rows.target.sum()))
        assert set(figures["by_fold"]) == {"0", "1"}
    names = list(result["candidates"])
    assert len(names) == 4 and names[2].startswith("ensemble of folds 0, 1") and names[3].startswith("weight average")
    assert result["candidates"][names[0]]["difference_95ci"] is None  # the first is what the others are paired with
    for figures in result["candidates"].values():
        assert (figures["images"], figures["melanomas"]) == (150, 30)
    assert "| ham10000 |" in (out / "folds.md").read_text() and "python -m studies.folds --models" in capsys.readouterr().out
    # the OOF answer is the fold model's own answer, as served (8 views); metadata as the data give it
    r = pd.read_csv(data_dir / "isic2020" / "train.csv").set_index("image_name").loc[row.image_id]
    known = [None if pd.isna(v) else v for v in (r.age_approx, r.sex, r.anatom_site_general_challenge)]
    answer = Predictor.from_pretrained(one).predict(data_dir / "isic2020" / "train" / f"{row.image_id}.jpg", *known)
    assert row.probability == pytest.approx(answer["melanoma_probability"], rel=1e-5)


def test_two_models_of_one_fold_are_refused_in_one_line(fold_models, tmp_path, capsys):
    zero, _ = fold_models
    assert folds_main(["--models", str(zero), str(zero), "--output_dir", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "both validated on fold 0" in err and not (tmp_path / "x").exists()
