"""Only files uploaded to the app are read: other paths, URLs to internal addresses (no request is made)
and traversal through the file routes are refused; uploads are size-capped.
"""

from __future__ import annotations

import http.client
import json
import os

import httpx
import pytest
from app_helpers import MARK, METADATA_URL, assert_still_serves, raw_call, upload
from conftest import REPO
from gradio_client import handle_file
from gradio_client.exceptions import AppError

import app

pytestmark = pytest.mark.usefixtures("tripwire")  # no connection leaves the loopback (app_helpers)


def test_files_the_caller_did_not_upload_are_refused(server, client, predictor, tiny_model_dir, rows, real_copies,
                                                    tripwire):
    model_files = [tiny_model_dir / "config.json", tiny_model_dir / "model.safetensors", tiny_model_dir]
    for path in ["/etc/passwd", rows[0][0], *map(str, model_files)]:
        # Tagged as a file: Gradio refuses anything outside its upload folder.
        event, payload = raw_call(server, [{"path": path, "meta": {"_type": "gradio.FileData"}}, None, None, None])
        assert event == "error" and payload["error"] == app.UPLOADS_ONLY, (path, payload)
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


def test_the_patient_endpoint_reads_only_uploaded_files_too(server, client, rows, real_copies, tiny_model_dir):
    inside = upload(server, real_copies[0])
    for path in ["/etc/passwd", rows[0][0], str(tiny_model_dir / "config.json")]:
        for image in ({"path": path, "meta": {"_type": "gradio.FileData"}}, {"path": path}, path):
            # one good upload beside it: the whole request is refused, nothing is read
            event, payload = raw_call(server, [[inside, image], None, None, ""], endpoint="predict_patient")
            assert event == "error" and "melanoma_probability" not in json.dumps(payload), (image, payload)
            assert payload["error"] in (app.UPLOADS_ONLY, app.UNPROCESSED), (image, payload)
    assert_still_serves(client, real_copies[0])


def test_urls_to_internal_addresses_are_refused_without_a_request(server, client, real_copies, tripwire):
    with pytest.raises(AppError) as refused:  # Gradio's SSRF check refused it; its message is withheld
        client.predict(handle_file(METADATA_URL), 50, "male", "torso", api_name="/predict")
    assert str(refused.value) == app.UNPROCESSED
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


def test_refused_paths_and_urls_do_not_reach_the_server_log(server, client, real_copies, tripwire, capfd):
    """README promises that no image, file name or metadata is logged: that holds for what the app refuses too."""
    capfd.readouterr()
    path, url = f"/tmp/{MARK}-elsewhere.jpg", f"http://169.254.169.254/{MARK}.png"
    for image in ({"path": path}, {"path": path, "meta": {"_type": "gradio.FileData"}}, path,
                  {"path": url, "url": url, "meta": {"_type": "gradio.FileData"}}, {"path": url}):
        event, _ = raw_call(server, [image, 41, "female", "torso"])
        assert event == "error"
    with pytest.raises(AppError):
        client.predict(handle_file(url), 41, "female", "torso", api_name="/predict")
    assert_still_serves(client, real_copies[0])
    out, err = capfd.readouterr()
    assert MARK not in out + err and "169.254.169.254" not in out + err, out + err


def test_malformed_file_payloads_are_answered_without_a_server_path(server, client, upload_dir, real_copies):
    """Issue 30: Gradio's own refusal quoted the server's working directory ("Cannot move /srv/app/x.jpg to the
    gradio cache dir ..."). Every malformed FileData gets one sentence naming no path of the server's."""
    meta = {"_type": "gradio.FileData"}
    inside = upload(server, real_copies[0])["path"]
    images = [{"path": "x.jpg", "meta": meta}, {"path": f"{MARK}.jpg", "meta": meta},
              {"path": str(REPO / "x.jpg"), "meta": meta}, {"path": "../../../etc/passwd", "meta": meta},
              {"path": inside + "/../../../x.jpg", "meta": meta}, {"path": "/", "meta": meta},
              {"path": "http://127.0.0.1:9/x.jpg", "meta": meta}, {"path": "file:///etc/passwd", "meta": meta},
              {"path": "x.jpg"}, {"path": "x.jpg", "meta": {}}, {"meta": meta}, {"path": None, "meta": meta},
              {"path": 5, "meta": meta}, {"path": ["x.jpg"], "meta": meta}, {"url": "x.jpg", "meta": meta}]
    server_paths = {os.getcwd(), str(REPO), str(upload_dir), str(upload_dir.resolve()), inside.rsplit("/", 1)[0],
                    __import__("tempfile").gettempdir() + "/", "Cannot move", "cache dir"}
    for image in images:
        event, payload = raw_call(server, [image, 41, "female", "torso"])
        text = json.dumps(payload)
        assert not [p for p in server_paths if p in text], (image, text)
        assert event == "error" and payload["error"] in (app.UPLOADS_ONLY, app.UNPROCESSED), (image, payload)
    assert_still_serves(client, real_copies[0])
