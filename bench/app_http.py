"""The app's public endpoints through plain HTTP + server-sent events, as docs/api.md's curl example calls them."""

from __future__ import annotations

import json
from pathlib import Path


def http_upload(http, image: str) -> dict:
    """Upload one file the way README's curl example does; its FileData for a call."""
    with open(image, "rb") as f:
        path = http.post("/gradio_api/upload", files={"files": (Path(image).name, f, "image/jpeg")}).json()[0]
    return {"path": path, "meta": {"_type": "gradio.FileData"}}


def http_call(http, api: str, data: list) -> dict:
    """One call of a public endpoint through plain HTTP + server-sent events; returns the answer dict."""
    event_id = http.post(f"/gradio_api/call/{api}", json={"data": data}).json()["event_id"]
    event = None
    with http.stream("GET", f"/gradio_api/call/{api}/{event_id}") as response:
        for line in response.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and event in ("complete", "error"):
                if event == "error":
                    raise RuntimeError(f"the app answered an error: {line}")
                return json.loads(line.split(":", 1)[1])[0]
    raise RuntimeError("the event stream ended without an answer")


def http_predict(http, image: str) -> dict:
    """One /predict call the way README's curl example does it; returns the answer dict."""
    return http_call(http, "predict", [http_upload(http, image), 50, "female", "torso"])


def http_predict_patient(http, images: list[str]) -> dict:
    """One /predict_patient call with all of `images` as one patient's lesions (docs/api.md)."""
    return http_call(http, "predict_patient", [[http_upload(http, i) for i in images], 50, "female", ""])
