"""The out-of-scope guard and the triage bands (inference/guard.py, inference/triage.py, train/fit_guard.py).

On the bundled model: the cat and generated non-lesions are refused, held-out dermoscopic images are
not, recoloured dermoscopy is cautioned or refused (never silently banded low), both backends agree. On a tiny
model fitted here: the files round-trip, the lines flag the shares they promise of the validation rows, a model
without the files still answers (guard unavailable).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import REPO  # pytest puts tests/ on sys.path
from skimage.data import chelsea

from inference import Predictor
from inference import metadata as md
from inference.guard import COLOUR_CAUTION, GUARD_ARRAYS, GUARD_JSON, Guard, colour_features, mahalanobis
from inference.model import ModelConfig
from inference.triage import OPERATING_POINTS, describe, triage
from train.fit_guard import MAX_CAUTIONED, MAX_COLOUR, MAX_REFUSED, fit_guard, operating_points, threshold_for
from studies.guard_eval import RECOLOURINGS, generated_images
from train.network import EagerSession, MelanomaModel

BUNDLED = REPO / "output" / "default"


@pytest.fixture(scope="module")
def bundled() -> Predictor:
    return Predictor.from_pretrained(BUNDLED)


@pytest.fixture(scope="module")
def held_out(data_dir) -> list[str]:
    """Validation (fold 0) images of the bundled model that are not the examples: 40 of each source."""
    folds = pd.read_csv(BUNDLED / "folds.csv")
    val = folds[folds.fold == 0]
    ham = [str(data_dir / "ham10000" / "images" / f"{i}.jpg") for i in val[val.source == "ham10000"].image_id[::40][:40]]
    isic = [str(data_dir / "isic2020" / "train" / f"{i}.jpg") for i in val[val.source == "isic2020"].image_id[::13][:40]]
    return ham + isic


def test_bundled_guard_refuses_the_cat_and_keeps_lesions(bundled, held_out):
    cat = bundled.predict(chelsea())
    assert cat["in_distribution"] is False and cat["ood_score"] > bundled.guard.refuse
    assert cat["triage"] is None  # a refused image has no band to act on
    answers = bundled.predict_batch(held_out)
    kept = np.mean([a["in_distribution"] for a in answers])
    assert kept >= 0.97, kept  # about 99.5 % expected; 80 images leave room for chance, not for a broken guard
    assert all(a["guard"]["available"] and isinstance(a["ood_score"], float) for a in answers)


def test_recoloured_melanomas_are_cautioned_or_refused_never_silently_low(bundled, data_dir):
    """A greyscale (or inverted, or hue-shifted) photo through a dermatoscope is a plausible upload, and the
    model scores such melanomas low: the answer must say so."""
    from PIL import Image

    ham = pd.read_csv(data_dir / "ham10000" / "HAM10000_metadata.csv")
    mel = [data_dir / "ham10000" / "images" / f"{i}.jpg" for i in ham[ham.dx == "mel"].image_id[::60][:12]]
    for kind, change in RECOLOURINGS.items():
        answers = bundled.predict_batch([change(Image.open(p).convert("RGB")) for p in mel])
        for a in answers:
            assert a["in_distribution"] is False or a["caution"] is not None, (kind, a["melanoma_probability"])
            if a["in_distribution"] is False:
                assert a["triage"] is None  # a refused image never carries a band
    greyscale = bundled.predict(RECOLOURINGS["greyscale"](Image.open(mel[0]).convert("RGB")))
    assert greyscale["in_distribution"] is False or greyscale["caution"] == COLOUR_CAUTION


def test_the_lesion_examples_come_from_the_bundled_models_validation_fold():
    """The page's examples must be images the bundled model never trained on (a retrain re-splits the folds)."""
    examples = pd.read_csv(REPO / "examples" / "examples.csv")
    folds = pd.read_csv(BUNDLED / "folds.csv").set_index("image_id")
    published = json.loads((BUNDLED / "metrics.json").read_text())["published_fold"]
    lesions = examples[examples.dx != "not a lesion"]
    assert len(lesions) == 5 and (folds.loc[lesions.image_id, "fold"] == published).all()


