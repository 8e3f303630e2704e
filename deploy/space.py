"""Create or update the Space on the Hugging Face Hub with huggingface_hub.HfApi, from a staged folder.

The calls are planned first (what --dry-run prints) and then made in order, so the dry run shows exactly
what a real run sends. Authentication problems become one line saying how to fix them.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .stage import REPO, DeployError

MODEL_VARIABLE = "MELANOMA_MODEL"  # app.py reads it: a local folder, a Hub repo id or repo@revision
TOKEN_HINT = ("log in with `hf auth login` (or `huggingface-cli login`) using a token with write access, or set "
              "HF_TOKEN to one (https://huggingface.co/settings/tokens)")


class AuthError(DeployError):
    """No token, or one the Hub refuses for this Space: the caller exits 2."""


@dataclass
class Call:
    """One HfApi method call; `only_if_set` marks the variable removal made only when the variable exists."""

    method: str
    kwargs: dict[str, Any]
    only_if_set: bool = False

    def __str__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        return f"HfApi.{self.method}({args})" + (f"  # only if {MODEL_VARIABLE} is set" if self.only_if_set else "")


@dataclass
class Deployed:
    """What a deploy produced: the Space's URL and the commit its files landed in."""

    url: str
    commit: str
    commit_url: str


def project_commit(repo: Path = REPO) -> str | None:
    """The checkout's commit, named in the Space's commit message (None outside a git clone)."""
    try:
        done = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=repo, capture_output=True, text=True,
                              timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None


def plan(repo_id: str, folder: Path, model: str | None, private: bool) -> list[Call]:
    """The HfApi calls that put `folder` on the Space `repo_id`; `model` is 'org/name@sha' or None (bundled)."""
    commit = project_commit()
    serves = model or "the bundled model (output/default)"
    calls = [
        Call("create_repo", dict(repo_id=repo_id, repo_type="space", space_sdk="gradio", private=private,
                                 exist_ok=True)),
        # delete_patterns="*": files the new stage no longer holds (say output/default after a switch to a Hub
        # model) are removed in the same commit, so the Space holds exactly the staged folder.
        Call("upload_folder", dict(repo_id=repo_id, repo_type="space", folder_path=str(folder), delete_patterns="*",
                                   commit_message=f"Deploy {'project ' + commit if commit else 'the app'}, "
                                                  f"serving {serves}")),
    ]
    if model:
        calls.append(Call("add_space_variable", dict(repo_id=repo_id, key=MODEL_VARIABLE, value=model,
                                                     description="The model this Space serves, pinned to a commit")))
    else:  # a variable left by an earlier Hub-model deploy would win over the bundled model
        calls.append(Call("delete_space_variable", dict(repo_id=repo_id, key=MODEL_VARIABLE), only_if_set=True))
    return calls


def run(api: Any, calls: list[Call]) -> Deployed:
    """Make the planned calls with `api` (a huggingface_hub.HfApi); 401/403 become AuthError, other Hub
    and network failures DeployError, each one line."""
    from httpx2 import TransportError  # huggingface_hub 2.4's HTTP client
    from huggingface_hub import get_token
    from huggingface_hub.errors import HfHubHTTPError

    repo_id = calls[0].kwargs["repo_id"]
    if not (api.token or get_token()):  # HF_TOKEN or the token saved by `hf auth login`
        raise AuthError(f"no Hugging Face token found: {TOKEN_HINT}")
    url, info = "", None
    try:
        for call in calls:
            if call.only_if_set and MODEL_VARIABLE not in api.get_space_variables(repo_id):
                continue
            result = getattr(api, call.method)(**call.kwargs)
            if call.method == "create_repo":
                url = str(result)
            elif call.method == "upload_folder":
                info = result
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        if status in (401, 403):
            raise AuthError(f"the Hub refused the token for spaces/{repo_id} (HTTP {status} in {call.method}): "
                            f"{TOKEN_HINT}; for an organisation's Space the token needs write access to it") from None
        reason = " ".join(str(err).split())[:300]
        raise DeployError(f"{call.method} failed for spaces/{repo_id}: {reason}") from None
    except ValueError as err:  # huggingface_hub's own checks, e.g. the Hub finding the README's YAML invalid
        raise DeployError(f"{call.method} failed for spaces/{repo_id}: {' '.join(str(err).split())[:300]}") from None
    except TransportError as err:
        raise DeployError(f"{call.method}: cannot reach {api.endpoint} ({type(err).__name__}: {err}); check the "
                          "network or HF_ENDPOINT") from None
    return Deployed(url=url, commit=info.oid, commit_url=info.commit_url)

