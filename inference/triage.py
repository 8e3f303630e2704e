"""Operating points: put a melanoma probability on the model's own validation scale.

Two lines, both measured on the model's validation images by `train.fit_guard` and stored in
`operating_points.json` beside the weights (never typed by hand):
* the *low* line: the highest threshold that still keeps 95 % of validation melanomas above it;
* the *high* line: the lowest threshold that keeps 90 % of validation non-melanomas below it.
Below the low line is band `low`, at or above the high line `high`, between them `intermediate`.
Each answer carries the band, the validation sensitivity/specificity of the line the score was last
compared with (low and intermediate: the low line; high: the high line) and both lines, so a page can
say "in validation, 95 % of melanomas scored above this line".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .layout import OPERATING_POINTS


def load_operating_points(folder: str | Path) -> dict[str, Any] | None:
    path = Path(folder) / OPERATING_POINTS
    if not path.is_file():
        return None
    points = json.loads(path.read_text())
    for line in ("low", "high"):
        if not {"threshold", "sensitivity", "specificity"} <= set(points.get(line, {})):
            raise ValueError(f"{path}: '{line}' needs threshold, sensitivity and specificity; "
                             "refit it with `python -m train.fit_guard`.")
    return points


def triage(melanoma_probability: float, points: dict[str, Any] | None) -> dict[str, Any] | None:
    """The band of one probability, with the validation sensitivity/specificity of its bounding line."""
    if points is None:
        return None
    low, high = points["low"], points["high"]
    if melanoma_probability >= high["threshold"]:
        band, line = "high", high
    elif melanoma_probability < low["threshold"]:
        band, line = "low", low
    else:
        band, line = "intermediate", low
    keys = ("threshold", "sensitivity", "specificity")
    return {"band": band, **{k: line[k] for k in keys},
            "lines": {name: {k: points[name][k] for k in keys} for name in ("low", "high")},
            "validation": points.get("validation", ""), "by_source": points.get("by_source", {})}


# Below this many validation melanomas a source's own share above a line is not a promise (one melanoma is
# 5 points of it): the page says the source had too few.
MIN_MELANOMAS = 20
SOURCE_NAMES = {"ham10000": "HAM10000", "isic2020": "ISIC 2020", "isic2017": "ISIC 2017", "isic2019": "ISIC 2019"}


def per_source(t: dict[str, Any], key: str) -> str:
    """'HAM10000 95, ISIC 2017 93; ISIC 2020 had too few melanomas (7) to say': one line's share per source."""
    said, few = [], []
    for source, f in t.get("by_source", {}).items():
        name = SOURCE_NAMES.get(source, source)
        if f["melanomas"] >= MIN_MELANOMAS and f[key] is not None:
            said.append(f"{name} {f[key] * 100:.0f}")
        else:
            few.append(f"{name} had too few melanomas ({f['melanomas']}) to say")
    return "; ".join(filter(None, [", ".join(said), *few]))


def describe(answer: dict[str, Any]) -> str:
    """The band in one plain sentence for the page (Markdown), counted per 100 validation lesions; the
    numbers come from the answer itself, and the page says which images they were measured on."""
    t = answer.get("triage")
    if t is None:
        return "This model has no validation operating points, so the number cannot be put on a scale."
    low, high = t["lines"]["low"], t["lines"]["high"]
    where = f" (measured on {t['validation']})" if t.get("validation") else ""
    key = "high_sensitivity" if t["band"] == "high" else "low_sensitivity"
    by_source = per_source(t, key)
    by_source = f" By source of the images, of 100 melanomas: {by_source}." if by_source else ""
    if t["band"] == "low":
        return (f"**Low**: of 100 melanomas in validation, {low['sensitivity'] * 100:.0f} scored higher than this"
                f"{where}. A low result does not rule melanoma out.{by_source}")
    if t["band"] == "high":
        return (f"**High**: of 100 melanomas in validation, {high['sensitivity'] * 100:.0f} scored this high or higher, "
                f"and {(1 - high['specificity']) * 100:.0f} of 100 other lesions did{where}.{by_source}")
    return (f"**Intermediate**: between the low line ({low['threshold']:.1%}), which {low['sensitivity'] * 100:.0f} of "
            f"100 melanomas in validation reached, and the high line ({high['threshold']:.1%}), which "
            f"{high['sensitivity'] * 100:.0f} of 100 reached{where}.{by_source}")
