"""The Hugging Face Space: melanoma probability, differential diagnosis and a Grad-CAM for one image.

Run: `python app.py` (model from $MELANOMA_MODEL: a local folder, a Hub repo id or `repo@revision`;
default output/default). API: `Client(url).predict(handle_file(path), age, sex, site, api_name="/predict")`
returns the `Predictor.predict` dict. Uploads are never kept: no flagging, cache files are deleted.
"""

from __future__ import annotations

import html
import math
import os
import sys
from pathlib import Path

import gradio as gr

from inference import CLASS_NAMES, MALIGNANT, Predictor
from inference.explain import explain
from inference.metadata import SITES

HERE = Path(__file__).resolve().parent
DEFAULT_MODEL = HERE / "output" / "default"
NOTICE = ("**Research demo, not a diagnosis.** This model has not been clinically validated. "
          "Anyone worried about a skin lesion should see a doctor or dermatologist.")
# Server settings of the Space (tests launch with the same ones). Every API call is a new Gradio
# session holding a copy of the page config (~50 KB); the app keeps no per-session state, so few are kept.
LAUNCH = dict(max_file_size="20mb", show_error=True, ssr_mode=False, enable_monitoring=False, mcp_server=False,
              pwa=False, run_history=False, state_session_capacity=200, footer_links=["api", "gradio", "settings"])


def upload_path(image: dict | None, upload_dir: Path) -> str | None:
    """The path of a file uploaded to this server, or None. Events run with preprocess=False, so Gradio
    never opens the upload: `inference.open_image` (format allow-list, pixel cap read from the header)
    is the only parser. Gradio checks only payloads tagged as files, so the folder is checked here too."""
    if image is None:
        return None
    path = image.get("path") if isinstance(image, dict) else None
    if not isinstance(path, str) or not Path(path).resolve().is_relative_to(upload_dir):
        raise refuse("Send the image as a file uploaded to this app; other paths and URLs are refused.")
    return path


def refuse(message: str) -> gr.Error:
    """A message for the person (printed nowhere: it can quote their input)."""
    return gr.Error(html.escape(message, quote=False), title="Cannot score this input", print_exception=False)


def model_line(predictor: Predictor) -> str:
    where = f"`{predictor.model_id}` at revision `{predictor.revision}`" if predictor.revision else \
        f"local folder `{predictor.model_id}`"
    return f"Answered by model {where}."


