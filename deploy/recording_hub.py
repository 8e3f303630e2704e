"""The Kaggle rehearsal's stand-in for huggingface_hub.HfApi: the notebook's push cell uploads through it when
FAKE_HUB_RECORD is set (`python -m deploy kaggle rehearse` sets it), so the rehearsal checks what would be pushed
without a network or a token. Standard library only: it runs inside the rehearsal's Kaggle-image environment."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace


class RecordingHubApi:
    """Stands in for huggingface_hub.HfApi in the rehearsal: records what would be uploaded, sends nothing."""

    def __init__(self, record: str | Path) -> None:
        self.record = Path(record)  # appended to: one file collects every session's calls
        self.calls: list[dict] = json.loads(self.record.read_text())["calls"] if self.record.is_file() else []

    def _save(self) -> None:
        self.record.parent.mkdir(parents=True, exist_ok=True)
        self.record.write_text(json.dumps({"calls": self.calls}, indent=1))

    def create_repo(self, repo_id: str, repo_type: str = "model", exist_ok: bool = False, private: bool = False,
                    **kwargs):
        self.calls.append({"call": "create_repo", "repo_id": repo_id, "repo_type": repo_type, "private": private})
        self._save()
        return SimpleNamespace(repo_id=repo_id)

    def upload_folder(self, *, repo_id: str, folder_path: str, repo_type: str = "model", commit_message: str = "",
                      **kwargs):
        folder = Path(folder_path)
        files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        digest = hashlib.sha1()
        for name in files:
            digest.update(name.encode() + (folder / name).read_bytes())
        oid = digest.hexdigest()
        self.calls.append({"call": "upload_folder", "repo_id": repo_id, "repo_type": repo_type,
                           "commit_message": commit_message, "files": files, "oid": oid})
        self._save()
        return SimpleNamespace(oid=oid, commit_url=f"fake://{repo_id}/commit/{oid}")
