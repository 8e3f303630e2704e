"""The Space, in-process: app.build_demo(tiny model) launched on localhost and called like a visitor's program.

* /predict through gradio_client on real images == Predictor.predict on the same inputs;
* valid but unusual images are scored, every bad input gets its human message and the server keeps
  serving; files the caller did not upload, and URLs to internal addresses, are refused;
* file routes refuse traversal; uploads are size-capped and gone after the cache lifetime;
* nothing about an upload (name, metadata) reaches the logs;
* 32 concurrent callers, and memory over 500 requests.

A tripwire refuses (and records) every connection this process tries to make off the loopback, so
the SSRF cases prove the server made no request rather than only that it answered with an error.
"""

from __future__ import annotations

import gc
import http.client
import ipaddress
import json
import math
import os
import signal
import re
import shutil
import socket
import struct
import subprocess
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
from conftest import REPO
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from inference import Predictor

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import app  # noqa: E402  (app.py sits at the repository root; the Blocks it builds have analytics off)

MARK = "secret-patient"  # every file this module uploads is named with it; it must never reach the logs
METADATA_URL = "http://169.254.169.254/latest/meta-data/iam/security-credentials/lesion.png"


# ----------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module", autouse=True)
def tripwire():
    """Refuse and record connections off the loopback; stub safehttpx's DNS-over-HTTPS fallback."""
    import safehttpx

    attempts: list[str] = []
    lookups: list[str] = []
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def allowed(address) -> bool:
        if not isinstance(address, tuple):
            return True  # unix sockets
        try:
            return ipaddress.ip_address(address[0]).is_loopback
        except ValueError:
            return address[0] == "localhost"

    def connect(self, address):
        if not allowed(address):
            attempts.append(str(address[0]))
            raise ConnectionRefusedError(f"test tripwire: no connection to {address[0]}")
        return real_connect(self, address)

    def connect_ex(self, address):
        if not allowed(address):
            attempts.append(str(address[0]))
            return 111
        return real_connect_ex(self, address)

    async def no_public_dns(hostname: str) -> list[str]:
        lookups.append(hostname)
        return []

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", connect)
        mp.setattr(socket.socket, "connect_ex", connect_ex)
        mp.setattr(safehttpx, "async_resolve_hostname_google", no_public_dns)
        yield {"attempts": attempts, "lookups": lookups}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(predictor: Predictor, **build):
    """Build and launch the app with the Space's own settings on a free localhost port.

    Uploads go to $GRADIO_TEMP_DIR, which Gradio reads when the app is built *and* on each request:
    the fixtures keep it set while a server runs."""
    demo = app.build_demo(predictor, **build)
    demo.launch(**app.LAUNCH, prevent_thread_lock=True, server_port=free_port(), quiet=True)
    return demo


@pytest.fixture(scope="module")
def predictor(tiny_model_dir) -> Predictor:
    # one onnxruntime thread: on 2 cores a second one fights the server's event loop for a tiny model
    return Predictor.from_pretrained(tiny_model_dir, threads=1)


@pytest.fixture(scope="module")
def upload_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("uploads")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRADIO_TEMP_DIR", str(folder))
        yield folder


@pytest.fixture(scope="module")
def server(predictor, upload_dir):
    demo = launch(predictor)
    yield demo.local_url
    demo.close()


@pytest.fixture(scope="module")
def client(server) -> Client:
    return Client(server, verbose=False)


@pytest.fixture(scope="module")
def rows(isic_rows, ham_rows):
    """Real images from ../shared/data with their metadata: (path, age, sex, site); one malignant."""
    picked = [isic_rows[isic_rows.target == 1].iloc[0], isic_rows[isic_rows.target == 0].iloc[0],
              isic_rows[isic_rows.anatom_site_general_challenge.isna()].iloc[0]]
    out = [(r.path, None if math.isnan(r.age_approx) else float(r.age_approx),
            r.sex if isinstance(r.sex, str) else None,
            r.anatom_site_general_challenge if isinstance(r.anatom_site_general_challenge, str) else None)
           for r in picked]
    ham = ham_rows[ham_rows.age.notna()].iloc[0]
    out.append((ham.path, float(ham.age), ham.sex, None))  # HAM10000 sites use another vocabulary
    return out