def test_generated_non_lesions_are_refused(bundled):
    images = [im for _, im in generated_images().values()]
    refused = np.mean([not a["in_distribution"] for a in bundled.predict_batch(images)])
    assert refused >= 0.95, refused


def test_backends_agree_on_the_guard_and_its_score_is_the_mean_over_the_views(bundled, held_out):
    torch_backend = Predictor(ModelConfig.load(BUNDLED), EagerSession(MelanomaModel.from_pretrained(str(BUNDLED))),
                              guard=bundled.guard)
    assert bundled.guard.views == 8  # its lines were set on the answer as served
    for path in held_out[:3] + [chelsea()]:
        a, b = bundled.predict(path), torch_backend.predict(path)
        assert a["tta"] is True and a["guard"]["views"] == 8
        assert a["in_distribution"] == b["in_distribution"]
        assert a["ood_score"] == pytest.approx(b["ood_score"], rel=1e-4)
        x = bundled.model_input(path)[None]
        meta = md.encode(md.normalize(None, None, None))[None]
        _, (views,) = bundled.forward(x, meta, tta=True, outputs=("logits", "embedding"))
        each = [bundled.guard.score(v)[0] for v in views]
        assert len(set(np.round(each, 3))) > 1  # the views differ, and the answer is their mean
        assert a["ood_score"] == pytest.approx(np.mean(each), rel=1e-5)
        assert bundled.predict(path, tta=False)["ood_score"] == pytest.approx(each[0], rel=1e-5)


def test_bundled_triage_comes_from_its_own_validation_points_as_served(bundled, data_dir):
    from train.data import ages
    from train.fit_guard import model_rows

    points = json.loads((BUNDLED / OPERATING_POINTS).read_text())
    metrics = json.loads((BUNDLED / "metrics.json").read_text())
    assert points["views"] == 8 and points["n_melanoma"] == metrics["n_melanoma"]
    assert points["n_melanoma"] + points["n_other"] == metrics["n_images"]  # the validation fold's rows
    # The low line is a validation melanoma's answer as the Space gives it (8 views, its metadata): the one at
    # the 5 % quantile of their served probabilities.
    _, val = model_rows(BUNDLED, 0, isic_dirs=[str(data_dir / "isic2020")], ham_dirs=[str(data_dir / "ham10000")],
                        challenge_dirs=[str(data_dir / "isic2017")])
    mel = val[val.target == 1]
    served = np.sort([a["melanoma_probability"] for a in bundled.predict_batch(
        list(mel.path), ages(mel), list(mel.sex), list(mel.site))])
    assert len(served) == points["n_melanoma"]
    assert points["low"]["threshold"] == pytest.approx(served[int(np.floor(0.05 * len(served)))], rel=1e-4)
    assert (served >= points["high"]["threshold"]).mean() == pytest.approx(points["high"]["sensitivity"], abs=0.004)
    assert points["low"]["sensitivity"] >= 0.95 and points["high"]["specificity"] >= 0.90
    low, high = points["low"]["threshold"], points["high"]["threshold"]
    assert triage(low / 2, points)["band"] == "low"
    assert triage((low + high) / 2, points)["band"] == "intermediate"
    assert triage(high, points)["band"] == "high"
    example = pd.read_csv(REPO / "examples" / "examples.csv").iloc[0]
    answer = bundled.predict(REPO / "examples" / example.file, example.age, example.sex, example.site)
    assert answer["triage"]["band"] == ("high" if answer["melanoma_probability"] >= high else
                                        "low" if answer["melanoma_probability"] < low else "intermediate")
    assert "in validation" in describe(answer)


