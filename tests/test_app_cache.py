"""Uploads and heat maps do not outlive the retention time: while the server runs, and after it was killed
(inference/uploads.py: each server's own locked folder, swept by the others once it has ended).
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from app_helpers import MARK, assert_still_serves, kill_app, launch, start_app, upload
from conftest import REPO
from gradio_client import Client, handle_file

pytestmark = pytest.mark.usefixtures("tripwire")  # no connection leaves the loopback (app_helpers)


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

        def left():  # the live server's empty lock file (inference/uploads.py) holds nothing of anyone's
            return [p for p in _files_under(tmp_path) if p.read_bytes() not in examples and p.suffix != ".lock"]

        deadline = time.monotonic() + 15
        while left() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert left() == []
    finally:
        demo.close()


def test_a_killed_servers_uploads_go_while_another_runs_and_at_the_next_start(tiny_model_dir, real_copies, tmp_path):
    """Issue 30: `kill -9` runs no clean-up, and Gradio's `delete_cache` deletes only its own process's files. A
    killed server's folder goes within the retention while another server runs on the same root (its sweep), and
    at once when the next one starts; the live servers keep serving."""
    root, retention = tmp_path / "uploads", 4
    first, first_url = start_app(tiny_model_dir, root, retention, tmp_path)
    second, second_url = start_app(tiny_model_dir, root, retention, tmp_path)
    try:
        sent = Path(upload(first_url, real_copies[0])["path"])
        assert sent.is_file() and sent.is_relative_to(root)  # the app's own folder, not Gradio's shared one
        kill_app(first)
        killed = time.monotonic()
        while sent.exists() and time.monotonic() - killed < retention + 6:
            time.sleep(0.2)
        assert not sent.exists(), "the killed server's upload outlived the retention"
        assert not any(p.is_relative_to(sent.parents[1]) for p in root.rglob("*") if p != sent.parents[1])
        assert_still_serves(Client(second_url, verbose=False), real_copies[1])
        sent = Path(upload(second_url, real_copies[2])["path"])
        kill_app(second)
        third, third_url = start_app(tiny_model_dir, root, retention, tmp_path)  # at once: nothing is old yet
        try:
            assert not sent.exists(), "the next server left the killed server's fresh upload"
            assert_still_serves(Client(third_url, verbose=False), real_copies[0])
            alive = [p for p in root.glob("instance-*") if p.is_dir()]  # (Gradio also makes an empty folder)
            assert len(alive) == 1 and list(alive[0].rglob("*.jpg")), "only the live server's folder is left"
        finally:
            kill_app(third)
    finally:
        for process in (first, second):
            if process.poll() is None:
                kill_app(process)
