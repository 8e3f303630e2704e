"""The Patient tab's pure parts (app_patient.py): the sites text, and what the gallery and the list show."""

from __future__ import annotations

import sys

from conftest import REPO

sys.path.insert(0, str(REPO))
from app_patient import MARKER, STANDS_OUT, caption, parse_sites, show_patient  # noqa: E402


def lesion(image: int, p: float | None, rank: int | None, band: str = "low", flagged: bool = False, **extra) -> dict:
    kept = p is not None
    return {"image": image, "in_distribution": kept, "melanoma_probability": p,
            "triage": {"band": band} if kept else None, "caution": None,
            "context": {"rank": rank, "outlier": 0.5 if kept else None, "relative": 0.0 if kept else None,
                        "flagged": flagged, "note": None if kept else "Not compared: this does not look like a "
                                                                      "dermoscopic image."}, **extra}


def test_sites_text_is_one_site_per_image_and_blank_is_unknown():
    assert parse_sites("", 3) is None and parse_sites(None, 3) is None and parse_sites("  ", 2) is None
    assert parse_sites("torso, unknown,  head/neck", 3) == ["torso", None, "head/neck"]
    assert parse_sites("torso,\nlower extremity,", 2) == ["torso", "lower extremity"]  # a trailing comma
    assert parse_sites("torso", 3) == ["torso"]  # the wrong count is predict_patient's sentence, not a guess


def test_the_gallery_is_in_rank_order_and_unread_files_are_listed_not_shown():
    answer = {"order": "Ordered by melanoma probability.", "compared": 3, "lesions": [
        lesion(1, 0.02, 3), lesion(2, None, None), lesion(3, 0.40, 1, "high", flagged=True), lesion(4, 0.10, 2),
        {**lesion(5, None, None), "error": "This file is not an image we can read."}]}
    images = [{"path": f"/uploads/{i}.jpg"} for i in range(1, 6)]
    gallery, text = show_patient(answer, images)
    assert [path for path, _ in gallery] == ["/uploads/3.jpg", "/uploads/4.jpg", "/uploads/1.jpg", "/uploads/2.jpg"]
    assert gallery[0][1] == f"#1 · image 3 · 40.0% · high · {MARKER}" and gallery[3][1] == "image 2 · not assessed"
    lines = text.split("\n- ")[1:]
    assert lines[0].startswith("**#1 · Image 3**: melanoma 40.0%, high band; stands out +0.5") and MARKER in lines[0]
    assert "Image 5**: not assessed. This file is not an image" in lines[-1] and STANDS_OUT in text
    assert caption(lesion(6, 0.1, None)) == "image 6 · 10.0% · low"  # too few lesions: no rank
