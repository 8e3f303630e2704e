"""Predictor on real ISIC 2020 and HAM10000 images."""

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from inference import CLASSES, Predictor
from inference.predictor import dihedral_views


@pytest.fixture(scope="module")
def predictor(tiny_model_dir):
    return Predictor.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def samples(isic_rows, ham_rows):
    isic = isic_rows.sort_values("target").tail(3)  # includes melanomas
    ham = ham_rows.groupby("dx").head(1)  # one image of every diagnosis
    return (
        [*isic.path, *ham.path],
        [*isic.age_approx, *ham.age],
        [*isic.sex, *ham.sex],
        [*isic.anatom_site_general_challenge, *[None] * len(ham)],
    )


@pytest.mark.parametrize("tta", [False, True])
def test_predictions_are_probabilities(predictor, samples, tta):
    answers = predictor.predict_batch(*samples, tta=tta)
    assert len(answers) == len(samples[0])
    for answer in answers:
        probs = answer["diagnosis"]
        assert list(probs) == sorted(probs, key=probs.get, reverse=True) and set(probs) == set(CLASSES)
        assert all(math.isfinite(p) and 0 <= p <= 1 for p in probs.values())
        assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
        assert answer["melanoma_probability"] == probs["mel"]
        assert answer["malignant_probability"] == pytest.approx(probs["mel"] + probs["bcc"] + probs["akiec"])
        assert answer["tta"] is tta and answer["model_id"] == str(predictor.model_id)


def test_batch_equals_one_by_one(predictor, samples):
    batch = predictor.predict_batch(*samples, batch_size=4)
    for i, expected in enumerate(batch):
        single = predictor.predict(samples[0][i], samples[1][i], samples[2][i], samples[3][i])
        assert single["metadata"] == expected["metadata"]
        for cls in CLASSES:
            assert single["diagnosis"][cls] == pytest.approx(expected["diagnosis"][cls], abs=1e-6)


def test_metadata_changes_the_answer_and_is_echoed(predictor, samples):
    image = samples[0][0]
    a = predictor.predict(image, 80, "Male", "Head/Neck")
    b = predictor.predict(image)
    assert a["metadata"] == {"age": 80.0, "sex": "male", "site": "head/neck"}
    assert b["metadata"] == {"age": None, "sex": "unknown", "site": "unknown"}
    assert a["diagnosis"] != b["diagnosis"]


def test_tta_is_one_batched_forward_over_eight_views_and_the_default(predictor, samples, monkeypatch):
    assert predictor.predict(samples[0][0]) == predictor.predict(samples[0][0], tta=True)  # as the Space serves
    calls = []
    run = predictor.session.run  # one graph run gives logits and embedding
    monkeypatch.setattr(predictor.session, "run", lambda x, m, o: calls.append(x.shape[0]) or run(x, m, o))
    predictor.predict_batch(samples[0][:3], tta=True)
    assert calls == [24]
    x = np.arange(2 * 3 * 4 * 4, dtype=np.float32).reshape(2, 3, 4, 4)
    views = dihedral_views(x).reshape(8, 2, 3, 4, 4)
    assert len({v.tobytes() for v in views[:, 0]}) == 8  # eight distinct views of a generic image
    assert np.array_equal(views[1, 0], x[0, :, :, ::-1]) and np.array_equal(views[4, 1], x[1].swapaxes(-1, -2))


def test_concurrent_calls_give_the_same_answers(predictor, samples):
    expected = [predictor.predict(p)["diagnosis"] for p in samples[0]]
    with ThreadPoolExecutor(max_workers=4) as pool:
        got = list(pool.map(lambda p: predictor.predict(p)["diagnosis"], samples[0] * 3))
    for i, answer in enumerate(got):
        assert answer == pytest.approx(expected[i % len(expected)], abs=1e-6)


def test_bad_inputs_raise_value_errors_naming_the_item(predictor, samples):
    with pytest.raises(ValueError, match="age: 150"):
        predictor.predict(samples[0][0], age=150)
    with pytest.raises(ValueError, match="item 1: anatomical site: 'elbow'"):
        predictor.predict_batch(samples[0][:2], sites=["torso", "elbow"])
    with pytest.raises(ValueError, match="one entry per image"):
        predictor.predict_batch(samples[0][:2], ages=[40])


def test_runs_of_a_few_images_give_the_same_answers(predictor, samples):
    """`rows_per_run` (the Space: 4) splits the views into several runs of the graph and changes no answer."""
    whole = predictor.predict_batch(*samples)
    calls = []
    run = predictor.session.run
    predictor.session.run = lambda x, m, o: calls.append(len(x)) or run(x, m, o)
    predictor.rows_per_run = 4
    try:
        split = predictor.predict_batch(*samples)
    finally:
        predictor.rows_per_run = None
        del predictor.session.run
    assert max(calls) == 4 and sum(calls) == 8 * len(samples[0])
    for a, b in zip(whole, split):
        for c in a["diagnosis"]:
            assert a["diagnosis"][c] == pytest.approx(b["diagnosis"][c], abs=1e-6)
