"""32 concurrent callers, and flat memory over 500 requests.
"""

from __future__ import annotations

import gc
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import psutil
import pytest
from gradio_client import Client, handle_file

pytestmark = pytest.mark.usefixtures("tripwire")  # no connection leaves the loopback (app_helpers)


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
