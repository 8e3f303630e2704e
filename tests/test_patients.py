"""One patient's lesions compared (inference/patient.py) and the measurement of it (studies/patients.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import REPO

from inference import Predictor
from inference.guard import features
from inference.patient import MIN_LESIONS, context, lesion_features, logit
from studies.patients import ORDERS, rank_figures, ranks, scored_rows, with_context

BUNDLED = REPO / "output" / "default"


def test_the_lesion_unlike_the_others_stands_out_and_relative_is_against_the_others():
    rng = np.random.default_rng(0)
    common = rng.normal(size=16)
    x = np.stack([common + 0.05 * rng.normal(size=16) for _ in range(5)] + [rng.normal(size=16)])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    p = np.array([0.1, 0.2, 0.05, 0.3, 0.15, 0.12])
    c = context(p, x)
    assert np.argmax(c["outlier"]) == 5 and c["outlier"][5] > 1.5 and abs(c["outlier"].mean()) < 1e-9
    z = logit(p)
    assert c["relative"][3] == pytest.approx(z[3] - np.median(np.delete(z, 3)))
    with pytest.raises(ValueError, match=f"at least {MIN_LESIONS} lesions, got 2"):
        context(p[:2], x[:2])


def test_lesion_features_average_the_guards_features_over_the_views():
    rng = np.random.default_rng(1)
    one = rng.random((4, 32))
    np.testing.assert_allclose(lesion_features(one), features(one), atol=1e-12)  # one view: the guard's own
    views = rng.random((8, 4, 32))
    got = lesion_features(views)
    mean = np.mean([features(v) for v in views], axis=0)
    np.testing.assert_allclose(got, mean / np.linalg.norm(mean, axis=1, keepdims=True))


def test_ranks_count_each_melanoma_in_its_own_patient():
    rows = pd.DataFrame({"group": ["a"] * 4 + ["b"] * 3, "target": [1, 0, 0, 0, 0, 1, 0],
                         "probability": [0.9, 0.1, 0.2, 0.3, 0.5, 0.4, 0.1],
                         "outlier": [0.0, 1.0, -1.0, 0.5, 0.0, 1.0, -1.0],
                         "combined": [1.0, 0.0, 0.0, 0.0, 0.0, 2.0, 0.0]})
    table = ranks(rows)
    assert table.to_dict("list") == {"group": ["a", "b"], "n": [4, 3], "probability": [1.0, 2.0],
                                     "outlier": [3.0, 1.0], "combined": [1.0, 1.0]}
    f = rank_figures(table)
    assert f["chance_mrr"] == pytest.approx((np.mean(1 / np.arange(1, 5)) + np.mean(1 / np.arange(1, 4))) / 2)
    assert f["probability_mrr"] == pytest.approx(0.75) and f["combined_top1"] == 1.0 and f["outlier_top3"] == 1.0


def test_the_measurement_scores_each_patients_lesions_as_the_space_does(data_dir):
    rows, feats = scored_rows({0: BUNDLED})
    assert len(rows) == len(feats) and set(rows.fold) == {0} and rows.group.nunique() > 10
    compared = with_context(rows, feats)
    assert not compared.refused.any() and (compared.groupby("group").size() >= MIN_LESIONS).all()
    assert set(ORDERS) <= set(compared.columns)
    first = rows.iloc[0]
    r = pd.read_csv(data_dir / "isic2020" / "train.csv").set_index("image_name").loc[first.image_id]
    known = [None if pd.isna(v) else v for v in (r.age_approx, r.sex, r.anatom_site_general_challenge)]
    answer = Predictor.from_pretrained(BUNDLED).predict(data_dir / "isic2020" / "train" / f"{first.image_id}.jpg",
                                                        *known)
    assert first.probability == pytest.approx(answer["melanoma_probability"], rel=1e-5)
    assert first.refused == (answer["in_distribution"] is False)
