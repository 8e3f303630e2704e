"""The Space's Patient tab as a person uses it (issue 32): `python app.py` serving the bundled model, driven by Debian's
chromium, on a desktop and on a phone; and `/predict_patient` through gradio_client, with real ISIC 2020 patients."""

from __future__ import annotations

import re
import shutil

import pandas as pd
import pytest
from conftest import REPO
from test_browser import ARTIFACTS, MARK, browser, bundled_space  # noqa: F401  (fixtures)

from app_patient import MARKER
from inference import Predictor
from inference.patient import FLAG_OUTLIERS

pytestmark = pytest.mark.browser
BUNDLED = REPO / "output" / "default"


@pytest.fixture(scope="module")
def patient(isic_rows, tmp_path_factory) -> dict:
    """A real ISIC 2020 patient with a melanoma: 6 of their lesions (the melanoma among them), copied under names
    that carry MARK, with what the Predictor answers for them."""
    sizes = isic_rows.groupby("patient_id").target.agg(["size", "sum"])
    rows = isic_rows[isic_rows.patient_id == sizes[(sizes["sum"] > 0) & (sizes["size"] >= 6)].index[0]]
    rows = pd.concat([rows[rows.target == 1].head(1), rows[rows.target == 0].head(5)])
    folder = tmp_path_factory.mktemp("patient")
    paths = []
    for i, source in enumerate(rows.path):
        paths.append(folder / f"{MARK}-{i + 1}.jpg")
        shutil.copy(source, paths[-1])
    sites = [None if pd.isna(s) else s for s in rows.anatom_site_general_challenge]
    age, sex = float(rows.age_approx.iloc[0]), rows.sex.iloc[0]
    expected = Predictor.from_pretrained(BUNDLED).predict_patient(paths, age, sex, sites)
    return {"paths": paths, "sites": sites, "age": age, "sex": sex, "expected": expected}


def assess_patient(page, url: str, patient: dict) -> None:
    page.goto(url)
    page.get_by_role("tab", name="Patient: several lesions").click()
    page.locator("#patient-images input[type=file]").set_input_files([str(p) for p in patient["paths"]])
    for p in patient["paths"]:  # the upload finished when the file list names every file
        page.locator(f'#patient-images td.filename[aria-label="{p.name}"]').wait_for(state="attached", timeout=30_000)
    page.locator("#patient-age input").fill(str(int(patient["age"])))
    page.locator("#patient-sex input").click()
    page.get_by_role("option", name=patient["sex"], exact=True).click()
    page.locator("#patient-sites textarea").fill(", ".join(s or "unknown" for s in patient["sites"]))
    page.locator("#patient-assess").click()
    page.locator("#patient-gallery img").nth(len(patient["paths"]) - 1).wait_for(timeout=90_000)


def shown_order(page) -> list[tuple[int, int, float]]:
    """(rank, image, melanoma %) of each lesion in the list under the gallery, top to bottom."""
    text = page.locator("#patient-summary").inner_text()
    return [(int(r), int(i), float(p)) for r, i, p in re.findall(r"#(\d+) · Image (\d+): melanoma ([\d.]+)%", text)]


def check_answer(page, patient: dict) -> None:
    expected = patient["expected"]
    ranked = sorted(expected["lesions"], key=lambda x: x["context"]["rank"])
    order = shown_order(page)
    assert [(r, i) for r, i, _ in order] == [(x["context"]["rank"], x["image"]) for x in ranked]
    for (_, _, shown), x in zip(order, ranked):
        assert shown == pytest.approx(x["melanoma_probability"] * 100, abs=0.051)
    summary = page.locator("#patient-summary").inner_text()
    assert "Ordered by melanoma probability" in summary and "not a diagnosis" in summary
    assert summary.count(MARKER) == int(FLAG_OUTLIERS)  # one lesion marked, or none: the measurement decides
    captions = page.locator("#patient-gallery").inner_text()
    first = ranked[0]
    assert f"#1 · image {first['image']} · {first['melanoma_probability']:.1%}" in captions


def test_a_patients_lesions_are_shown_in_rank_order_on_a_desktop(bundled_space, browser, patient):  # noqa: F811
    url, log_path = bundled_space
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    try:
        try:
            assess_patient(page, url, patient)
        finally:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "app-patient.png"), full_page=True)
        check_answer(page, patient)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "app-patient.png"), full_page=True)
        # Nothing chosen: one sentence, and the old answer is gone.
        page.locator("#patient-images button[aria-label='Clear']").first.click()
        page.locator("#patient-assess").click()
        page.locator(".toast-body").filter(has_text="No images: upload the patient's").wait_for(timeout=30_000)
        assert shown_order(page) == []
    finally:
        page.close()
    assert errors == [], errors
    log = log_path.read_text()
    assert MARK not in log, log  # nothing about the visitor in the logs


def test_on_a_phone_the_patient_tab_fits_the_width(bundled_space, browser, patient):  # noqa: F811
    url, _ = bundled_space
    page = browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    try:
        assess_patient(page, url, patient)
        page.wait_for_timeout(500)  # the scroll into view runs after the answer is drawn
        box = page.locator("#patient-gallery").bounding_box()
        assert box is not None and -2 <= box["y"] < 844 / 2, box  # the answer is on screen, not below the inputs
        check_answer(page, patient)
        assert page.evaluate("() => document.documentElement.scrollWidth") <= 390  # no sideways scrolling
        for item in ("#patient-gallery", "#patient-summary"):
            box = page.locator(item).bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390 + 1, (item, box)
        page.screenshot(path=str(ARTIFACTS / "app-patient-phone.png"), full_page=True)
    finally:
        page.close()


def test_predict_patient_api_answers_as_the_predictor(bundled_space, patient, tmp_path):  # noqa: F811
    from gradio_client import Client, handle_file

    url, _ = bundled_space
    client = Client(url, verbose=False)
    files = [handle_file(str(p)) for p in patient["paths"]]
    sites = ", ".join(s or "" for s in patient["sites"])
    answer = client.predict(files, patient["age"], patient["sex"], sites, api_name="/predict_patient")
    expected = patient["expected"]
    assert [x["context"]["rank"] for x in answer["lesions"]] == [x["context"]["rank"] for x in expected["lesions"]]
    for got, want in zip(answer["lesions"], expected["lesions"]):
        assert got["melanoma_probability"] == pytest.approx(want["melanoma_probability"], rel=1e-5)
        assert got["triage"]["band"] == want["triage"]["band"] and got["metadata"] == want["metadata"]
    assert answer["compared"] == len(files) and answer["order"] == expected["order"]
    note = tmp_path / f"{MARK}-note.jpg"
    note.write_text("not an image")
    mixed = client.predict(files[:3] + [handle_file(str(note))], None, "unknown", "", api_name="/predict_patient")
    assert mixed["lesions"][3]["error"] and mixed["lesions"][3]["context"]["rank"] is None and mixed["compared"] == 3
    for images, sites, message in (([], "", "No images"), (files[:2] + files[:1], "", "Images 1 and 3 are the same"),
                                   (files[:3], "torso", "1 sites for 3 images"),
                                   (files * 6, "", "at most 30")):
        with pytest.raises(Exception, match=message):
            client.predict(images, None, "unknown", sites, api_name="/predict_patient")