def build_demo(predictor: Predictor, delete_cache: tuple[int, int] = (600, 600)) -> gr.Blocks:
    """The Blocks app around one loaded predictor; the API endpoint is `/predict`."""

    def predict(image: dict | None, age: float | None = None, sex: str | None = None,
                site: str | None = None) -> dict:
        """Score one dermoscopic image with optional age (0-100), sex and anatomical site; blank = unknown.
        Returns the inference.Predictor.predict dict: melanoma_probability, malignant_probability,
        diagnosis (class -> probability, most likely first), metadata as read, model_id, model_revision."""
        path = upload_path(image, uploads)
        if path is None:
            raise refuse("No image: upload a dermoscopic photo (JPEG, PNG, WebP, BMP, TIFF or GIF).")
        if isinstance(age, float) and math.isnan(age):  # `normalize` reads NaN as pandas' blank; a caller's is a bug
            raise refuse("age: NaN is not allowed; expected a number of years from 0 to 100, or blank for unknown.")
        try:
            return predictor.predict(path, age, sex, site)
        except ValueError as err:  # includes inference.ImageError: both carry a message for people
            raise refuse(str(err)) from None

    def show(answer: dict):
        mel, malignant = answer["melanoma_probability"], answer["malignant_probability"]
        headline = f"## Melanoma probability: {mel:.1%}\nBenign {1 - malignant:.1%} · malignant {malignant:.1%}"
        benign_malignant = {"Malignant (melanoma, basal cell carcinoma, AK/IEC)": malignant, "Benign": 1 - malignant}
        ddx = {CLASS_NAMES[c]: p for c, p in answer["diagnosis"].items()}
        return headline, mel, benign_malignant, ddx

    def heat_map(image: dict | None, age=None, sex=None, site=None):
        try:
            return explain(predictor, upload_path(image, uploads), age, sex, site, display_size=384)[0]
        except ValueError as err:
            raise refuse(str(err)) from None

    with gr.Blocks(title="Melanoma triage (research demo)", analytics_enabled=False, delete_cache=delete_cache) as demo:
        gr.Markdown(f"# Melanoma triage from a dermoscopic image\n> ⚠️ {NOTICE}")
        with gr.Row():
            with gr.Column():
                image = gr.Image(label="Dermoscopic image", type="filepath", image_mode=None, height=320,
                                 sources=["upload", "webcam", "clipboard"], elem_id="input-image")
                age = gr.Number(label="Age in years (0–100)", value=None, placeholder="blank = unknown",
                                info="Leave blank if unknown.")
                sex = gr.Dropdown(["unknown", "female", "male"], value="unknown", label="Sex", allow_custom_value=True)
                site = gr.Dropdown([*SITES, "unknown"], value="unknown", label="Anatomical site",
                                   allow_custom_value=True)
                gr.Markdown("Blank or *unknown* fields are treated as unknown; the model was trained with them.")
                button = gr.Button("Assess", variant="primary")
            with gr.Column():
                headline = gr.Markdown(elem_id="headline")
                mel = gr.Number(label="Melanoma probability (0–1)", precision=4, interactive=False,
                                elem_id="mel-probability")
                # No big heading naming the top class: it would read like a diagnosis.
                benign_malignant = gr.Label(label="Benign or malignant", show_heading=False, elem_id="benign-malignant")
                ddx = gr.Label(label="Differential diagnosis", num_top_classes=5, show_heading=False, elem_id="ddx")
                heat = gr.Image(label="Grad-CAM: regions that raised the melanoma score (bright = more)",
                                type="numpy", format="png", interactive=False, height=320, elem_id="heat-map")
                with gr.Accordion("Raw answer (same JSON as the /predict API)", open=False):
                    answer = gr.JSON(label="Answer")
        gr.Markdown(f"{model_line(predictor)} Malignant = {', '.join(CLASS_NAMES[c] for c in MALIGNANT)}. "
                    "Uploads are deleted from the server within 20 minutes and never logged.")
        uploads = Path(image.GRADIO_CACHE).resolve()  # where Gradio's upload route writes
        inputs, outputs = [image, age, sex, site], [headline, mel, benign_malignant, ddx, heat, answer]
        # Gradio 6.31's front end starts an empty Number at 0 (a newborn, not "unknown"): blank it on load.
        demo.load(fn=None, outputs=age, js="() => null")
        # Any change of input clears the old answer, in the browser only.
        gr.on([image.change, age.change, sex.change, site.change], fn=None, outputs=outputs,
              js="() => ['', null, {}, {}, null, null]")
        scored = button.click(predict, inputs, answer, api_name="predict", concurrency_id="model", preprocess=False)
        scored.success(show, answer, [headline, mel, benign_malignant, ddx], api_visibility="private",
                       concurrency_limit=None, show_progress="hidden")
        scored.success(heat_map, inputs, heat, api_visibility="private", concurrency_id="model", preprocess=False)
    demo.queue(max_size=64, default_concurrency_limit=2, api_open=False)
    return demo


def load_predictor(source: str) -> Predictor:
    """Load the model or exit with one line saying how to get one (no traceback)."""
    try:
        return Predictor.from_pretrained(source)
    except Exception as err:  # noqa: BLE001 - any failure to load is reported the same way, on one line
        reason = " ".join(f"{type(err).__name__}: {err}".split())
        sys.exit(f"app.py: cannot load a model from {source!r}: {reason} -- train one with "
                 "`python -m train --config train/configs/cpu_default.yaml` (writes output/default) or set "
                 "MELANOMA_MODEL to a model folder, a Hub repo id or repo@revision.")


if __name__ == "__main__":
    demo = build_demo(load_predictor(os.environ.get("MELANOMA_MODEL") or str(DEFAULT_MODEL)))
    demo.launch(**LAUNCH)