def test_guard_score_is_the_distance_and_leaves_the_blas_thread_count_as_it_was():
    from threadpoolctl import threadpool_info

    rng = np.random.default_rng(0)
    a = rng.normal(size=(64, 64)).astype(np.float32)
    guard = Guard(np.full((1, 64), 0.1), a @ a.T / 64, refuse=1.0, caution=1.0, colour_box=(0.05, -40.0, 70.0))
    embedding = np.abs(rng.normal(size=(3, 64)))
    before = [pool["num_threads"] for pool in threadpool_info()]
    centred = np.sqrt(embedding) / np.linalg.norm(np.sqrt(embedding), axis=1, keepdims=True) - 0.1
    expected = np.einsum("bi,ij,bj->b", centred, guard.precision.astype(np.float64), centred)
    np.testing.assert_allclose(guard.score(embedding), expected, rtol=1e-4)
    assert [pool["num_threads"] for pool in threadpool_info()] == before  # the limit is only for the product


def test_operating_points_on_known_scores():
    rng = np.random.default_rng(0)
    probs = np.concatenate([rng.uniform(0.3, 1.0, 100), rng.uniform(0.0, 0.5, 400)])
    target = np.r_[np.ones(100), np.zeros(400)]
    points = operating_points(probs, target, "synthetic")
    low, high = points["low"], points["high"]
    assert (probs[target == 1] >= low["threshold"]).mean() == low["sensitivity"] >= 0.95
    assert (probs[target == 0] < high["threshold"]).mean() == high["specificity"] >= 0.90
    assert (probs[target == 1] >= low["threshold"] + 1e-9).mean() < 0.95 + 0.011  # the highest such line
    assert threshold_for(np.arange(100.0), 0.02) == 97.0  # flags 98 and 99: 2 of 100


def test_each_line_is_also_measured_per_source_and_the_page_says_where_too_few():
    rng = np.random.default_rng(1)
    # source a: melanomas score high; source b: its melanomas score like its others; source c: 5 melanomas
    probs = np.concatenate([rng.uniform(0.6, 1.0, 60), rng.uniform(0.0, 0.5, 200), rng.uniform(0.0, 0.5, 40),
                            rng.uniform(0.0, 0.5, 200), rng.uniform(0.5, 1.0, 5), rng.uniform(0.0, 0.5, 50)])
    target = np.r_[np.ones(60), np.zeros(200), np.ones(40), np.zeros(200), np.ones(5), np.zeros(50)]
    sources = np.array(["ham10000"] * 260 + ["isic2017"] * 240 + ["isic2020"] * 55)
    points = operating_points(probs, target, "555 validation rows", sources)
    by = points["by_source"]
    assert {k: v["melanomas"] for k, v in by.items()} == {"ham10000": 60, "isic2017": 40, "isic2020": 5}
    for source, f in by.items():
        keep = (sources == source) & (target == 1)
        assert f["low_sensitivity"] == (probs[keep] >= points["low"]["threshold"]).mean()
    assert by["ham10000"]["low_sensitivity"] > by["isic2017"]["low_sensitivity"]  # the pooled 95 % hides b
    answer = {"triage": triage(points["low"]["threshold"] / 2, points)}
    text = describe(answer)
    assert "HAM10000 100" in text and f"ISIC 2017 {by['isic2017']['low_sensitivity'] * 100:.0f}" in text
    assert "ISIC 2020 had too few melanomas (5) to say" in text


@pytest.fixture(scope="module")
def fitted_tiny(tiny_model_dir, tmp_path_factory, isic_rows, ham_rows):
    folder = tmp_path_factory.mktemp("guarded")
    for f in tiny_model_dir.iterdir():
        shutil.copy(f, folder)
    rows = pd.concat([isic_rows.head(120).assign(label=lambda d: np.where(d.target == 1, "mel", "nv"))[
        ["path", "target", "label"]], ham_rows.head(120).assign(target=lambda d: (d.dx == "mel").astype(int),
                                                                 label=lambda d: d.dx)[["path", "target", "label"]]],
        ignore_index=True)
    rows.loc[:39, ["target", "label"]] = [1, "mel"]  # the tiny random model needs ≥ 20 melanomas for the lines
    summary = fit_guard(folder, rows.iloc[::2], rows.iloc[1::2])
    return folder, summary, rows.iloc[1::2], rows.iloc[::2]