@pytest.fixture(scope="module")
def real_copies(rows, tmp_path_factory) -> list[Path]:
    """The same images copied to a temp folder under names carrying MARK (never into the repo)."""
    folder = tmp_path_factory.mktemp("real")
    copies = []
    for i, (path, *_) in enumerate(rows):
        copies.append(folder / f"{MARK}-{i}.jpg")
        shutil.copy(path, copies[-1])
    return copies


def assert_still_serves(client: Client, image: Path) -> None:
    answer = client.predict(handle_file(str(image)), 40, "female", "torso", api_name="/predict")
    assert 0.0 <= answer["melanoma_probability"] <= 1.0


def raw_call(base: str, data: list | None = None, body: str | None = None) -> tuple[str, dict]:
    """POST /gradio_api/call/predict with a hand-made JSON body (what a script could send without the
    client's upload step), then read the result stream: (event name, payload)."""
    content = body if body is not None else json.dumps({"data": data})
    r = httpx.post(f"{base}gradio_api/call/predict", content=content, headers={"content-type": "application/json"})
    r.raise_for_status()
    with httpx.stream("GET", f"{base}gradio_api/call/predict/{r.json()['event_id']}", timeout=60) as stream:
        text = stream.read().decode()
    events = re.findall(r"event: (\w+)\ndata: (.*)", text)
    name, payload = events[-1]
    return name, json.loads(payload)


def upload(base: str, path: Path) -> dict:
    with open(path, "rb") as f:
        r = httpx.post(f"{base}gradio_api/upload", files=[("files", (path.name, f))])
    r.raise_for_status()
    return {"path": r.json()[0], "orig_name": path.name, "meta": {"_type": "gradio.FileData"}}


# ------------------------------------------------------------------------------ generated test files

