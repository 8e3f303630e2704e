"""Patient metadata: the fixed vocabulary, forgiving normalisation, and the encoding the model sees.

The vocabulary and the encoding are fixed in code, never fitted on data: a statistic fitted on the
training set (a mean age to impute, a one-hot column order) is one more thing that can leak test data
or drift between training and the Space. "Unknown" is a first-class value with its own indicator, so a
visitor who leaves a field blank is in-distribution (training blanks fields on purpose, see
`train.augment`), not silently given the training-set mean.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

SEXES: tuple[str, ...] = ("male", "female")
# The ISIC 2020 `anatom_site_general_challenge` vocabulary, in a fixed order.
SITES: tuple[str, ...] = (
    "torso",
    "lower extremity",
    "upper extremity",
    "head/neck",
    "palms/soles",
    "oral/genital",
)
UNKNOWN = "unknown"
AGE_RANGE = (0.0, 100.0)
ENCODING_VERSION = "isic2020-meta-v1"

# Obvious alternative spellings a person or another data set may use. Anything else is an error.
_SITE_ALIASES = {
    "head neck": "head/neck",
    "head and neck": "head/neck",
    "head & neck": "head/neck",
    "palms soles": "palms/soles",
    "palms and soles": "palms/soles",
    "palm/sole": "palms/soles",
    "oral genital": "oral/genital",
    "oral and genital": "oral/genital",
    "trunk": "torso",
    "lower extremities": "lower extremity",
    "upper extremities": "upper extremity",
    "lower limb": "lower extremity",
    "upper limb": "upper extremity",
}
_SEX_ALIASES = {"m": "male", "f": "female", "man": "male", "woman": "female"}
_BLANKS = {"", UNKNOWN, "none", "missing", "n/a", "na"}


@dataclass(frozen=True)
class Metadata:
    """One patient's normalised metadata. Fields are `None`/"unknown" when not given."""

    age: float | None = None
    sex: str = UNKNOWN
    site: str = UNKNOWN

    def as_dict(self) -> dict[str, Any]:
        return {"age": self.age, "sex": self.sex, "site": self.site}


def _canon(text: str) -> str:
    """Lower-case, trim, fold runs of spaces/underscores/hyphens around slashes to one form."""
    text = re.sub(r"[\s_\-]+", " ", text.strip().lower())
    return re.sub(r"\s*/\s*", "/", text)


def _is_blank(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):  # pandas' missing value
        return True
    return isinstance(value, str) and _canon(value) in _BLANKS


def _reject(field: str, value: Any, allowed: str) -> ValueError:
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "...'"
    return ValueError(f"{field}: {shown} is not allowed; expected {allowed}.")


def normalize_sex(value: Any) -> str:
    """'Female ', 'F', None → 'female', 'female', 'unknown'. Anything else raises ValueError."""
    allowed = "one of male, female, unknown (or blank)"
    if _is_blank(value):
        return UNKNOWN
    if not isinstance(value, str):
        raise _reject("sex", value, allowed)
    canon = _canon(value)
    canon = _SEX_ALIASES.get(canon, canon)
    if canon not in SEXES:
        raise _reject("sex", value, allowed)
    return canon


def normalize_site(value: Any) -> str:
    """'Head/Neck', 'head neck', None → 'head/neck', 'head/neck', 'unknown'; else ValueError."""
    allowed = "one of " + ", ".join(SITES) + ", unknown (or blank)"
    if _is_blank(value):
        return UNKNOWN
    if not isinstance(value, str):
        raise _reject("anatomical site", value, allowed)
    canon = _canon(value)
    canon = _SITE_ALIASES.get(canon.replace("/", " "), _SITE_ALIASES.get(canon, canon))
    if canon not in SITES:
        raise _reject("anatomical site", value, allowed)
    return canon


def normalize_age(value: Any) -> float | None:
    """Years 0–100 as int/float/numeric string; None, NaN or blank → None (unknown); else ValueError."""
    allowed = f"a number of years from {AGE_RANGE[0]:g} to {AGE_RANGE[1]:g}, or blank for unknown"
    if _is_blank(value):
        return None
    if isinstance(value, bool):  # bool is an int subclass: True must not mean 1 year
        raise _reject("age", value, allowed)
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise _reject("age", value, allowed) from None
    elif isinstance(value, (int, float)) or hasattr(value, "__float__"):
        number = float(value)
    else:
        raise _reject("age", value, allowed)
    if not math.isfinite(number) or not AGE_RANGE[0] <= number <= AGE_RANGE[1]:
        raise _reject("age", value, allowed)
    return number


def normalize(age: Any = None, sex: Any = None, site: Any = None) -> Metadata:
    """Validate and normalise one patient's metadata; raises ValueError naming the bad field."""
    return Metadata(age=normalize_age(age), sex=normalize_sex(sex), site=normalize_site(site))


# Layout of the encoded vector: [age/100, age unknown, male, female, sex unknown, sites..., site unknown]
FEATURE_NAMES: tuple[str, ...] = (
    ("age", "age_unknown")
    + tuple(f"sex_{s}" for s in (*SEXES, UNKNOWN))
    + tuple(f"site_{s}" for s in (*SITES, UNKNOWN))
)
META_DIM = len(FEATURE_NAMES)


def encode(meta: Metadata) -> np.ndarray:
    """Encode normalised metadata as a float32 vector of length META_DIM (see FEATURE_NAMES)."""
    vec = np.zeros(META_DIM, dtype=np.float32)
    if meta.age is None:
        vec[1] = 1.0
    else:
        vec[0] = meta.age / AGE_RANGE[1]
    vec[FEATURE_NAMES.index(f"sex_{meta.sex}")] = 1.0
    vec[FEATURE_NAMES.index(f"site_{meta.site}")] = 1.0
    return vec