def test_fit_guard_writes_files_that_round_trip(fitted_tiny):
    folder, summary, val, train = fitted_tiny
    assert {GUARD_ARRAYS, GUARD_JSON, OPERATING_POINTS} <= {f.name for f in folder.iterdir()}
    guard = Guard.load(folder)
    assert (guard.refuse, guard.caution) == (summary["guard"]["refuse"], summary["guard"]["caution"])
    assert len(guard.means) == train.label.nunique() > 1 and guard.caution <= guard.refuse  # one per diagnosis
    scores = summary["validation_scores"]
    assert (scores > guard.refuse).mean() <= MAX_REFUSED and (scores > guard.caution).mean() <= MAX_CAUTIONED
    predictor = Predictor.from_pretrained(folder)
    answers = predictor.predict_batch(list(val.path[:8]))
    np.testing.assert_allclose([a["ood_score"] for a in answers], scores[:8], rtol=1e-4)
    info = json.loads((folder / GUARD_JSON).read_text())
    assert info["validation_colour_cautioned"] <= MAX_COLOUR + 0.02 and info["refuse"] == guard.refuse
    assert info["colour_box"] == list(guard.colour_box)
    # lines and bands set on the answers as served: the 8 views' mean, which a one-view answer is not
    assert info["views"] == guard.views == 8 and json.loads((folder / OPERATING_POINTS).read_text())["views"] == 8
    np.testing.assert_allclose([a["melanoma_probability"] for a in answers],
                               summary["validation_probabilities"][:8], rtol=1e-4)
    one = predictor.predict_batch(list(val.path[:8]), tta=False)
    assert not np.allclose([a["ood_score"] for a in one], scores[:8], rtol=1e-4)


def test_the_score_is_the_distance_to_the_nearest_diagnosis():
    rng = np.random.default_rng(0)
    means, a = rng.normal(size=(3, 16)), rng.normal(size=(16, 16))
    precision = a @ a.T / 16
    x = rng.normal(size=(5, 16))
    each = np.stack([np.einsum("bi,ij,bj->b", x - m, precision, x - m) for m in means], axis=1)
    np.testing.assert_allclose(mahalanobis(x, means, precision), each.min(axis=1), rtol=1e-3)


def test_two_tiers_and_the_colour_check_decide_the_answer():
    guard = Guard(np.zeros((1, 4)), np.eye(4), refuse=10.0, caution=5.0, colour_box=(0.05, -40.0, 70.0))
    assert guard.verdict(11.0, 0.0) == (False, None)  # clearly not a lesion: refused, no caution needed
    assert guard.verdict(6.0, 0.5) == (False, None)  # unusual and not skin-coloured: not a lesion either
    assert guard.verdict(6.0, 0.0)[0] is True and "unlike the dermoscopic images" in guard.verdict(6.0, 0.0)[1]
    assert guard.verdict(1.0, 0.5) == (True, COLOUR_CAUTION)
    assert guard.verdict(1.0, 0.0) == (True, None)
    grey = np.full((1, 8, 8, 3), 120, np.uint8)
    assert colour_features(grey)[0, 0] == 0 and guard.colour_score(grey)[0] == pytest.approx(1.0)  # no chroma
    skin = np.tile(np.array([200, 140, 110], np.uint8), (1, 8, 8, 1))
    chroma, angle = colour_features(skin)[0]
    assert chroma > 0.3 and 0 < angle < 70 and guard.colour_score(skin)[0] == 0  # red-brown: inside the box
    blue = 255 - skin  # inverted skin is blue-green: outside
    assert guard.colour_score(blue)[0] > 0
    with pytest.raises(ValueError, match="caution line"):
        Guard(np.zeros((1, 4)), np.eye(4), refuse=1.0, caution=5.0, colour_box=(0.05, -40.0, 70.0))


