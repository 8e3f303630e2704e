"""Where a model comes from: a local folder, a Hub repo id, or `repo_id@revision`.

Production pins a revision (a commit sha) so the Space serves exactly the weights that were
evaluated. With `HF_HUB_OFFLINE=1` the same call resolves from the local Hugging Face cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .layout import CONFIG, SERVED_FILES, WEIGHTS


@dataclass(frozen=True)
class ModelSource:
    """A resolved model: the local folder holding its files, and what to call it in answers."""

    folder: Path
    model_id: str
    revision: str | None


def parse_source(source: str, revision: str | None = None) -> tuple[str, str | None]:
    """'org/name@abc123' → ('org/name', 'abc123'); an explicit `revision` argument wins."""
    source = str(source).strip()
    if "@" in source and not Path(source).exists():
        source, _, pinned = source.rpartition("@")
        revision = revision or pinned or None
    return source, revision


def resolve(source: str | Path, revision: str | None = None) -> ModelSource:
    """Find the model files for `source`, downloading them (or reading the HF cache when offline)."""
    name, revision = parse_source(str(source), revision)
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / CONFIG).is_file() or not (path / WEIGHTS).is_file():
            raise FileNotFoundError(f"{path} is not a model folder: it needs {CONFIG} and {WEIGHTS}.")
        return ModelSource(folder=path.resolve(), model_id=str(path), revision=None)
    if name.count("/") != 1 or name.startswith((".", "/", "~")):
        raise FileNotFoundError(
            f"Model {name!r} is neither an existing folder nor a Hub repo id like 'org/name' (or 'org/name@revision')."
        )
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(repo_id=name, revision=revision, allow_patterns=list(SERVED_FILES)))
    except LocalEntryNotFoundError as err:
        raise FileNotFoundError(
            f"Model {name}@{revision or 'main'} is not in the local Hugging Face cache and the Hub "
            f"cannot be reached ({err.__class__.__name__}). Download it once online, or pass a local folder."
        ) from err
    except HfHubHTTPError as err:
        raise FileNotFoundError(f"Model {name}@{revision or 'main'} could not be fetched from the Hub: {err}") from err
    # Snapshot folders are named by commit sha: report the exact commit that answered.
    return ModelSource(folder=folder, model_id=name, revision=folder.name)
