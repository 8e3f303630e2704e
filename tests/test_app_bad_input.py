"""Every bad input (file or metadata) gets its human message, nothing about it reaches the log, and the
server keeps serving.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from app_helpers import MARK, assert_still_serves, png_bomb, raw_call, upload
from gradio_client import handle_file
from gradio_client.exceptions import AppError
from PIL import Image

pytestmark = pytest.mark.usefixtures("tripwire")  # no connection leaves the loopback (app_helpers)


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, rows) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bad")
    real = Path(rows[0][0]).read_bytes()
    files = {name: folder / f"{MARK}-{name}" for name in
             ("zero.jpg", "text.jpg", "truncated.jpg", "header_only.jpg", "one_pixel.png", "svg.png", "pdf.png",
              "36mp.png")}
    files["zero.jpg"].write_bytes(b"")
    files["text.jpg"].write_text("Dear doctor, this is a letter, not a picture.\n" * 20)
    files["truncated.jpg"].write_bytes(real[: len(real) // 2])
    files["header_only.jpg"].write_bytes(real[:600])  # cut inside the header: Pillow's own words were raw
    Image.new("RGB", (6000, 6000), (200, 150, 120)).save(files["36mp.png"])  # ~120 KB declaring 36 MP
    Image.new("RGB", (1, 1), (120, 80, 60)).save(files["one_pixel.png"])
    files["svg.png"].write_text('<svg xmlns="http://www.w3.org/2000/svg" width="300" height="300">'
                                '<circle cx="150" cy="150" r="100" fill="brown"/></svg>')
    files["pdf.png"].write_bytes(b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n")
    files["bomb.png"] = png_bomb(folder / f"{MARK}-bomb.png", 30000, 30000)  # 900 MP: past Pillow's own error
    files["100mp.png"] = png_bomb(folder / f"{MARK}-100mp.png", 10000, 10000)  # 100 MP: Pillow only warns
    return files




BAD_UPLOADS = [  # (generated file, expected message)
    ("zero.jpg", r"empty \(0 bytes\)"),
    ("text.jpg", r"not an image we can read"),
    ("truncated.jpg", r"^This file is not a complete image: it is damaged or truncated. Upload the whole file again.$"),
    ("header_only.jpg", r"^This file is not a complete image: it is damaged or truncated. Upload the whole file again.$"),
    ("36mp.png", r"6000×6000 pixels; a PNG file is limited to 12.5 megapixels"),
    ("bomb.png", r"^The image is 900 megapixels; a PNG file is limited to 12.5 megapixels \(JPEG: 40\)"),  # issue 30
    ("100mp.png", r"^The image is 10000×10000 pixels; a PNG file is limited to 12.5 megapixels \(JPEG: 40\)"),
    ("one_pixel.png", r"1×1 pixels; it must be at least 8 pixels"),
    ("svg.png", r"not an image we can read"),
    ("pdf.png", r"not an image we can read"),
]
BAD_METADATA = [  # (age, sex, site, expected message)
    (-1, None, None, r"^age: -1 is not allowed; expected a number of years from 0 to 100"),
    (150, None, None, r"^age: 150 is not allowed"),
    ("abc", None, None, r"^age: 'abc' is not allowed"),
    ("nan", None, None, r"^age: 'nan' is not allowed"),
    (None, "x", None, r"^sex: 'x' is not allowed; expected one of male, female, unknown"),
    (None, None, "elbow", r"^anatomical site: 'elbow' is not allowed; expected one of torso"),
    (None, None, "elbow" * 2000, r"^anatomical site: 'elbowelbow.*\.\.\.' is not allowed"),
]


@pytest.mark.parametrize("name,message", BAD_UPLOADS, ids=[b[0] for b in BAD_UPLOADS])
def test_bad_upload_gets_a_message_and_the_server_keeps_serving(client, bad_files, real_copies, upload_dir, name,
                                                               message, capfd):
    with pytest.raises(AppError, match=message) as err:
        client.predict(handle_file(str(bad_files[name])), 50, "female", "torso", api_name="/predict")
    assert "Traceback" not in str(err.value) and str(upload_dir) not in str(err.value)
    assert_still_serves(client, real_copies[0])
    out, log = capfd.readouterr()
    assert MARK not in out + log and "Traceback" not in out + log


@pytest.mark.parametrize("age,sex,site,message", BAD_METADATA, ids=["age-1", "age150", "age-abc", "age-nan-text",
                                                                    "sex-x", "site-elbow", "site-10000"])
def test_bad_metadata_gets_a_message_and_the_server_keeps_serving(client, real_copies, age, sex, site, message,
                                                                 capfd):
    with pytest.raises(AppError, match=message) as err:
        client.predict(handle_file(str(real_copies[1])), age, sex, site, api_name="/predict")
    assert len(str(err.value)) < 400  # a 10 000-character value is not echoed back whole
    assert_still_serves(client, real_copies[0])
    out, log = capfd.readouterr()
    assert MARK not in out + log and "elbow" not in out + log and "abc" not in out + log


def test_nan_age_and_no_image(server, client, real_copies, capfd):
    # gradio_client itself cannot send NaN (its JSON encoder refuses), so send the raw token.
    with pytest.raises(ValueError, match="JSON compliant"):
        client.predict(handle_file(str(real_copies[0])), float("nan"), None, None, api_name="/predict")
    image = upload(server, real_copies[0])
    event, payload = raw_call(server, body='{"data": [' + json.dumps(image) + ', NaN, "male", "torso"]}')
    assert event == "error" and payload["error"].startswith("age: NaN is not allowed"), payload
    with pytest.raises(AppError, match="No image: upload a dermoscopic photo"):
        client.predict(None, 50, "male", "torso", api_name="/predict")
    assert_still_serves(client, real_copies[0])
    out, log = capfd.readouterr()
    assert MARK not in out + log
