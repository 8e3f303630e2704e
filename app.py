"""The Hugging Face Space: melanoma probability, differential diagnosis and a Grad-CAM for one image; a second
tab assesses all of one patient's lesions together (app_patient.py).

Run: `python app.py` (model from $MELANOMA_MODEL: a local folder, a Hub repo id or `repo@revision`;
default output/default). API: `Client(url).predict(handle_file(path), age, sex, site, api_name="/predict")`
returns the `Predictor.predict` dict; `/predict_patient`: app_patient.py. Uploads are never kept: no flagging,
cache files are deleted.

Shape: the handlers are plain module-level functions of (predictor, upload folder, inputs) (app_requests.py checks
the uploads); `build_demo` binds them to one loaded predictor and lays out the page last.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
import tempfile
from pathlib import Path

import gradio as gr
from gradio.utils import get_upload_folder

from app_patient import patient_tab
from app_requests import UNPROCESSED, UPLOADS_ONLY, bind, refuse, upload_path, withhold_gradio_messages  # noqa: F401
from inference import CLASS_NAMES, MALIGNANT, Predictor
from inference.explain import explain
from inference.hub import parse_source
from inference.memory import return_large_buffers
from inference.metadata import SITES
from inference.triage import describe
from inference.uploads import InstanceFolder

HERE = Path(__file__).resolve().parent
DEFAULT_MODEL = "output/default"  # relative to this file; the page names local models this way
EXAMPLES = HERE / "examples"
NOTICE = ("**Research demo, not a diagnosis.** This model has not been clinically validated. "
          "Anyone worried about a skin lesion should see a doctor or dermatologist.")
REFUSAL = ("## This does not look like a dermoscopic image\nThe model was trained only on dermatoscope photos of "
           "skin lesions, so it gives no melanoma probability for this image. Try a close-up taken through a dermatoscope.")
# Uploads and heat maps are deleted this long after they were written: Gradio checks every RETENTION[0]
# seconds for files older than RETENTION[1] (so nothing stays past their sum); the folders of servers that
# have ended (killed, crashed) go at the next start and within RETENTION[0] while another server runs.
RETENTION = (int(os.environ.get("MELANOMA_RETENTION_S", 600)),) * 2
ROWS_PER_RUN = 4  # images per run of the graph: half a request's 8 views, for the memory peak (Predictor.rows_per_run)
# Server settings of the Space (tests launch with the same ones). Every API call is a new Gradio
# session holding a copy of the page config (~50 KB); the app keeps no per-session state, so few are kept.
LAUNCH = dict(max_file_size="20mb", show_error=True, ssr_mode=False, enable_monitoring=False, mcp_server=False,
              pwa=False, run_history=False, state_session_capacity=200, footer_links=["api", "gradio", "settings"])
HEAT_CAPTION = ("**Grad-CAM**: regions that raised the melanoma probability (bright = more). The model sees the "
                "centre square of the image; the dimmed sides, outside the white frame, were cut off.")
# After an answer, bring its headline into view when it is not (on a phone it is below the inputs).
SCROLL_TO_ANSWER = "() => document.getElementById('headline')?.scrollIntoView({block: 'nearest'})"
# What each output shows when an input changes (the browser clears the old answer; see build_demo).
BLANK = {gr.Markdown: "", gr.Label: {}, gr.Image: None, gr.JSON: None}



def predict(predictor: Predictor, uploads: Path, image: dict | None, age: float | None = None,
            sex: str | None = None, site: str | None = None) -> dict:
    """Assess one dermoscopic image with optional age (0-100), sex and anatomical site; blank = unknown.
    Returns the inference.Predictor.predict dict: melanoma_probability, malignant_probability,
    diagnosis (class -> probability, most likely first), in_distribution (false: clearly not a
    dermoscopic image, no number should be shown), caution (null, or one sentence: the image or its colours
    are unlike the training images, the number is less reliable), ood_score, colour_score, triage (band with
    its validation sensitivity/specificity; null when refused), metadata as read, model_id, model_revision."""
    path = upload_path(image, uploads)
    if path is None:
        raise refuse("No image: upload a dermoscopic photo (JPEG, PNG, WebP, BMP, TIFF or GIF).")
    if isinstance(age, float) and math.isnan(age):  # `normalize` reads NaN as pandas' blank; a caller's is a bug
        raise refuse("age: NaN is not allowed; expected a number of years from 0 to 100, or blank for unknown.")
    try:
        return predictor.predict(path, age, sex, site)
    except ValueError as err:  # includes inference.ImageError: both carry a message for people
        raise refuse(str(err)) from None


def show(answer: dict) -> tuple:
    """(headline, benign/malignant, differential, triage words) for one answer: the number once, in the headline."""
    if answer["in_distribution"] is False:  # no number at all: a probability for a cat or a screenshot misleads
        return REFUSAL, {}, {}, ""
    mel, malignant = answer["melanoma_probability"], answer["malignant_probability"]
    headline = f"## Melanoma probability: {mel:.1%}\nBenign {1 - malignant:.1%} · malignant {malignant:.1%}"
    if answer["in_distribution"] is None:
        headline += "\n\n*This model has no out-of-scope guard: it cannot tell whether the image is dermoscopic.*"
    if answer.get("caution"):
        headline += f"\n\n> ⚠️ **Caution:** {answer['caution']}"
    benign_malignant = {"Malignant (melanoma, basal cell carcinoma, AK/IEC)": malignant, "Benign": 1 - malignant}
    ddx = {CLASS_NAMES[c]: p for c, p in answer["diagnosis"].items()}
    return headline, benign_malignant, ddx, describe(answer)


def heat_map(predictor: Predictor, uploads: Path, image: dict | None, age=None, sex=None, site=None,
             answer: dict | None = None):
    if answer is not None and answer.get("in_distribution") is False:
        return None
    try:
        return explain(predictor, upload_path(image, uploads), age, sex, site, display_size=384)[0]
    except ValueError as err:
        raise refuse(str(err)) from None


def model_name(source: str) -> str:
    """How the page and the API name a model: a Hub id as given, a local folder relative to this app
    (or by its own name when it lies elsewhere), never an absolute server path."""
    name, _ = parse_source(source)
    folder = Path(name).expanduser()
    if not folder.is_dir():
        return name
    folder = folder.resolve()
    return folder.relative_to(HERE).as_posix() if folder.is_relative_to(HERE) else folder.name


def model_line(predictor: Predictor) -> str:
    where = f"`{predictor.model_id}` at revision `{predictor.revision}`" if predictor.revision else \
        f"local folder `{predictor.model_id}`"
    return f"Answered by model {where}."


def examples() -> tuple[list[list], list[str], str]:
    """(rows for gr.Examples, one label per row naming its diagnosis, attribution Markdown) from
    examples/examples.csv. Labels instead of a table: a table of four columns is wider than a phone."""
    with open(EXAMPLES / "examples.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    table = [[str(EXAMPLES / r["file"]), float(r["age"]) if r["age"] else None, r["sex"] or "unknown",
              r["site"] or "unknown"] for r in rows]
    labels = [" · ".join([CLASS_NAMES.get(r["dx"], r["dx"].capitalize()),
                          *([f"{r['age']} y", r["sex"], r["site"]] if r["age"] else [])]) for r in rows]
    credits = "; ".join(f"{r['dx']} {r['image_id']}" + (f" ({r['lesion_id']})" if r["lesion_id"] else "")
                        for r in rows if r["source"] == "HAM10000")
    others = "; ".join(f"{r['file']}: {r['source']}, {r['licence']}" for r in rows if r["source"] != "HAM10000")
    return table, labels, (f"Examples: HAM10000 images {credits} — Tschandl, Rosendahl, Kittler, *Scientific Data* 5:180161 "
                   f"(2018), doi:10.7910/DVN/DBW86T, licence CC BY-NC; from the model's validation fold. {others}.")


def upload_folder(sweep_every_s: float) -> Path:
    """This server's own folder for uploads and heat maps, under $GRADIO_TEMP_DIR when set, else under
    <tmp>/melanoma-triage (Gradio's default, <tmp>/gradio, is every app's). Each server process claims a folder of
    its own there and deletes the folders of servers that have ended, now and every `sweep_every_s` seconds
    (inference/uploads.py): a killed server's uploads go, a live one's are never touched. Gradio reads
    GRADIO_TEMP_DIR when it builds the page and when the server starts, so it is pointed at the folder here."""
    root = os.environ.get("GRADIO_TEMP_DIR") or str(Path(tempfile.gettempdir()) / "melanoma-triage")
    instance = InstanceFolder.claim(root)
    instance.sweep_every(sweep_every_s)
    os.environ["GRADIO_TEMP_DIR"] = str(instance.path)
    assert Path(get_upload_folder()).resolve() == instance.path
    return instance.path


def answer_column() -> tuple:
    """The answer's components, top to bottom: headline, triage, benign/malignant, differential, heat map, JSON."""
    headline = gr.Markdown(elem_id="headline")
    triage = gr.Markdown(elem_id="triage")
    # No big heading naming the top class: it would read like a diagnosis.
    benign_malignant = gr.Label(label="Benign or malignant", show_heading=False, elem_id="benign-malignant")
    ddx = gr.Label(label="Differential diagnosis", num_top_classes=5, show_heading=False, elem_id="ddx")
    heat = gr.Image(show_label=False, type="numpy", format="png", interactive=False, height=320, elem_id="heat-map")
    gr.Markdown(HEAT_CAPTION, elem_id="heat-caption")  # below the picture, not over it
    with gr.Accordion("Raw answer (same JSON as the /predict API)", open=False):
        answer = gr.JSON(label="Answer")
    return headline, triage, benign_malignant, ddx, heat, answer


