"""Uploads and heat maps do not outlive the retention time: while the server runs, and after it was killed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from conftest import REPO
from gradio_client import Client, handle_file

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from app_helpers import (  # noqa: F401  (the fixture chain: pytest finds fixtures by name in this module)
    MARK,
    client,
    free_port,
    launch,
    predictor,
    real_copies,
    rows,
    server,
    tripwire,
    upload,
    upload_dir,
)

import app  # noqa: E402  (app.py sits at the repository root; the Blocks it builds have analytics off)


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
