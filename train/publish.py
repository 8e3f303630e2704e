"""Push the final model folder to the Hugging Face Hub as ONE commit and return its sha.

Called by `python -m train --push_to_hub` (main process only, after the run) and by the Kaggle
notebook's own push cell, after training has finished; a failed run never reaches it. The folder
is checked first: the files the Space needs are there and the weights are finite, so a broken
model can never become the commit the app pins.
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import HfApi

from inference.layout import CARD, CONFIG, METRICS, WEIGHTS

from .errors import PushError

REQUIRED = (CONFIG, WEIGHTS, CARD, METRICS)


def check_folder(folder: Path) -> None:
    missing = [name for name in REQUIRED if not (folder / name).is_file()]
    if missing:
        raise PushError(f"Not pushing {folder}: missing {', '.join(missing)}.")
    from .network import load_model

    from .checkpoint import assert_finite

    assert_finite(load_model(folder), "push")


def push(folder: Path, repo_id: str, token: str, private: bool = False, api=None) -> str:
    """Upload every file in `folder` in one commit; returns the commit sha to pin in the app.

    `api` is anything with HfApi's `create_repo` and `upload_folder` (default: `HfApi(token=token)`);
    the notebook's rehearsal passes a recorder that uploads nothing."""
    folder = Path(folder)
    check_folder(folder)
    api = HfApi(token=token) if api is None else api
    try:
        api.create_repo(repo_id, repo_type="model", exist_ok=True, private=private)
        info = api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=str(folder),
                                 commit_message=f"Model from training run {folder.parent.name}")
    except Exception as err:  # network, auth, quota: one message, the local folder stays as it is
        raise PushError(f"Push to {repo_id} failed ({err.__class__.__name__}: {err}); "
                        f"the model is in {folder}.") from None
    return info.oid
