"""The Space as a person uses it: `python app.py` (the Space's own entry point) in a subprocess, driven by
Debian's chromium through playwright. Saves screenshots under output/test-artifacts/."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import REPO

from inference import CLASS_NAMES, Predictor

pytestmark = pytest.mark.browser

ARTIFACTS = REPO / "output" / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
MARK = "secret-patient"  # in every uploaded file name; must not appear in the server's output


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_app(folder: Path, model: Path | None):
    """`python app.py` as on the Space (MELANOMA_MODEL set, or the bundled model when None);
    yields (url, path of its output log)."""
    port = free_port()
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port),
           "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_TEMP_DIR": str(folder / "uploads"),
           "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("MELANOMA_MODEL", None)
    if model is not None:
        env["MELANOMA_MODEL"] = str(model)
    log_path = folder / "server.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, str(REPO / "app.py")], cwd=folder, env=env, stdout=log,
                                   stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, f"app.py exited: {log_path.read_text()}"
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"app.py did not start: {log_path.read_text()}"
            time.sleep(0.5)
        yield url, log_path
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


@pytest.fixture(scope="module")
def space(tiny_model_dir, tmp_path_factory):
    yield from run_app(tmp_path_factory.mktemp("space"), tiny_model_dir)


@pytest.fixture(scope="module")
def bundled_space(tmp_path_factory):
    """The Space as shipped: output/default, whose guard and operating points the examples need."""
    yield from run_app(tmp_path_factory.mktemp("bundled"), None)


@pytest.fixture
def page(browser, request):
    """A fresh page; a failed test leaves a full-page screenshot in output/test-artifacts/."""
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    failures = request.session.testsfailed  # the call's failure is counted before this teardown runs
    yield page
    if request.session.testsfailed > failures:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"failed-{request.node.name}.png"), full_page=True)
    page.close()
    assert errors == [], errors  # no JavaScript errors on the page


@pytest.fixture(scope="module")
def browser():
    assert Path(CHROMIUM).exists(), "install Debian's chromium: apt-get install -y chromium"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def upload(page, path: Path) -> None:
    """Choose a file in the image input and wait until the upload finished (the preview points at it)."""
    page.locator("#input-image input[type=file]").set_input_files(str(path))
    page.locator(f'#input-image img[src*="{path.name}"]').wait_for(state="attached", timeout=30_000)


def test_visitor_scores_an_upload_sees_the_heat_map_and_errors(space, browser, tiny_model_dir, isic_rows, tmp_path):
    url, log_path = space
    row = isic_rows[isic_rows.target == 1].iloc[0]
    lesion = tmp_path / f"{MARK}-lesion.jpg"
    shutil.copy(row.path, lesion)
    expected = Predictor.from_pretrained(tiny_model_dir).predict(row.path, 63, "female", "lower extremity")
    errors: list[str] = []

    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(url)
    page.get_by_role("button", name="Assess").wait_for(timeout=60_000)
    assert page.get_by_text("Research demo, not a diagnosis.").is_visible()
    assert page.get_by_text("fields are treated as unknown").is_visible()
    # Which model answers, by its folder name only: the server's paths stay private (page and /config).
    assert page.get_by_text(f"local folder {tiny_model_dir.name}").is_visible()
    config = httpx.get(f"{url}config").text
    assert str(tiny_model_dir) not in config and str(REPO) not in config
    age = page.get_by_label("Age in years (0–100)")
    assert age.input_value() == ""  # blank means unknown (not 0)

    upload(page, lesion)
    age.fill("63")
    page.get_by_label("Sex").click()
    page.get_by_role("option", name="female").click()
    page.get_by_label("Anatomical site").click()
    page.get_by_role("option", name="lower extremity").click()
    page.get_by_role("button", name="Assess").click()

    headline = page.locator("#headline")
    headline.get_by_text("Melanoma probability:").wait_for(timeout=60_000)
    shown = re.search(r"Melanoma probability: ([\d.]+)%", headline.inner_text())
    assert shown and float(shown.group(1)) == pytest.approx(expected["melanoma_probability"] * 100, abs=0.051)
    assert headline.inner_text().count("%") == 3  # the number once (melanoma), then benign and malignant
    ddx = page.locator("#ddx")
    top = next(iter(expected["diagnosis"]))
    ddx.get_by_text(CLASS_NAMES[top]).first.wait_for(timeout=10_000)
    assert "Malignant" in page.locator("#benign-malignant").inner_text()
    heat = page.locator("#heat-map img")
    heat.wait_for(timeout=60_000)
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=heat.element_handle(), timeout=30_000)
    assert heat.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [384, 384]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "app-scored.png"), full_page=True)

    # A bad upload: the page shows our message, and the old answer is gone.
    note = tmp_path / f"{MARK}-note.jpg"
    note.write_text("Dear doctor, please look at the mole on my back.\n")
    upload(page, note)
    page.get_by_role("button", name="Assess").click()
    toast = page.locator(".toast-body").filter(has_text="This file is not an image we can read")
    toast.wait_for(state="visible", timeout=60_000)
    page.screenshot(path=str(ARTIFACTS / "app-error.png"))  # the toast is fixed to the viewport
    assert "Melanoma probability:" not in headline.inner_text(), headline.inner_text()
    page.close()

    assert errors == [], errors  # no JavaScript errors on the page
    log = log_path.read_text()
    assert MARK not in log and "lower extremity" not in log, log  # nothing about the visitor in the logs


def assess_example(page, url: str, row: int) -> None:
    page.goto(url)
    page.get_by_role("button", name="Assess").wait_for(timeout=60_000)
    page.locator("#examples button").nth(row).click()
    page.locator("#input-image img").wait_for(state="attached", timeout=30_000)
    page.wait_for_timeout(500)  # the example fills four inputs; their change events clear the outputs first
    page.get_by_role("button", name="Assess").click()


def test_example_shows_its_band_and_heat_map(bundled_space, page):
    url, _ = bundled_space
    first = (REPO / "examples" / "examples.csv").read_text().splitlines()[1].split(",")
    expected = Predictor.from_pretrained(REPO / "output" / "default").predict(
        REPO / "examples" / first[0], float(first[5]), first[6], first[7])
    assert expected["in_distribution"] is True
    assess_example(page, url, 0)
    band = page.locator("#triage").get_by_text(f"{expected['triage']['band'].capitalize()}:")
    band.wait_for(timeout=60_000)
    assert "of 100 melanomas in validation" in page.locator("#triage").inner_text()
    shown = re.search(r"Melanoma probability: ([\d.]+)%", page.locator("#headline").inner_text())
    assert shown and float(shown.group(1)) == pytest.approx(expected["melanoma_probability"] * 100, abs=0.051)
    heat = page.locator("#heat-map img")
    heat.wait_for(timeout=60_000)
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=heat.element_handle(), timeout=30_000)
    assert page.get_by_text("Tschandl, Rosendahl, Kittler").is_visible()  # the examples' attribution
    assert page.get_by_text("local folder output/default").is_visible()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "app-example.png"), full_page=True)


def test_uploaded_cat_is_refused_without_a_number(bundled_space, page, tmp_path):
    url, _ = bundled_space
    cat = tmp_path / f"{MARK}-cat.png"
    from PIL import Image
    from skimage.data import chelsea

    Image.fromarray(chelsea()).save(cat)
    page.goto(url)
    page.get_by_role("button", name="Assess").wait_for(timeout=60_000)
    upload(page, cat)
    page.get_by_role("button", name="Assess").click()
    page.locator("#headline").get_by_text("This does not look like a dermoscopic image").wait_for(timeout=60_000)
    page.wait_for_timeout(1000)  # let any late output arrive before checking that none did
    assert "Melanoma probability:" not in page.locator("#headline").inner_text()
    assert "%" not in page.locator("#triage").inner_text() + page.locator("#headline").inner_text()
    assert page.locator("#heat-map img").count() == 0
    page.screenshot(path=str(ARTIFACTS / "app-refused.png"), full_page=True)


def test_a_greyscale_melanoma_shows_its_number_and_a_caution(bundled_space, page, tmp_path, data_dir):
    """A lesion the guard is unsure about keeps its number, with the caution beside it: never a hidden number on
    a lesion, never a silent low band on a recoloured one."""
    from PIL import Image

    from studies.guard_eval import RECOLOURINGS

    url, _ = bundled_space
    ham = __import__("pandas").read_csv(data_dir / "ham10000" / "HAM10000_metadata.csv")
    source = data_dir / "ham10000" / "images" / f"{ham[ham.dx == 'mel'].image_id.iloc[0]}.jpg"
    grey = tmp_path / f"{MARK}-grey.jpg"
    RECOLOURINGS["greyscale"](Image.open(source).convert("RGB")).save(grey)
    expected = Predictor.from_pretrained(REPO / "output" / "default").predict(grey)
    assert expected["in_distribution"] and expected["caution"], expected  # the case this test is about
    page.goto(url)
    page.get_by_role("button", name="Assess").wait_for(timeout=60_000)
    upload(page, grey)
    page.get_by_role("button", name="Assess").click()
    headline = page.locator("#headline")
    headline.get_by_text("Melanoma probability:").wait_for(timeout=60_000)
    shown = re.search(r"Melanoma probability: ([\d.]+)%", headline.inner_text())
    assert shown and float(shown.group(1)) == pytest.approx(expected["melanoma_probability"] * 100, abs=0.051)
    assert "Caution:" in headline.inner_text() and "colours do not look like a dermatoscope photo" in \
        headline.inner_text()
    page.screenshot(path=str(ARTIFACTS / "app-cautioned.png"), full_page=True)


def test_on_a_phone_the_answer_is_on_screen_after_assess_and_the_examples_fit(bundled_space, browser):
    """390×844, as a visitor with a phone: the examples name their diagnosis and fit the width, and after
    *Assess* the headline is inside the viewport (not ~1,000 px further down, below the examples)."""
    url, _ = bundled_space
    page = browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    try:
        page.goto(url)
        page.get_by_role("button", name="Assess").wait_for(timeout=60_000)
        examples = page.locator("#examples")
        assert examples.evaluate("e => e.scrollWidth <= e.clientWidth + 1")  # nothing cut off at the side
        first = (REPO / "examples" / "examples.csv").read_text().splitlines()[1].split(",")
        assert first[4] == "mel"  # the first example is the melanoma; its label names the diagnosis and patient
        assert examples.get_by_text(f"Melanoma · {first[5]} y · {first[6]} · {first[7]}").is_visible()
        assert examples.get_by_text("Not a lesion").is_visible()
        page.locator("#examples button").nth(0).click()
        page.locator("#input-image img").wait_for(state="attached", timeout=30_000)
        page.wait_for_timeout(500)
        page.get_by_role("button", name="Assess").click()
        headline = page.locator("#headline")
        headline.get_by_text("Melanoma probability:").wait_for(timeout=60_000)
        page.wait_for_timeout(500)  # the scroll into view runs after the answer is drawn
        box = headline.bounding_box()
        assert box is not None and 0 <= box["y"] and box["y"] + min(box["height"], 80) <= 844, box
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "app-phone.png"))
    finally:
        page.close()


def test_a_second_server_on_the_same_folder_leaves_the_first_ones_files_alone(tiny_model_dir, page, tmp_path,
                                                                                isic_rows):
    """Issue 30: a second copy of the app on the same upload root, started after the retention had passed, purged
    the first one's example copies at start-up ("No image file at 'mel_ISIC_0024310.jpg'."). Each server now has a
    folder of its own that no other server touches while it lives: the first still scores its examples and its
    recent uploads."""
    from app_helpers import kill_app, start_app
    from gradio_client import Client, handle_file

    root, retention = tmp_path / "uploads", 3

    def assess_examples() -> None:
        for row in (0, 1):
            assess_example(page, url, row)
            page.locator("#headline").get_by_text("Melanoma probability").wait_for(timeout=60_000)
            assert "No image file" not in page.locator("body").inner_text()

    first, url = start_app(tiny_model_dir, root, retention, tmp_path)
    try:
        assess_examples()  # Gradio copies the examples into the upload folder when it starts, and keeps them
        time.sleep(retention + 2)  # the copies are older than the retention now
        names = {p.name for p in (REPO / "examples").glob("*.jpg")}  # kept; the first's own uploads expire
        files = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in root.rglob("*.jpg") if p.name in names}
        assert any(p.name.startswith("mel_ISIC") for p in files)
        second, second_url = start_app(tiny_model_dir, root, retention, tmp_path)
        try:
            # Untouched, not deleted and written again (the same app copies its examples to the same names: on main
            # the page still worked then, but another app version's purge left the first without its examples).
            assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in files if p.exists()} == files, "touched"
            assess_examples()
            upload_copy = tmp_path / f"{MARK}-recent.jpg"
            shutil.copy(isic_rows.path[0], upload_copy)
            for base in (url, second_url):
                answer = Client(base, verbose=False).predict(handle_file(str(upload_copy)), 50, "female", "torso",
                                                             api_name="/predict")
                assert 0 <= answer["melanoma_probability"] <= 1
        finally:
            kill_app(second)
    finally:
        kill_app(first)
