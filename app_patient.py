"""The Space's "Patient" tab: all of one patient's lesions at once, ordered by where to look first.

API: `Client(url).predict([handle_file(p) for p in paths], age, sex, "torso, back, ...", api_name="/predict_patient")`
returns the `Predictor.predict_patient` dict (docs/api.md). Sites are one text, one site per image in upload order
separated by commas (a site never holds a comma); blank means unknown for all of them.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from app_requests import bind, refuse, upload_path
from inference import Predictor
from inference.metadata import SITES
from inference.patient import MAX_LESIONS

SITES_HELP = f"One per image, in upload order, separated by commas; blank = unknown. Sites: {', '.join(SITES)}."
STANDS_OUT = ("*Stands out*: how far a lesion's features lie from the mean of this patient's other lesions, in "
              "standard deviations among this patient's lesions (0: as different as they usually are; +2: far more).")
MARKER = "◆ stands out"  # shown only when inference.patient flags a lesion (its measurement decides: docs/model.md)
# After an answer, bring the gallery into view when it is not (on a phone it is below the inputs).
SCROLL_TO_GALLERY = "() => document.getElementById('patient-gallery')?.scrollIntoView({block: 'start'})"


def parse_sites(text: str | None, n: int) -> list[str | None] | None:
    """The sites text → one site (or None) per image; None when blank (all unknown). The count is checked by
    `predict_patient`, which says how many it got."""
    if text is None or not str(text).strip():
        return None
    text = str(text)
    sites = [s.strip() for s in (text.split(",") if "," in text else text.splitlines())]  # commas, else one a line
    if len(sites) == n + 1 and sites[-1] == "":  # a trailing comma
        sites = sites[:-1]
    return [None if s.lower() in ("", "unknown") else s for s in sites]


def predict_patient(predictor: Predictor, uploads: Path, images: list[dict] | None, age: float | None = None,
                    sex: str | None = None, sites: str | None = None) -> dict:
    """Assess all of one patient's dermoscopic images together (at most 30), with the patient's optional age and sex
    and one optional site per image (comma-separated, in upload order). Returns the inference.Predictor.predict_patient
    dict: `lesions` (each the /predict answer plus `image`, its upload position, and `context`: `rank` (1 = look
    first), `outlier`, `relative`, `flagged`, `note`), `compared`, `needs` and `order` (what the order means)."""
    paths = [upload_path(image, uploads) for image in images or []]
    if not paths:
        raise refuse(f"No images: upload the patient's dermoscopic photos (up to {MAX_LESIONS}).")
    try:
        return predictor.predict_patient(paths, age, sex, parse_sites(sites, len(paths)))
    except ValueError as err:
        raise refuse(str(err)) from None


def caption(lesion: dict) -> str:
    """One gallery caption: rank, image number, the number and its band; the marker and a caution when present."""
    rank = lesion["context"]["rank"]
    parts = [f"#{rank} · image {lesion['image']}" if rank else f"image {lesion['image']}"]
    if lesion["in_distribution"] is False:
        parts.append("not assessed")
    else:
        parts.append(f"{lesion['melanoma_probability']:.1%}")
        if lesion.get("triage"):
            parts.append(lesion["triage"]["band"])
        if lesion["context"]["flagged"]:
            parts.append(MARKER)
        if lesion.get("caution"):
            parts.append("⚠️ caution")
    return " · ".join(parts)


def line(lesion: dict) -> str:
    """One lesion in the list under the gallery, in rank order."""
    c = lesion["context"]
    head = f"**{'#' + str(c['rank']) + ' · ' if c['rank'] else ''}Image {lesion['image']}**"
    if lesion.get("error"):
        return f"{head}: not assessed. {lesion['error']}"
    if lesion["in_distribution"] is False:
        return f"{head}: not assessed. {c['note']}"
    text = f"{head}: melanoma {lesion['melanoma_probability']:.1%}"
    if lesion.get("triage"):
        text += f", {lesion['triage']['band']} band"
    if c["outlier"] is not None:
        text += f"; stands out {c['outlier']:+.1f}"
    if c["flagged"]:
        text += f" — {MARKER}"
    if lesion.get("caution"):
        text += f". ⚠️ {lesion['caution']}"
    return text if c["note"] is None else f"{text}. {c['note']}"


def in_order(answer: dict) -> list[dict]:
    """The lesions by rank, then those without one in upload order."""
    return sorted(answer["lesions"], key=lambda x: (x["context"]["rank"] is None, x["context"]["rank"] or x["image"]))


def show_patient(answer: dict, images: list[dict]) -> tuple[list[tuple[str, str]], str]:
    """(gallery of the readable images in rank order with captions, Markdown: what the order means, then one line
    per lesion)."""
    ordered = in_order(answer)
    gallery = [(images[x["image"] - 1]["path"], caption(x)) for x in ordered if not x.get("error")]
    lines = "\n".join(f"- {line(x)}" for x in ordered)
    about = f"\n\n{STANDS_OUT}" if answer["compared"] else ""
    return gallery, f"**{answer['order']}**\n\n{lines}{about}"


def patient_tab(predictor: Predictor, uploads: Path) -> gr.Number:
    """The tab's inputs, answer and events, inside the caller's `gr.Tab`; returns the age input (the page blanks it
    on load)."""
    images = gr.File(label=f"Dermoscopic images of one patient's lesions (up to {MAX_LESIONS})", file_count="multiple",
                     file_types=["image"], elem_id="patient-images")
    with gr.Row():
        age = gr.Number(label="Age in years (0–100)", value=None, placeholder="blank = unknown",
                        elem_id="patient-age")
        sex = gr.Dropdown(["unknown", "female", "male"], value="unknown", label="Sex", allow_custom_value=True,
                          elem_id="patient-sex")
    sites = gr.Textbox(label="Anatomical sites (optional)", placeholder="torso, torso, lower extremity",
                       info=SITES_HELP, elem_id="patient-sites")
    button = gr.Button("Assess all", variant="primary", elem_id="patient-assess")
    gallery = gr.Gallery(label="Look at these first", columns=3, height="auto", object_fit="cover",
                         allow_preview=True, elem_id="patient-gallery")
    summary = gr.Markdown(elem_id="patient-summary")
    with gr.Accordion("Raw answer (same JSON as the /predict_patient API)", open=False):
        answer = gr.JSON(label="Answer")
    inputs = [images, age, sex, sites]
    gr.on([c.change for c in inputs], fn=None, outputs=[gallery, summary, answer], js="() => [null, '', null]")
    scored = button.click(bind(predict_patient, predictor, uploads), inputs, answer, api_name="predict_patient",
                          concurrency_id="model", preprocess=False)
    scored.success(show_patient, [answer, images], [gallery, summary], api_visibility="private",
                   concurrency_limit=None, preprocess=False, show_progress="hidden").then(fn=None, js=SCROLL_TO_GALLERY)
    return age