def png_bomb(path: Path, width: int, height: int) -> Path:
    """A real 1-bit PNG of width×height black pixels: a few KB to ~100 KB on disk, all of it on decode."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" * (1 + (width + 7) // 8)
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


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


# ------------------------------------------------------------------------------------------- tests

def test_api_has_one_public_named_endpoint(server, client):
    info = client.view_api(print_info=False, return_format="dict")
    assert list(info["named_endpoints"]) == ["/predict"]
    assert not info.get("unnamed_endpoints")
    params = [p["parameter_name"] for p in info["named_endpoints"]["/predict"]["parameters"]]
    assert params == ["image", "age", "sex", "site"]
    # Every call goes through the bounded queue: the direct route that would skip it is closed.
    r = httpx.post(f"{server}gradio_api/run/predict", json={"data": [None, None, None, None]})
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


BAD_UPLOADS = [  # (generated file, expected message)
    ("zero.jpg", r"empty \(0 bytes\)"),
    ("text.jpg", r"not an image we can read"),
    ("truncated.jpg", r"^This file is not a complete image: it is damaged or truncated. Upload the whole file again.$"),
    ("header_only.jpg", r"^This file is not a complete image: it is damaged or truncated. Upload the whole file again.$"),
    ("36mp.png", r"6000×6000 pixels; a PNG file is limited to 12.5 megapixels"),
    ("bomb.png", r"too large.*40 megapixels"),
    ("100mp.png", r"10000×10000 pixels; the limit is 40 megapixels"),
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


def test_files_the_caller_did_not_upload_are_refused(server, client, predictor, tiny_model_dir, rows, real_copies,
                                                    tripwire):
    model_files = [tiny_model_dir / "config.json", tiny_model_dir / "model.safetensors", tiny_model_dir]
    for path in ["/etc/passwd", rows[0][0], *map(str, model_files)]:
        # Tagged as a file: Gradio refuses anything outside its upload folder.
        event, payload = raw_call(server, [{"path": path, "meta": {"_type": "gradio.FileData"}}, None, None, None])
        assert event == "error" and "not uploaded by a user" in payload["error"], (path, payload)
        # Untagged (Gradio does not check these): the app refuses it itself.
        for image in ({"path": path}, {"path": path, "meta": {"_type": "other"}}, path):
            event, payload = raw_call(server, [image, None, None, None])
            assert event == "error" and "melanoma_probability" not in json.dumps(payload), (image, payload)
        event, payload = raw_call(server, [{"path": path, "orig_name": "x.jpg"}, None, None, None])
        assert payload["error"].startswith("Send the image as a file uploaded to this app"), payload
    # Traversal out of the upload folder in a path that starts inside it.
    inside = upload(server, real_copies[0])["path"]
    sneaky = inside.rsplit("/", 1)[0] + "/../../../../../../../../etc/passwd"
    for image in ({"path": sneaky}, {"path": sneaky, "meta": {"_type": "gradio.FileData"}}):
        event, payload = raw_call(server, [image, None, None, None])
        assert event == "error", payload
    assert_still_serves(client, real_copies[0])


def test_urls_to_internal_addresses_are_refused_without_a_request(server, client, real_copies, tripwire):
    with pytest.raises(AppError, match="failed validation"):
        client.predict(handle_file(METADATA_URL), 50, "male", "torso", api_name="/predict")
    event, payload = raw_call(server, [{"path": METADATA_URL, "url": METADATA_URL,
                                        "meta": {"_type": "gradio.FileData"}}, None, None, None])
    assert event == "error" and "melanoma_probability" not in json.dumps(payload)
    event, payload = raw_call(server, [{"path": METADATA_URL}, None, None, None])
    assert payload["error"].startswith("Send the image as a file uploaded to this app")
    r = httpx.get(f"{server}gradio_api/file={METADATA_URL}")
    assert r.status_code == 403
    assert tripwire["attempts"] == []  # not one connection left this machine...
    assert "169.254.169.254" in tripwire["lookups"]  # ...because Gradio's SSRF guard refused the address
    assert_still_serves(client, real_copies[0])


def test_file_routes_refuse_traversal(server, upload_dir, tiny_model_dir, tmp_path, monkeypatch, real_copies):
    """A working folder with secrets next to it; every way of naming them gets 403, never their bytes."""
    (tmp_path / "app.py").write_text("SECRET_APP_SOURCE = 1\n")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / ".env").write_text("HF_TOKEN=SECRET_ENV_VALUE\n")
    (cwd / "notes.txt").write_text("SECRET_NOTES\n")
    monkeypatch.chdir(cwd)  # Gradio resolves relative file= paths against the working directory
    host, port = server.split("//")[1].strip("/").split(":")
    secrets = ("SECRET_", "root:", "build_demo", '"backbone"', "safetensors")
    paths = ["../app.py", ".env", "notes.txt", "%2e%2e%2fapp.py", "..%2fapp.py", "%2e%2e/app.py",
             "..%2F..%2F..%2F..%2Fetc%2Fpasswd", "%2Eenv", "/etc/passwd", str(REPO / "app.py"),
             str(tiny_model_dir / "config.json"), str(upload_dir) + "/../../../../etc/passwd", "~/.bashrc"]
    for path in paths:
        for route in ("/gradio_api/file=", "/gradio_api/file/"):
            conn = http.client.HTTPConnection(host, int(port), timeout=10)  # sends the path as written
            conn.request("GET", route + path)
            response = conn.getresponse()
            body = response.read().decode(errors="replace")
            conn.close()
            assert response.status in (403, 404), (route + path, response.status)
            assert not any(s in body for s in secrets), (route + path, body[:200])
            if route == "/gradio_api/file=":
                assert response.status == 403, (route + path, response.status)
    # Control: the route does serve a file that was uploaded (so the 403s above are refusals).
    inside = upload(server, real_copies[0])["path"]
    assert httpx.get(f"{server}gradio_api/file={inside}").content == real_copies[0].read_bytes()


def test_upload_size_is_capped(server, tmp_path):
    big = tmp_path / f"{MARK}-big.jpg"
    big.write_bytes(b"\xff\xd8" + os.urandom(21 * 1024 * 1024))
    with open(big, "rb") as f:
        r = httpx.post(f"{server}gradio_api/upload", files=[("files", (big.name, f))], timeout=60)
    assert r.status_code == 413, r.status_code


def test_concurrent_callers(server, real_copies):
    """32 gradio_client callers × 5 requests at once: every answer arrives, none is an error."""
    errors: list[str] = []
    answers: list[float] = []

    def caller(i: int) -> None:
        try:
            c = Client(server, verbose=False)
            for j in range(5):
                image = real_copies[(i + j) % len(real_copies)]
                answers.append(c.predict(handle_file(str(image)), 20 + i, "male", "torso",
                                         api_name="/predict")["melanoma_probability"])
        except Exception as err:  # noqa: BLE001 - every failure is a test failure, collected
            errors.append(f"caller {i}: {err!r}")

    start = time.monotonic()
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(caller, range(32)))
    elapsed = time.monotonic() - start
    print(f"\nload: 160 requests from 32 callers in {elapsed:.1f} s, {len(errors)} errors")
    assert errors == []
    assert len(answers) == 160 and all(0.0 <= a <= 1.0 for a in answers)


def test_memory_is_flat_over_500_requests(server, real_copies):
    """RSS (server and callers share this process) after 500 requests is within 10 % of after 50.

    Each request is what gradio_client does, upload + queued call + result stream, sent with plain
    keep-alive httpx clients: gradio_client's 50 ms polling would make 500 requests slow, not different."""
    process = psutil.Process()
    sessions = [httpx.Client(base_url=server, timeout=60) for _ in range(4)]

    def one(k: int) -> None:
        http, image = sessions[k % 4], real_copies[k % len(real_copies)]
        with open(image, "rb") as f:
            path = http.post("gradio_api/upload", files=[("files", (image.name, f))]).json()[0]
        data = [{"path": path, "orig_name": image.name, "meta": {"_type": "gradio.FileData"}}, k % 100, "male", "torso"]
        event_id = http.post("gradio_api/call/predict", json={"data": data}).json()["event_id"]
        text = http.get(f"gradio_api/call/predict/{event_id}").text
        assert "event: complete" in text and "melanoma_probability" in text, text[:300]

    def run(count: int) -> None:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(one, range(count)))

    start = time.monotonic()
    run(50)
    gc.collect()
    after_50 = process.memory_info().rss
    run(450)
    gc.collect()
    after_500 = process.memory_info().rss
    elapsed = time.monotonic() - start
    for http in sessions:
        http.close()
    print(f"\nRSS after 50 requests: {after_50 / 2**20:.1f} MiB, after 500: {after_500 / 2**20:.1f} MiB "
          f"({(after_500 / after_50 - 1) * 100:+.1f} %), 500 requests in {elapsed:.1f} s")
    assert after_500 <= 1.10 * after_50
    assert elapsed < 180, "the memory test has a time bound"


