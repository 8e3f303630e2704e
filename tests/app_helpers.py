"""The Space in-process, for the test_app_*.py files: app.build_demo(tiny model) launched on localhost, the real
images it is called with, and the calls a visitor's program makes. Test modules import the fixtures they use.

A pytest plugin (tests/conftest.py names it), so its fixtures are found by name. `tripwire` (every test_app_*.py
module uses it for all its tests: `pytestmark`) refuses and records every connection this process tries to make
off the loopback, so the SSRF cases prove the server made no request rather than only that it answered with an
error, and no other test reaches out either.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import httpx
import pytest
from conftest import REPO
from gradio_client import Client, handle_file

from inference import Predictor

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import app  # noqa: E402  (app.py sits at the repository root; the Blocks it builds have analytics off)

MARK = "secret-patient"  # every file this module uploads is named with it; it must never reach the logs
METADATA_URL = "http://169.254.169.254/latest/meta-data/iam/security-credentials/lesion.png"


@pytest.fixture(scope="module")
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


def start_app(model: Path, uploads: Path, retention_s: int, cwd: Path) -> tuple[subprocess.Popen, str]:
    """`python app.py` in a process group of its own (so `kill_app` can SIGKILL it like a crash), with its
    uploads under `uploads` and MELANOMA_RETENTION_S; returns (process, base URL) once it answers."""
    port = free_port()
    env = {**os.environ, "GRADIO_TEMP_DIR": str(uploads), "MELANOMA_RETENTION_S": str(retention_s),
           "MELANOMA_MODEL": str(model), "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
           "GRADIO_ANALYTICS_ENABLED": "False"}
    process = subprocess.Popen([sys.executable, str(REPO / "app.py")], cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    base, deadline = f"http://127.0.0.1:{port}/", time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(base, timeout=2).status_code == 200:
                return process, base
        except httpx.HTTPError:
            time.sleep(0.2)
    kill_app(process)
    raise AssertionError("the app did not start")


def kill_app(process: subprocess.Popen) -> None:
    """`kill -9` the app and its process group: nothing of it runs any clean-up."""
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(10)


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


def raw_call(base: str, data: list | None = None, body: str | None = None,
             endpoint: str = "predict") -> tuple[str, dict]:
    """POST /gradio_api/call/<endpoint> with a hand-made JSON body (what a script could send without the
    client's upload step), then read the result stream: (event name, payload)."""
    content = body if body is not None else json.dumps({"data": data})
    r = httpx.post(f"{base}gradio_api/call/{endpoint}", content=content, headers={"content-type": "application/json"})
    r.raise_for_status()
    with httpx.stream("GET", f"{base}gradio_api/call/{endpoint}/{r.json()['event_id']}", timeout=60) as stream:
        text = stream.read().decode()
    events = re.findall(r"event: (\w+)\ndata: (.*)", text)
    name, payload = events[-1]
    return name, json.loads(payload)


def upload(base: str, path: Path) -> dict:
    with open(path, "rb") as f:
        r = httpx.post(f"{base}gradio_api/upload", files=[("files", (path.name, f))])
    r.raise_for_status()
    return {"path": r.json()[0], "orig_name": path.name, "meta": {"_type": "gradio.FileData"}}


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
