"""What every reader of a data layout shares: reading a CSV with required columns, listing offending rows in
one error, normalising metadata through `inference.metadata.normalize` (so training sees exactly what the Space
will encode) and assembling the one row shape `train.data` works with."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from inference.metadata import Metadata, normalize

from ..errors import DataError

SHOW = 5  # how many offending rows an error message lists


def read_csv(path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"{path} does not exist.")
    try:
        frame = pd.read_csv(path, dtype={"image_name": str, "image_id": str, "patient_id": str, "lesion_id": str})
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
        raise DataError(f"{path} is not a readable CSV file ({err}).") from None
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataError(f"{path} is missing required column(s) {', '.join(missing)}; it has: "
                        f"{', '.join(map(str, frame.columns))}.")
    return frame


def listing(items: list[str], total: int, what: str) -> str:
    shown = "; ".join(items[:SHOW])
    more = f" (and {len(items) - SHOW} more)" if len(items) > SHOW else ""
    return f"{len(items)} of {total} {what}: {shown}{more}"


def metadata(frame: pd.DataFrame, csv: Path, age: str, sex: str, site: str, site_map: dict | None) -> list[Metadata]:
    """Normalise every row's metadata, collecting the bad rows into one error."""
    metas, bad = [], []
    for row_no, (a, s, loc) in enumerate(zip(frame[age], frame[sex], frame[site]), start=2):  # +header, 1-based
        try:
            if site_map is not None:
                word = "unknown" if pd.isna(loc) else str(loc).strip().lower()
                if word not in site_map:
                    raise ValueError(f"anatomical site: {loc!r} is not a HAM10000 localization we map "
                                     f"(known: {', '.join(site_map)})")
                loc = site_map[word]
            metas.append(normalize(age=a, sex=s, site=loc))
        except ValueError as err:
            bad.append(f"line {row_no}: {str(err).rstrip('.')}")
    if bad:
        raise DataError(f"{csv}: metadata outside the vocabulary in " + listing(bad, len(frame), "rows"))
    return metas


def assemble(frame: pd.DataFrame, source: str, ids: pd.Series, paths: list[str], groups: pd.Series,
              labels: list[str], metas: list[Metadata], tfrecord: pd.Series | None) -> pd.DataFrame:
    return pd.DataFrame({
        "image_id": ids.astype(str).to_numpy(),
        "source": source,
        "path": paths,
        "group": [f"{source}:{g}" for g in groups.astype(str)],
        "label": labels,
        "target": [int(lab == "mel") for lab in labels],
        "age": [meta.age for meta in metas], "sex": [meta.sex for meta in metas], "site": [meta.site for meta in metas],
        "tfrecord": tfrecord.to_numpy() if tfrecord is not None else -1,
    })