def test_model_without_guard_answers_and_says_so(tiny_model_dir, isic_rows):
    answer = Predictor.from_pretrained(tiny_model_dir).predict(isic_rows.path.iloc[0])
    assert answer["in_distribution"] is None and answer["ood_score"] is None and answer["triage"] is None
    assert answer["caution"] is None and answer["colour_score"] is None
    assert answer["guard"]["available"] is False and "fit_guard" in answer["guard"]["reason"]
    assert 0.0 <= answer["melanoma_probability"] <= 1.0


def test_half_a_guard_is_an_error_not_silence(fitted_tiny, tmp_path):
    folder, *_ = fitted_tiny
    for f in folder.iterdir():
        if f.name != GUARD_JSON:
            shutil.copy(f, tmp_path)
    with pytest.raises(FileNotFoundError, match="only one of"):
        Predictor.from_pretrained(tmp_path)


def test_guard_fit_embeds_in_batches_what_serving_computes_one_by_one(tiny_model_dir, isic_rows):
    """The fit's batched loader path (torch, on the training device) must see each image as the Space does
    (onnxruntime, one image at a time)."""
    from train.fit_guard import embed_rows

    predictor = Predictor.from_pretrained(tiny_model_dir)
    rows = isic_rows.head(10).rename(columns={"age_approx": "age", "anatom_site_general_challenge": "site"})
    model = MelanomaModel.from_pretrained(str(tiny_model_dir))
    embedded = embed_rows(model, rows, batch_size=4, num_workers=1)
    embeddings, probs = embedded.embeddings, embedded.probabilities
    assert embeddings.shape[:2] == (1, 10) and probs.shape[0] == len(embedded.colours) == 10
    np.testing.assert_allclose(embedded.colours, colour_features(np.stack([predictor.square(p) for p in rows.path])))
    views = embed_rows(model, rows.head(3), batch_size=2, views=8)
    for i, row in enumerate(rows.to_dict("records")):
        meta = md.encode(md.normalize(row["age"], row["sex"], None if pd.isna(row["site"]) else row["site"]))
        x = predictor.model_input(row["path"])[None]
        p, (e,) = predictor.forward(x, meta[None], outputs=("logits", "embedding"))
        np.testing.assert_allclose(embeddings[0, i], e[0, 0], rtol=0, atol=1e-5)
        assert abs(probs[i] - float(p[0, predictor.classes.index("mel")])) < 1e-6
        if i < 3:  # the 8 views in torch are the Predictor's 8 views, in the same order
            p, (e,) = predictor.forward(x, meta[None], tta=True, outputs=("logits", "embedding"))
            np.testing.assert_allclose(views.embeddings[:, i], e[:, 0], rtol=0, atol=1e-5)
            assert abs(views.probabilities[i] - float(p[0, predictor.classes.index("mel")])) < 1e-6


def test_the_apps_own_heat_map_uploaded_again_is_not_scored_silently(bundled, tmp_path):
    """A visitor downloads the explanation of a melanoma and uploads it: an inferno overlay over the lesion. It
    must be cautioned or refused (issue 29), never banded as if it were a photo through a dermatoscope."""
    from PIL import Image

    from inference.explain import explain

    example = pd.read_csv(REPO / "examples" / "examples.csv").iloc[0]
    assert example.dx == "mel"
    shown, _ = explain(bundled, REPO / "examples" / example.file, example.age, example.sex, example.site,
                       display_size=384)  # as app.py shows it
    Image.fromarray(shown).save(tmp_path / "explained.png")
    answer = bundled.predict(tmp_path / "explained.png", example.age, example.sex, example.site)
    assert answer["in_distribution"] is False or answer["caution"], answer
