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


@pytest.fixture(scope="module")
def patient(isic_rows) -> pd.DataFrame:
    """One real ISIC 2020 patient's first 5 lesions."""
    counts = isic_rows.patient_id.value_counts()
    return isic_rows[isic_rows.patient_id == counts.index[counts >= 5][0]].head(5)


def test_a_patients_lesions_are_assessed_together_and_ordered(tiny_model_dir, patient, monkeypatch):
    from inference import patient as patient_context

    monkeypatch.setattr(patient_context, "FLAG_OUTLIERS", False)  # the flag's own test turns it on
    predictor = Predictor.from_pretrained(tiny_model_dir)
    sites = [None if pd.isna(s) else s for s in patient.anatom_site_general_challenge]
    age, sex = patient.age_approx.iloc[0], patient.sex.iloc[0]
    result = predictor.predict_patient(list(patient.path), age, sex, sites)
    lesions = result["lesions"]
    assert [x["image"] for x in lesions] == [1, 2, 3, 4, 5] and result["compared"] == 5 and result["needs"] == 0
    for x, path, site in zip(lesions, patient.path, sites):  # each lesion's own answer, as for one lesion
        alone = predictor.predict(path, age, sex, site)
        assert x["melanoma_probability"] == pytest.approx(alone["melanoma_probability"], rel=1e-5)
    by_rank = sorted(lesions, key=lambda x: x["context"]["rank"])
    assert [x["context"]["rank"] for x in by_rank] == [1, 2, 3, 4, 5]
    probs = [x["melanoma_probability"] for x in by_rank]
    assert probs == sorted(probs, reverse=True)  # the order is by probability (the measurement's decision)
    assert not any(x["context"]["flagged"] for x in lesions) and "probability" in result["order"]
    assert abs(np.mean([x["context"]["outlier"] for x in lesions])) < 1e-9


def test_with_the_flag_on_the_most_outlying_lesion_is_marked_and_the_order_says_so(tiny_model_dir, patient,
                                                                                   monkeypatch):
    from inference import patient as patient_context

    monkeypatch.setattr(patient_context, "FLAG_OUTLIERS", True)
    result = Predictor.from_pretrained(tiny_model_dir).predict_patient(list(patient.path))
    lesions = result["lesions"]
    flagged = [x for x in lesions if x["context"]["flagged"]]
    assert len(flagged) == 1 and flagged[0]["context"]["outlier"] == max(x["context"]["outlier"] for x in lesions)
    assert "◆" in result["order"] and "not a diagnosis" in result["order"]
    probs = [x["melanoma_probability"] for x in sorted(lesions, key=lambda x: x["context"]["rank"])]
    assert probs == sorted(probs, reverse=True)  # the flag marks; it does not reorder
    few = Predictor.from_pretrained(tiny_model_dir).predict_patient(list(patient.path[:2]))
    assert not any(x["context"]["flagged"] for x in few["lesions"])  # no comparison, no flag


def test_too_few_lesions_say_how_many_more(tiny_model_dir, patient):
    result = Predictor.from_pretrained(tiny_model_dir).predict_patient(list(patient.path[:2]))
    assert result["compared"] == 0 and result["needs"] == 1 and "1 more dermoscopic image " in result["order"]
    assert all(x["context"]["rank"] is None and x["context"]["note"] for x in result["lesions"])


def test_bad_uploads_get_one_sentence_and_a_non_image_is_refused_alone(tiny_model_dir, patient, tmp_path):
    predictor = Predictor.from_pretrained(tiny_model_dir)
    paths = list(patient.path)
    for images, sites, message in (([], None, "at least one image"), (paths * 7, None, "at most 30"),
                                   (paths[:3], ["torso"], "1 sites for 3 images"),
                                   ([paths[0], paths[1], paths[0]], None, "Images 1 and 3 are the same file")):
        with pytest.raises(ValueError, match=message):
            predictor.predict_patient(images, sites=sites)
    with pytest.raises(ValueError, match="^image 2: "):
        predictor.predict_patient(paths[:3], sites=["torso", "elbow", None])
    (tmp_path / "notes.jpg").write_text("not an image")
    result = predictor.predict_patient(paths[:3] + [tmp_path / "notes.jpg"])
    bad = result["lesions"][3]
    assert bad["in_distribution"] is False and bad["error"] and bad["context"]["rank"] is None
    assert result["compared"] == 3 and sorted(x["context"]["rank"] for x in result["lesions"][:3]) == [1, 2, 3]


def test_a_refused_image_takes_no_part_and_says_so(patient):
    from skimage.data import chelsea

    result = Predictor.from_pretrained(BUNDLED).predict_patient(list(patient.path[:3]) + [chelsea()])
    cat = result["lesions"][3]
    assert cat["in_distribution"] is False and cat["context"]["rank"] is None
    assert "does not look like a dermoscopic image" in cat["context"]["note"]
    assert result["compared"] == 3


def test_the_decision_follows_the_intervals_and_readme_states_the_one_the_code_applies(tmp_path):
    from inference.patient import FLAG_OUTLIERS
    from studies.patients import decision, readme_block

    def figures(outlier_low: float, auc_low: float, combined_low: float = -0.03) -> dict:
        return {"ranks": {"outlier_mrr_over_chance_95ci": [outlier_low, 0.2],
                          "outlier_minus_probability_mrr_95ci": [-0.1, 0.1],
                          "combined_minus_probability_mrr_95ci": [combined_low, 0.1]},
                "context_minus_probability_auc_95ci": [auc_low, 0.1]}

    assert "no lesion is flagged" in decision(figures(-0.01, -0.02)) and "stays the lesion's own" in \
        decision(figures(-0.01, -0.02))
    assert "may be flagged" in decision(figures(0.01, -0.02)) and "may replace" in decision(figures(-0.01, 0.02))
    assert "order stays by probability" in decision(figures(0.01, -0.02))
    assert "the combined order beats probability's" in decision(figures(0.01, -0.02, combined_low=0.01))
    head, tail = readme_block(REPO / "README.md")
    block = (REPO / "README.md").read_text()[len(head):-len(tail)]
    assert "python -m studies.patients --models" in block and "Decision:" in block
    assert ("no lesion is flagged" in block) == (not FLAG_OUTLIERS)  # the code applies what README's table decided
    assert "order stays by probability" in block  # the code orders by probability (inference.patient)
    (tmp_path / "R.md").write_text("# no block\n")
    with pytest.raises(ValueError, match="no '<!-- studies.patients -->' line"):
        readme_block(tmp_path / "R.md")
