import math

import numpy as np
import pytest

from inference import metadata as md


@pytest.mark.parametrize("site", md.SITES)
def test_every_site_encodes_to_its_own_indicator(site):
    vec = md.encode(md.normalize(site=site))
    assert vec[md.FEATURE_NAMES.index(f"site_{site}")] == 1
    assert vec[md.FEATURE_NAMES.index("site_unknown")] == 0
    assert sum(vec[i] for i, n in enumerate(md.FEATURE_NAMES) if n.startswith("site_")) == 1


@pytest.mark.parametrize("sex", [*md.SEXES, "unknown"])
def test_every_sex_encodes_to_its_own_indicator(sex):
    vec = md.encode(md.normalize(sex=sex))
    assert vec[md.FEATURE_NAMES.index(f"sex_{sex}")] == 1
    assert sum(vec[i] for i, n in enumerate(md.FEATURE_NAMES) if n.startswith("sex_")) == 1


def test_age_is_scaled_and_unknown_has_its_own_indicator():
    assert md.encode(md.normalize(age=45))[:2].tolist() == pytest.approx([0.45, 0.0])
    assert md.encode(md.normalize(age="0"))[:2].tolist() == [0.0, 0.0]
    assert md.encode(md.normalize(age=100.0))[:2].tolist() == [1.0, 0.0]
    unknown = md.encode(md.normalize())
    assert unknown[:2].tolist() == [0.0, 1.0]
    # age 0 and unknown age must differ: unknown is not imputed as a value
    assert not np.array_equal(unknown, md.encode(md.normalize(age=0)))


def test_all_blank_means_all_unknown():
    for blank in (None, "", "  ", "unknown", "Unknown", float("nan")):
        meta = md.normalize(blank, blank, blank)
        assert meta == md.Metadata(None, "unknown", "unknown")
    assert md.encode(md.Metadata()).tolist() == [
        1.0 if n in ("age_unknown", "sex_unknown", "site_unknown") else 0.0 for n in md.FEATURE_NAMES
    ]


@pytest.mark.parametrize(
    "raw, expected",
    [("Head/Neck", "head/neck"), (" head / neck ", "head/neck"), ("HEAD_NECK", "head/neck"),
     ("head and neck", "head/neck"), ("Lower Extremity", "lower extremity"), ("lower-extremity", "lower extremity"),
     ("palms/soles", "palms/soles"), ("Oral/Genital", "oral/genital"), ("trunk", "torso"), ("TORSO ", "torso")],
)
def test_site_spellings_are_forgiven(raw, expected):
    assert md.normalize_site(raw) == expected


@pytest.mark.parametrize("raw, expected", [("female ", "female"), ("MALE", "male"), ("F", "female"), ("m", "male")])
def test_sex_spellings_are_forgiven(raw, expected):
    assert md.normalize_sex(raw) == expected


@pytest.mark.parametrize(
    "field, value, fragment",
    [
        ("age", -1, "age: -1 is not allowed; expected a number of years from 0 to 100"),
        ("age", 150, "age: 150 is not allowed"),
        ("age", "abc", "age: 'abc' is not allowed"),
        ("age", "nan", "age: 'nan' is not allowed"),
        ("age", float("inf"), "age: inf is not allowed"),
        ("age", True, "age: True is not allowed"),
        ("age", [40], "age: [40] is not allowed"),
        ("sex", "x", "sex: 'x' is not allowed; expected one of male, female, unknown"),
        ("sex", 1, "sex: 1 is not allowed"),
        ("site", "elbow", "anatomical site: 'elbow' is not allowed; expected one of torso, lower extremity"),
        ("site", "x" * 10_000, "anatomical site: 'xxxxxxxx"),
        ("site", 3, "anatomical site: 3 is not allowed"),
    ],
)
def test_bad_values_raise_a_message_naming_field_value_and_allowed(field, value, fragment):
    with pytest.raises(ValueError) as err:
        md.normalize(**{field: value})
    assert fragment in str(err.value)
    assert len(str(err.value)) < 300  # a 10 000-character value is not echoed back whole


def test_nan_float_age_is_unknown_but_nan_string_is_an_error():
    assert md.normalize_age(math.nan) is None  # pandas' missing cell
    with pytest.raises(ValueError):
        md.normalize_age("NaN")
