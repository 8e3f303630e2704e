"""A local stand-in for the Hugging Face Hub's download endpoints, serving one model folder as one pinned
commit of one model repo, so huggingface_hub's own download and cache code can be run without the Hub.

What it answers (what `snapshot_download(repo_id, revision=<sha>, allow_patterns=...)` and
`hf_hub_download` in huggingface_hub 2.4 ask for):
- GET  /api/models/{repo}/tree/{sha}[/{path}]  the file listing (type, path, size, git blob oid, and an
       `lfs` entry for *.onnx / *.safetensors as the Hub's default .gitattributes makes them), one page;
- GET  /api/models/{repo}/revision/{sha}       model info with `sha` and `siblings` (repo_info);
- HEAD /{repo}/resolve/{sha}/{file}            X-Repo-Commit, ETag (sha256 for LFS files, the git blob
       sha1 otherwise, as the Hub does), Content-Length: the headers get_hf_file_metadata requires;
- GET  the same URL                            the bytes, honouring `Range: bytes=N-` (resumed downloads).
Anything else is a 404 carrying the Hub's X-Error-Code (RepoNotFound, RevisionNotFound, EntryNotFound),
which huggingface_hub turns into its own typed errors. Branch names (`main`) are not resolved: it serves
a pinned commit only, as production does.

Not covered: authentication and private or gated repos, redirects to a CDN (X-Linked-Etag/X-Linked-Size),
Xet storage (no X-Xet-Hash: files come as plain HTTP), pagination of large trees, and every write endpoint.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".onnx", ".safetensors")  # tracked by LFS in a new Hub repo's default .gitattributes
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class RepoFile:
    """One served file: where it lies, its size and the ids the Hub would give it."""

    path: Path
    size: int
    blob_oid: str  # git blob sha1 of the content
    sha256: str
    lfs: bool

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.blob_oid


def scan(folder: Path) -> dict[str, RepoFile]:
    """Every file under `folder` by its posix path relative to it, with its Hub ids."""
    files = {}
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        data = path.read_bytes()
        blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        files[path.relative_to(folder).as_posix()] = RepoFile(path, len(data), blob, hashlib.sha256(data).hexdigest(),
                                                              path.name.endswith(LFS_SUFFIXES))
    return files


def folder_sha(files: dict[str, RepoFile]) -> str:
    """A 40-hex commit id standing for this exact content (same files and bytes → same id)."""
    digest = hashlib.sha1()
    for name, f in sorted(files.items()):
        digest.update(f"{name}\0{f.blob_oid}\n".encode())
    return digest.hexdigest()


class HubStandin:
    """`with HubStandin(folder, "org/name") as hub:` serves `folder` as commit `hub.sha` of model repo
    org/name at `hub.endpoint` (set HF_ENDPOINT to it) until the block ends; `hub.requests` records
    (method, path) of every request."""

    def __init__(self, folder: Path, repo_id: str, sha: str | None = None) -> None:
        self.files = scan(folder)
        if not self.files:
            raise FileNotFoundError(f"{folder} holds no files to serve")
        self.repo_id, self.sha = repo_id, sha or folder_sha(self.files)
        self.requests: list[tuple[str, str]] = []
        self._server: ThreadingHTTPServer | None = None

    @property
    def endpoint(self) -> str:
        assert self._server is not None, "start the stand-in first (use it in a `with` block)"
        return f"http://{LOOPBACK}:{self._server.server_address[1]}"

    def __enter__(self) -> HubStandin:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as huggingface_hub's client expects of the Hub

            def do_HEAD(self) -> None:  # http.server's naming
                standin._answer(self, body=False)

            def do_GET(self) -> None:
                standin._answer(self, body=True)

            def log_message(self, *args) -> None:  # requests are recorded in `requests`, not printed
                pass

        self._server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="hub-standin", daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # --- answers ------------------------------------------------------------------------------------------
    def _answer(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        path = unquote(urlsplit(h.path).path)
        self.requests.append((h.command, path))
        repo = re.escape(self.repo_id)
        api = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(tree|revision)/([^/]+)(/.*)?", path)
        resolve = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        found = api or resolve
        if found is None:
            return self._error(h, 404, "RepoNotFound", f"no route {path}", body)
        if not re.fullmatch(repo, found.group(1)):
            return self._error(h, 404, "RepoNotFound", f"Repository {found.group(1)} not found", body)
        revision = found.group(3) if api else found.group(2)
        if revision != self.sha:
            return self._error(h, 404, "RevisionNotFound", f"Invalid rev id: {revision}", body)
        if api and api.group(2) == "tree":
            prefix = (api.group(4) or "").strip("/")
            listing = [{"type": "file", "oid": f.blob_oid, "size": f.size, "path": name,
                        **({"lfs": {"oid": f.sha256, "size": f.size, "pointerSize": 134}} if f.lfs else {})}
                       for name, f in self.files.items() if not prefix or name.startswith(prefix + "/")]
            return self._json(h, listing, body)
        if api:
            info = {"_id": self.sha[:24], "id": self.repo_id, "modelId": self.repo_id, "sha": self.sha,
                    "private": False, "disabled": False, "gated": False, "tags": [], "downloads": 0, "likes": 0,
                    "siblings": [{"rfilename": name} for name in self.files]}
            return self._json(h, info, body)
        name = resolve.group(3)
        if name not in self.files:
            return self._error(h, 404, "EntryNotFound", f"Entry not found: {name}", body)
        self._file(h, self.files[name], body)

    def _file(self, h: BaseHTTPRequestHandler, f: RepoFile, body: bool) -> None:
        start = 0
        ranged = re.fullmatch(r"bytes=(\d+)-", h.headers.get("Range", ""))
        if ranged and body:
            start = min(int(ranged.group(1)), f.size)
        h.send_response(206 if start else 200)
        h.send_header("X-Repo-Commit", self.sha)
        h.send_header("ETag", f'"{f.etag}"')
        h.send_header("Content-Length", str(f.size - start))
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Accept-Ranges", "bytes")
        if start:
            h.send_header("Content-Range", f"bytes {start}-{f.size - 1}/{f.size}")
        h.end_headers()
        if body:
            with open(f.path, "rb") as stream:
                stream.seek(start)
                while chunk := stream.read(1 << 20):
                    h.wfile.write(chunk)

    def _json(self, h: BaseHTTPRequestHandler, value: object, body: bool) -> None:
        data = json.dumps(value).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.send_header("X-Repo-Commit", self.sha)
        h.end_headers()
        if body:
            h.wfile.write(data)

    def _error(self, h: BaseHTTPRequestHandler, status: int, code: str, message: str, body: bool) -> None:
        data = json.dumps({"error": message}).encode()
        h.send_response(status)
        h.send_header("X-Error-Code", code)
        h.send_header("X-Error-Message", message)
        if code == "EntryNotFound":  # the Hub names the commit it looked in; huggingface_hub caches the miss
            h.send_header("X-Repo-Commit", self.sha)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if body:
            h.wfile.write(data)