def build_demo(predictor: Predictor, delete_cache: tuple[int, int] = RETENTION) -> gr.Blocks:
    """The Blocks app around one loaded predictor; the API endpoints are `/predict` and `/predict_patient`.
    `delete_cache`: every first-value seconds, delete uploads and outputs older than the second value, and the
    folders of servers that have ended (`upload_folder`)."""
    # Where Gradio's upload route writes; it also copies the examples there (kept for the server's
    # lifetime), so clicking one passes a path inside it.
    uploads = upload_folder(delete_cache[0])
    withhold_gradio_messages()
    return_large_buffers()  # memory comes back after a burst of big uploads (inference/memory.py)
    example_rows, example_labels, credits = examples()
    with gr.Blocks(title="Melanoma triage (research demo)", analytics_enabled=False, delete_cache=delete_cache) as demo:
        gr.Markdown(f"# Melanoma triage from a dermoscopic image\n> ⚠️ {NOTICE}")
        with gr.Tab("One lesion", id="lesion"):
            with gr.Row():
                with gr.Column():
                    image = gr.Image(label="Dermoscopic image", type="filepath", image_mode=None, height=320,
                                     sources=["upload", "webcam", "clipboard"], elem_id="input-image")
                    age = gr.Number(label="Age in years (0–100)", value=None, placeholder="blank = unknown",
                                    info="Leave blank if unknown.")
                    sex = gr.Dropdown(["unknown", "female", "male"], value="unknown", label="Sex",
                                      allow_custom_value=True)
                    site = gr.Dropdown([*SITES, "unknown"], value="unknown", label="Anatomical site",
                                       allow_custom_value=True)
                    gr.Markdown("Blank or *unknown* fields are treated as unknown; the model was trained with them.")
                    button = gr.Button("Assess", variant="primary")
                with gr.Column():  # on a phone the columns stack: the answer comes right after the button
                    headline, triage, benign_malignant, ddx, heat, answer = answer_column()
            gr.Examples(example_rows, [image, age, sex, site], label="Examples (click one, then Assess)",
                        elem_id="examples", cache_examples=False, example_labels=example_labels)
        with gr.Tab("Patient: several lesions", id="patient"):
            patient_age = patient_tab(predictor, uploads)
        kept = f"{sum(delete_cache) // 60} minutes" if sum(delete_cache) >= 120 else f"{sum(delete_cache)} seconds"
        gr.Markdown(f"{model_line(predictor)} Malignant = {', '.join(CLASS_NAMES[c] for c in MALIGNANT)}. "
                    f"Uploads are deleted from the server within {kept} and never logged.\n\n{credits}",
                    elem_id="footer")
        inputs, shown = [image, age, sex, site], [headline, benign_malignant, ddx, triage]
        outputs = [*shown, heat, answer]
        # Gradio 6.31's front end starts an empty Number at 0 (a newborn, not "unknown"): blank it on load.
        demo.load(fn=None, outputs=[age, patient_age], js="() => [null, null]")
        # Any change of input clears the old answer, in the browser only.
        gr.on([image.change, age.change, sex.change, site.change], fn=None, outputs=outputs,
              js=f"() => {json.dumps([BLANK[type(c)] for c in outputs])}")
        scored = button.click(bind(predict, predictor, uploads), inputs, answer, api_name="predict",
                              concurrency_id="model", preprocess=False)
        scored.success(show, answer, shown, api_visibility="private", concurrency_limit=None, show_progress="hidden") \
            .then(fn=None, js=SCROLL_TO_ANSWER)
        scored.success(bind(heat_map, predictor, uploads), [*inputs, answer], heat, api_visibility="private",
                       concurrency_id="model", preprocess=False)
    demo.queue(max_size=64, default_concurrency_limit=2, api_open=False)
    return demo


def load_predictor(source: str) -> Predictor:
    """Load the model or exit with one line saying how to get one (no traceback)."""
    try:
        predictor = Predictor.from_pretrained(source)
    except Exception as err:  # noqa: BLE001 - any failure to load is reported the same way, on one line
        reason = " ".join(f"{type(err).__name__}: {err}".split()).replace(str(HERE) + os.sep, "")
        sys.exit(f"app.py: cannot load a model from {source!r}: {reason} -- train one with "
                 "`python -m train --config train/configs/cpu_default.yaml` (writes output/default) or set "
                 "MELANOMA_MODEL to a model folder, a Hub repo id or repo@revision.")
    predictor.model_id = model_name(source)
    predictor.rows_per_run = ROWS_PER_RUN
    return predictor


if __name__ == "__main__":
    demo = build_demo(load_predictor(os.environ.get("MELANOMA_MODEL") or str(HERE / DEFAULT_MODEL)))
    demo.launch(**LAUNCH)