def _files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


def test_uploads_and_outputs_are_deleted_after_the_cache_lifetime(predictor, tmp_path, real_copies, monkeypatch):
    """With delete_cache=(1, 1) nothing the visitor sent or was shown is left on disk a few seconds later."""
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    demo = launch(predictor, delete_cache=(1, 1))
    try:
        base = demo.local_url
        c = Client(base, verbose=False)
        for image in real_copies[:2]:
            c.predict(handle_file(str(image)), 30, "female", "torso", api_name="/predict")
        # The page's Grad-CAM step (private: not in the API) writes an output image into the cache too.
        heat_fn = next(i for i, fn in demo.fns.items() if fn.name == "heat_map")
        # Its last input is the answer: a heat map is drawn only for an image the guard did not refuse.
        payload = {"data": [upload(base, real_copies[2]), 30, "female", "torso", {"in_distribution": None}],
                   "fn_index": heat_fn,
                   "session_hash": "cachetest", "event_data": None, "trigger_id": None}
        assert httpx.post(f"{base}gradio_api/queue/join", json=payload).status_code == 200
        with httpx.stream("GET", f"{base}gradio_api/queue/data?session_hash=cachetest", timeout=60) as stream:
            for line in stream.iter_lines():
                if '"process_completed"' in line:
                    assert '"success": true' in line.replace('"success":true', '"success": true'), line
                    break
        assert any(p.suffix == ".png" for p in _files_under(tmp_path)), "the heat map was written to the cache"
        assert any(MARK in p.name for p in _files_under(tmp_path)), "uploads were written to the cache"
        # Gradio keeps its copies of the app's own example files for the server's lifetime; nothing else stays.
        examples = {p.read_bytes() for p in (REPO / "examples").glob("*.jpg")}

        def left():
            return [p for p in _files_under(tmp_path) if p.read_bytes() not in examples]

        deadline = time.monotonic() + 15
        while left() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert left() == []
    finally:
        demo.close()


