"""The Space answers as the Predictor does: one public endpoint, /predict through gradio_client on real
images equal to Predictor.predict, and valid but unusual images (every mode and container) assessed.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest
from app_helpers import MARK
from gradio_client import Client, handle_file
from PIL import Image

from inference import Predictor

pytestmark = pytest.mark.usefixtures("tripwire")  # no connection leaves the loopback (app_helpers)


@pytest.fixture(scope="module")
def unusual_files(tmp_path_factory, rows, ham_rows) -> dict[str, Path]:
    """Valid images in every awkward mode/container, made from real lesions."""
    folder = tmp_path_factory.mktemp("unusual")
    rgb = Image.open(rows[0][0]).convert("RGB")
    other = Image.open(rows[1][0]).convert("RGB")
    f = {name: folder / f"{MARK}-{name}" for name in
         ("gray.png", "16bit.png", "cmyk.jpg", "palette_transparent.png", "rgba.png", "animated.gif",
          "pages.tiff", "exif6.jpg")}
    rgb.convert("L").save(f["gray.png"])
    wide = (np.asarray(rgb.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(wide).save(f["16bit.png"])  # mode I;16
    rgb.convert("CMYK").save(f["cmyk.jpg"], quality=95)
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    palette.save(f["palette_transparent.png"], transparency=0)
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgb.size))
    rgba.save(f["rgba.png"])
    rgb.save(f["animated.gif"], save_all=True, append_images=[other], duration=200, loop=0)
    rgb.save(f["pages.tiff"], save_all=True, append_images=[other])
    upright = Image.open(ham_rows.path.iloc[5]).convert("RGB")  # 200×150: orientation matters
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # EXIF 6 = "rotate 90° clockwise to view"
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(f["exif6.jpg"], quality=100, subsampling=0, exif=exif)
    upright.save(folder / "upright.jpg", quality=100, subsampling=0)
    stored.save(folder / "stored_no_exif.jpg", quality=100, subsampling=0)
    f["_upright"], f["_stored"] = folder / "upright.jpg", folder / "stored_no_exif.jpg"
    return f




def test_api_has_two_public_named_endpoints(server, client):
    info = client.view_api(print_info=False, return_format="dict")
    assert sorted(info["named_endpoints"]) == ["/predict", "/predict_patient"]
    assert not info.get("unnamed_endpoints")
    params = {name: [p["parameter_name"] for p in e["parameters"]] for name, e in info["named_endpoints"].items()}
    assert params == {"/predict": ["image", "age", "sex", "site"], "/predict_patient": ["images", "age", "sex", "sites"]}
    # Every call goes through the bounded queue: the direct routes that would skip it are closed.
    for name in ("predict", "predict_patient"):
        r = httpx.post(f"{server}gradio_api/run/{name}", json={"data": [None, None, None, None]})
        assert r.status_code == 404 and "join the queue" in r.text


def test_predict_equals_predictor_on_real_images(client, predictor, rows, real_copies):
    for (path, age, sex, site), copy in zip(rows, real_copies):
        answer = client.predict(handle_file(str(copy)), age, sex, site, api_name="/predict")
        expected = predictor.predict(path, age, sex, site)
        assert answer.keys() == expected.keys()
        assert list(answer["diagnosis"]) == list(expected["diagnosis"])  # same order: most likely first
        assert _close(answer, expected), (answer, expected)
        assert answer["model_id"] == predictor.model_id and answer["model_revision"] == predictor.revision
    blank = client.predict(handle_file(str(real_copies[0])), None, None, None, api_name="/predict")
    assert blank["metadata"] == {"age": None, "sex": "unknown", "site": "unknown"}
    assert _close(blank, predictor.predict(rows[0][0]))


def _close(a, b) -> bool:
    """Equal dicts, floats within 1e-9 (the same computation; JSON round-trips doubles exactly)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= 1e-9
    return a == b


def test_unusual_valid_images_are_scored(client, predictor, unusual_files):
    opened = {name: Image.open(path) for name, path in unusual_files.items()}  # they are what they claim
    assert (opened["gray.png"].mode, opened["16bit.png"].mode, opened["cmyk.jpg"].mode) == ("L", "I;16", "CMYK")
    assert opened["palette_transparent.png"].mode == "P" and "transparency" in opened["palette_transparent.png"].info
    assert opened["rgba.png"].mode == "RGBA" and opened["exif6.jpg"].getexif()[0x0112] == 6
    assert opened["animated.gif"].n_frames == 2 and opened["pages.tiff"].n_frames == 2
    for name in ("gray.png", "16bit.png", "cmyk.jpg", "palette_transparent.png", "rgba.png"):
        answer = client.predict(handle_file(str(unusual_files[name])), 70, "male", "head/neck", api_name="/predict")
        assert _close(answer, predictor.predict(unusual_files[name], 70, "male", "head/neck")), name
    for name in ("animated.gif", "pages.tiff"):  # the first frame / page, not the second
        answer = client.predict(handle_file(str(unusual_files[name])), api_name="/predict")
        container = Image.open(unusual_files[name])
        container.seek(0)
        first = predictor.predict(container.convert("RGB"))
        container.seek(1)
        second = predictor.predict(container.convert("RGB"))
        assert _close(answer["diagnosis"], first["diagnosis"]), name
        assert not _close(answer["diagnosis"], second["diagnosis"]), name
    # EXIF orientation 6: scored like the upright photo, not like the pixels as stored.
    answer = client.predict(handle_file(str(unusual_files["exif6.jpg"])), api_name="/predict")
    upright = predictor.predict(unusual_files["_upright"])
    stored = predictor.predict(unusual_files["_stored"])

    def distance(x, y):
        return sum(abs(x["diagnosis"][c] - y["diagnosis"][c]) for c in x["diagnosis"])

    print(f"\nEXIF 6: distance to upright {distance(answer, upright):.2e}, to stored {distance(answer, stored):.2e}")
    assert distance(answer, upright) < 0.25 * distance(answer, stored)


@pytest.fixture(scope="module")
def bundled_client(upload_dir):
    from app_helpers import launch
    from conftest import REPO

    demo = launch(Predictor.from_pretrained(REPO / "output" / "default", threads=1))
    yield Client(demo.local_url, verbose=False)
    demo.close()


def test_the_api_cautions_a_greyscale_melanoma_and_never_bands_a_refused_image(bundled_client, ham_rows, tmp_path):
    from skimage.data import chelsea

    melanoma = Image.open(ham_rows[ham_rows.dx == "mel"].path.iloc[0]).convert("RGB")
    grey, cat = tmp_path / f"{MARK}-grey.jpg", tmp_path / f"{MARK}-cat.png"
    melanoma.convert("L").convert("RGB").save(grey)
    Image.fromarray(chelsea()).save(cat)
    answer = bundled_client.predict(handle_file(str(grey)), None, None, None, api_name="/predict")
    assert answer["in_distribution"] is False or answer["caution"], answer
    if answer["in_distribution"] is not False:  # shown: the number, and the caution in words
        assert isinstance(answer["melanoma_probability"], float) and "colours" in answer["caution"]
    refused = bundled_client.predict(handle_file(str(cat)), None, None, None, api_name="/predict")
    assert refused["in_distribution"] is False and refused["triage"] is None and refused["caution"] is None