def test_purge_deletes_old_files_and_the_folders_it_empties(tmp_path):
    old, new = tmp_path / "a1b2" / "upload.jpg", tmp_path / "c3d4" / "upload.jpg"
    for path in (old, new):
        path.parent.mkdir()
        path.write_bytes(b"x")
    os.utime(old, (time.time() - 700, time.time() - 700))
    assert app.purge(tmp_path, 600) == 1
    assert not old.parent.exists() and new.is_file()  # no empty hash folder is left behind


def test_a_killed_servers_uploads_are_gone_after_the_retention_time(tiny_model_dir, real_copies, tmp_path):
    """`kill -9` leaves the uploads on disk; the next start deletes those older than the retention time."""
    uploads = tmp_path / "uploads"
    port = free_port()
    env = {**os.environ, "GRADIO_TEMP_DIR": str(uploads), "MELANOMA_RETENTION_S": "3", "MELANOMA_MODEL":
           str(tiny_model_dir), "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
           "GRADIO_ANALYTICS_ENABLED": "False"}
    base = f"http://127.0.0.1:{port}/"

    def start() -> subprocess.Popen:
        server = subprocess.Popen([sys.executable, str(REPO / "app.py")], cwd=tmp_path, env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(base, timeout=2).status_code == 200:
                    return server
            except httpx.HTTPError:
                time.sleep(0.2)
        server.kill()
        raise AssertionError("the app did not start")

    server = start()
    sent = Path(upload(base, real_copies[0])["path"])
    assert sent.is_file() and sent.is_relative_to(uploads)  # the app's own folder, not Gradio's shared one
    os.killpg(server.pid, signal.SIGKILL)
    server.wait(10)
    time.sleep(4)  # older than the retention now, with no server to delete it
    assert sent.is_file()
    server = start()
    try:
        assert not sent.exists() and not sent.parent.exists()
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(10)


def test_no_model_is_one_clear_line(tmp_path):
    """`python app.py` without a usable model: exit 1 with one line saying how to get one, no traceback."""
    env = {**os.environ, "MELANOMA_MODEL": str(tmp_path / "no-such-model"), "GRADIO_ANALYTICS_ENABLED": "False",
           "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, str(REPO / "app.py")], env=env, cwd=tmp_path, text=True,
                         capture_output=True, timeout=120)
    assert run.returncode == 1, (run.stdout, run.stderr)
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in run.stderr, run.stderr
    assert "no-such-model" in lines[0] and "MELANOMA_MODEL" in lines[0]
    assert "python -m train --config train/configs/cpu_default.yaml" in lines[0]


@pytest.mark.parametrize("kind", ["missing folder", "empty folder", "corrupt weights", "unknown backbone",
                                  "hub id offline"])
def test_every_unusable_model_is_one_line(kind, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = tmp_path / "model"
    if kind != "missing folder":
        folder.mkdir()
    if kind == "corrupt weights":
        shutil.copy(tiny_model_dir / "config.json", folder)
        (folder / "model.safetensors").write_bytes(b"not safetensors")
    if kind == "unknown backbone":
        shutil.copy(tiny_model_dir / "model.safetensors", folder)
        config = json.loads((tiny_model_dir / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "backbone": "no_such_net"}))
    source = "org/not-in-cache@0123abc" if kind == "hub id offline" else str(folder)
    with pytest.raises(SystemExit) as exit_:
        app.load_predictor(source)
    message = str(exit_.value.code)
    assert "\n" not in message and source in message and "MELANOMA_MODEL" in message, message
