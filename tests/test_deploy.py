"""`python -m deploy`: what is staged for the Space, the HfApi calls it makes (the real huggingface_hub
client against a small fake Hub at the network edge), the local Hub stand-in, and the Space-build
rehearsal (marked `space`: a fresh venv, pip, `python app.py` twice)."""

from __future__ import annotations

import base64
import csv
import json
import os
import re
import subprocess
import sys
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from deploy.hub_standin import HubStandin, folder_sha
from deploy.rehearse import ANSWER_KEYS, OUT_OF_SCOPE_DX, Leg, check_answer, run_leg, same_answers
from deploy.stage import DeployError, front_matter, front_matter_models, front_matter_value, parse_model, stage
from inference.layout import SERVED_FILES

REPO = Path(__file__).resolve().parents[1]
SHA = "0123456789abcdef0123456789abcdef01234567"
MODEL = f"org/melanoma@{SHA}"


def git_files(*folders: str) -> set[str]:
    listed = subprocess.run(["git", "ls-files", *folders], cwd=REPO, capture_output=True, text=True, check=True)
    return set(listed.stdout.split())


def deploy_cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m deploy ...` in a subprocess, with a fresh HF_HOME (no saved token) unless `env` sets one."""
    return subprocess.run([sys.executable, "-m", "deploy", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def test_the_deploy_command_loads_neither_torch_nor_train_nor_the_app():
    """It runs from the Space's own environment (no torch) and imports gradio_client only to rehearse."""
    code = ("import sys, deploy.__main__\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'torch', 'train', 'gradio', 'gradio_client', 'onnxruntime', 'app'}))")
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout.strip() == "[]", run.stdout + run.stderr


# --- staging -------------------------------------------------------------------------------------------------

def test_bundled_stage_holds_the_app_inference_examples_and_the_served_model_files_only(tmp_path):
    files = set(stage(tmp_path / "s", None, bundled=True))
    served = {f"output/default/{name}" for name in SERVED_FILES if (REPO / "output/default" / name).is_file()}
    expected = {"app.py", "app_patient.py", "app_requests.py", "requirements.txt", "README.md"} | \
        git_files("inference", "examples") | served
    assert files == expected
    assert {"output/default/model.onnx", "output/default/config.json"} <= files
    assert not any(f.startswith(("tests/", "train/", "bench/", "notebooks/", "input/")) or f.endswith(".pyc")
                   for f in files)
    assert (tmp_path / "s/app.py").read_bytes() == (REPO / "app.py").read_bytes()


def test_hub_model_stage_has_no_model_and_links_the_model_in_the_front_matter(tmp_path):
    files = stage(tmp_path / "s", "org/melanoma", bundled=False)
    assert not any(f.startswith("output/") for f in files)
    readme = (tmp_path / "s/README.md").read_text()
    staged = front_matter(tmp_path / "s/README.md")
    assert staged == front_matter(REPO / "README.md") + ["models:", "- org/melanoma"]
    assert front_matter_models(staged) == ["org/melanoma"] and front_matter_value(staged, "python_version") == "3.11"
    assert "not a medical device" in readme and "https://huggingface.co/org/melanoma" in readme
    bundled = stage(tmp_path / "b", None, bundled=True, project_url="https://example.org/melanoma")
    assert "README.md" in bundled and front_matter_models(front_matter(tmp_path / "b/README.md")) == []
    assert "https://example.org/melanoma" in (tmp_path / "b/README.md").read_text()


def test_restaging_empties_an_earlier_stage_and_refuses_any_other_folder(tmp_path):
    stage(tmp_path / "s", None, bundled=True)
    stage(tmp_path / "s", "org/melanoma", bundled=False)
    assert not (tmp_path / "s/output").exists()
    (tmp_path / "other").mkdir()
    (tmp_path / "other/notes.txt").write_text("keep me")
    for dest in (tmp_path / "other", REPO, REPO.parent):
        with pytest.raises(DeployError, match="pass a new folder"):
            stage(dest, None, bundled=True)
    assert (tmp_path / "other/notes.txt").read_text() == "keep me" and (REPO / "app.py").is_file()


@pytest.mark.parametrize("model", ["org/melanoma", "org/melanoma@main", "org/melanoma@0123abc", "melanoma@" + SHA])
def test_a_model_not_pinned_to_a_commit_is_refused_in_one_line(model):
    with pytest.raises(DeployError, match="ORG/MODEL@SHA|pinned to a commit"):
        parse_model(model)
    run = deploy_cli("space", "--repo", "org/space", "--model", model, "--dry-run")
    assert run.returncode == 1 and "40" in one_line(run.stderr)


def test_model_or_bundled_is_required(tmp_path):
    run = deploy_cli("space", "--repo", "org/space", "--dry-run", "--stage", str(tmp_path / "s"))
    assert run.returncode == 1 and "--bundled" in one_line(run.stderr)
    assert parse_model(MODEL) == ("org/melanoma", SHA)


def test_dry_run_prints_the_calls_and_leaves_the_stage(tmp_path):
    folder = tmp_path / "stage"
    run = deploy_cli("space", "--repo", "org/space", "--model", MODEL, "--private", "--dry-run", "--stage", str(folder))
    assert run.returncode == 0, run.stderr
    calls = [line.strip() for line in run.stdout.splitlines() if line.strip().startswith("HfApi.")]
    assert calls[0] == ("HfApi.create_repo(repo_id='org/space', repo_type='space', space_sdk='gradio', private=True, "
                        "exist_ok=True)")
    assert calls[1].startswith(f"HfApi.upload_folder(repo_id='org/space', repo_type='space', "
                               f"folder_path='{folder}', delete_patterns='*', commit_message='Deploy ")
    assert calls[2].startswith(f"HfApi.add_space_variable(repo_id='org/space', key='MELANOMA_MODEL', value='{MODEL}'")
    assert len(calls) == 3 and (folder / "app.py").is_file() and not (folder / "output").exists()


# --- the upload path: the real HfApi against a fake Hub ---------------------------------------------------------

class FakeHub:
    """The Hub's write endpoints for one Space, over HTTP on 127.0.0.1: create, list, preupload (every file
    'regular'), commit (ndjson), validate-yaml and the Space variables. Token 'hf_write' may write;
    'hf_read' gets 403 on writes, no token 401. Records requests and commits."""

    def __init__(self, remote_files: tuple[str, ...] = (), variables: dict | None = None) -> None:
        self.remote_files, self.variables = set(remote_files), dict(variables or {})
        self.requests: list[tuple[str, str]] = []
        self.commits: list[list[dict]] = []

    def __enter__(self) -> FakeHub:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self):
                hub.answer(self)

            do_POST = do_DELETE = do_GET

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def answer(self, h: BaseHTTPRequestHandler) -> None:
        path = h.path.split("?")[0]
        body = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        self.requests.append((h.command, path))
        token = h.headers.get("Authorization", "").removeprefix("Bearer ")
        if (h.command, path) == ("POST", "/api/validate-yaml"):
            return self.send(h, 200, {"errors": [], "warnings": []})
        if h.command == "GET" and path == "/api/spaces/org/space":  # repo_info after a refused create
            return self.send(h, 404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
        if token != "hf_write":
            return self.send(h, 403 if token else 401, {"error": "You don't have the rights to write here"})
        if (h.command, path) == ("POST", "/api/repos/create"):
            request = json.loads(body)
            assert (request["type"], request["sdk"], request["name"]) == ("space", "gradio", "space")
            return self.send(h, 200, {"url": f"{self.endpoint}/spaces/org/space"})
        if path == "/api/spaces/org/space/tree/main":
            listing = [{"type": "file", "path": p, "size": 1, "oid": "0" * 40} for p in self.remote_files]
            return self.send(h, 200, listing)
        if path == "/api/spaces/org/space/preupload/main":
            files = json.loads(body)["files"]
            return self.send(h, 200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                                for f in files]})
        if path == "/api/spaces/org/space/commit/main":
            ops = [json.loads(line) for line in body.decode().splitlines()]
            self.commits.append(ops)
            for op in ops:
                if op["key"] == "file":
                    self.remote_files.add(op["value"]["path"])
                elif op["key"] == "deletedFile":
                    self.remote_files.discard(op["value"]["path"])
            oid = f"{len(self.commits):040x}"
            return self.send(h, 200, {"commitUrl": f"{self.endpoint}/spaces/org/space/commit/{oid}", "commitOid": oid})
        if path == "/api/spaces/org/space/variables":
            if h.command == "POST":
                request = json.loads(body)
                self.variables[request["key"]] = request["value"]
            elif h.command == "DELETE":
                self.variables.pop(json.loads(body)["key"], None)
            return self.send(h, 200, {k: {"value": v} for k, v in self.variables.items()})
        self.send(h, 404, {"error": f"no route {h.command} {path}"})

    @staticmethod
    def send(h: BaseHTTPRequestHandler, status: int, value, headers: dict | None = None) -> None:
        data = json.dumps(value).encode()
        h.send_response(status)
        for key, header in {"Content-Type": "application/json", "Content-Length": str(len(data)),
                            **(headers or {})}.items():
            h.send_header(key, header)
        h.end_headers()
        h.wfile.write(data)


def hub_env(hub: FakeHub, tmp_path: Path, token: str | None) -> dict:
    env = {"HF_ENDPOINT": hub.endpoint, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_DISABLE_TELEMETRY": "1"}
    env["HF_TOKEN"] = token or ""
    return env


def test_deploy_uploads_exactly_the_stage_sets_the_pinned_model_and_prints_url_and_commit(tmp_path):
    folder = tmp_path / "stage"
    with FakeHub(remote_files=("app.py", "output/default/model.onnx", ".gitattributes")) as hub:
        run = deploy_cli("space", "--repo", "org/space", "--model", MODEL, "--stage", str(folder),
                         env=hub_env(hub, tmp_path, "hf_write"))
        assert run.returncode == 0, run.stderr
        (commit,) = hub.commits
        added = {op["value"]["path"]: base64.b64decode(op["value"]["content"]) for op in commit if op["key"] == "file"}
        staged = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
        assert added == staged
        # the bundled model left by an earlier deploy goes in the same commit; .gitattributes stays
        assert [op["value"]["path"] for op in commit if op["key"] == "deletedFile"] == ["output/default/model.onnx"]
        assert hub.variables == {"MELANOMA_MODEL": MODEL}
        assert f"Space: {hub.endpoint}/spaces/org/space" in run.stdout and f"commit: {1:040x}" in run.stdout

        # back to the bundled model: the variable would override it, so it is removed
        (tmp_path / "tmp").mkdir()
        run = deploy_cli("space", "--repo", "org/space", "--bundled", env=hub_env(hub, tmp_path, "hf_write")
                         | {"TMPDIR": str(tmp_path / "tmp")})
        assert run.returncode == 0, run.stderr
        assert f"in {tmp_path / 'tmp'}/space-stage-" in run.stdout and not any((tmp_path / "tmp").iterdir())
        assert hub.variables == {} and "output/default/model.onnx" in hub.remote_files


@pytest.mark.parametrize("token, status", [(None, None), ("hf_read", 403)])
def test_missing_or_read_only_token_is_one_line_saying_what_to_do(token, status, tmp_path):
    with FakeHub() as hub:
        run = deploy_cli("space", "--repo", "org/space", "--model", MODEL, env=hub_env(hub, tmp_path, token))
    line = one_line(run.stderr)
    assert run.returncode == 2 and "hf auth login" in line and "HF_TOKEN" in line and "write" in line, line
    if status is None:  # nothing is sent without a token
        assert hub.requests == [] and "no Hugging Face token" in line
    else:
        assert f"HTTP {status}" in line and ("POST", "/api/repos/create") in hub.requests and hub.commits == []


# --- the Hub stand-in: huggingface_hub's own download code --------------------------------------------------------

def test_the_app_resolves_a_pinned_hub_model_through_the_standin(tmp_path):
    """inference.hub.resolve in a fresh process (HF_ENDPOINT is read at import): snapshot_download's real
    listing, HEAD and GET calls fill a fresh cache with byte-identical files under the pinned sha."""
    folder = REPO / "output/default"
    script = ("import json, sys; from inference.hub import resolve; s = resolve(sys.argv[1]); "
              "print(json.dumps([str(s.folder), s.model_id, s.revision]))")
    with HubStandin(folder, "org/melanoma") as hub:
        env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_HOME": str(tmp_path / "hf"),
               "HF_HUB_DISABLE_TELEMETRY": "1"}
        run = subprocess.run([sys.executable, "-c", script, f"org/melanoma@{hub.sha}"], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        local, model_id, revision = json.loads(run.stdout)
        assert (model_id, revision) == ("org/melanoma", hub.sha) and Path(local).is_relative_to(tmp_path / "hf")
        served = [name for name in SERVED_FILES if (folder / name).is_file()]
        assert sorted(p.name for p in Path(local).iterdir()) == sorted(served)
        assert all((Path(local) / n).read_bytes() == (folder / n).read_bytes() for n in served)
        assert ("GET", f"/api/models/org/melanoma/tree/{hub.sha}") in hub.requests
        assert {p for m, p in hub.requests if m == "GET" and "/resolve/" in p} == \
            {f"/org/melanoma/resolve/{hub.sha}/{n}" for n in served}

        wrong = subprocess.run([sys.executable, "-c", script, f"org/melanoma@{'f' * 40}"], cwd=REPO, env=env,
                               capture_output=True, text=True, timeout=120)
        assert wrong.returncode != 0 and "RevisionNotFound" in wrong.stderr
    assert hub.sha == folder_sha(hub.files) and re.fullmatch(r"[0-9a-f]{40}", hub.sha)


def test_standin_answers_model_info_and_resumed_downloads_and_names_missing_files(tmp_path):
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import RemoteEntryNotFoundError

    folder = REPO / "output/default"
    with HubStandin(folder, "org/melanoma") as hub:
        info = HfApi(endpoint=hub.endpoint).model_info("org/melanoma", revision=hub.sha)
        assert info.sha == hub.sha and {s.rfilename for s in info.siblings} == set(hub.files)
        request = urllib.request.Request(f"{hub.endpoint}/org/melanoma/resolve/{hub.sha}/config.json",
                                         headers={"Range": "bytes=10-"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 206 and response.read() == (folder / "config.json").read_bytes()[10:]
        with pytest.raises(RemoteEntryNotFoundError):
            hf_hub_download("org/melanoma", "no_such_file.json", revision=hub.sha, endpoint=hub.endpoint,
                            cache_dir=tmp_path)


# --- the rehearsal ------------------------------------------------------------------------------------------------

def test_a_leg_whose_app_dies_fails_with_the_apps_last_output(tmp_path):
    """run_leg on a stand-in app.py that exits at once (the interpreter running the tests as the venv's)."""
    folder = tmp_path / "stage"
    folder.mkdir()
    (folder / "app.py").write_text("import sys\nprint('cannot load a model')\nsys.exit(1)\n")
    leg = Leg("bundled", None, "output/default", None)
    with HubStandin(REPO / "output/default", "org/melanoma") as hub:
        run_leg(leg, folder, tmp_path / "work", Path(sys.executable), hub)
    assert leg.failures == ["bundled: python app.py exited with code 1 before answering"]
    assert leg.log_tail == ["cannot load a model"] and leg.answers == {} and leg.first_200_s is None


def test_legs_compare_equal_up_to_float_noise_only():
    answer = {"diagnosis": {"nv": 0.7, "mel": 0.3}, "in_distribution": True, "model_id": "output/default"}
    bundled, hub = Leg("bundled", None, "output/default", None), Leg("hub", MODEL, "org/melanoma", SHA)
    bundled.answers = {"a.jpg": answer, "b.jpg": answer, "c.jpg": answer}
    hub.answers = {"a.jpg": answer | {"model_id": "org/melanoma", "diagnosis": {"nv": 0.7 + 1e-9, "mel": 0.3}},
                   "b.jpg": answer | {"diagnosis": {"nv": 0.71, "mel": 0.29}},
                   "c.jpg": answer | {"diagnosis": {"mel": 0.3, "nv": 0.7}}}  # the order is part of the answer
    assert same_answers(bundled, hub) == ["hub b.jpg: answer differs from bundled",
                                          "hub c.jpg: answer differs from bundled"]


def test_rehearsal_checks_catch_wrong_answers():
    """check_answer against one good answer and the ways an answer can be wrong."""
    leg = Leg("hub", MODEL, "org/melanoma", SHA)
    cat, lesion = {"dx": OUT_OF_SCOPE_DX}, {"dx": "mel"}
    good = {key: None for key in ANSWER_KEYS} | {
        "melanoma_probability": 0.2, "malignant_probability": 0.3, "diagnosis": {"nv": 0.7, "mel": 0.2, "bcc": 0.1},
        "in_distribution": True, "model_id": "org/melanoma", "model_revision": SHA}
    assert check_answer(good, lesion, leg) == []
    wrong = {
        "refused": (good | {"in_distribution": False}, lesion),
        "accepted cat": (good, cat),
        "no guard": (good | {"in_distribution": None}, lesion),
        "out of range": (good | {"melanoma_probability": 1.2}, lesion),
        "sum": (good | {"diagnosis": {"nv": 0.7, "mel": 0.2}}, lesion),
        "revision": (good | {"model_revision": "main"}, lesion),
        "keys": ({k: v for k, v in good.items() if k != "triage"} | {"score": 1}, lesion),
    }
    for name, (answer, row) in wrong.items():
        assert len(check_answer(answer, row, leg)) == 1, name


@pytest.mark.space
def test_rehearsal_builds_and_serves_the_staged_space_bundled_and_from_the_hub(tmp_path):
    """The whole Space build both ways, and the answers equal the checkout's Predictor on the same examples."""
    folder, report_path = tmp_path / "stage", tmp_path / "report.json"
    assert deploy_cli("space", "--repo", "org/space", "--bundled", "--dry-run", "--stage", str(folder)).returncode == 0
    staged = sorted(p.relative_to(folder) for p in folder.rglob("*"))
    run = deploy_cli("space", "rehearse", "--stage", str(folder), "--report", str(report_path), timeout=1500)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == staged  # still what would be uploaded
    report = json.loads(report_path.read_text())
    assert report["failures"] == [] and set(report["legs"]) == {"bundled", "hub"}
    hub = report["legs"]["hub"]
    assert hub["model"] == f"rehearsal/melanoma-model@{report['hub_model']['sha']}" and hub["hub_requests"] > 0
    assert report["venv_mb"] > 0 and report["pip_s"] > 0
    assert all(leg["first_200_s"] > 0 for leg in report["legs"].values())

    from inference import Predictor

    predictor = Predictor.from_pretrained(str(REPO / "output/default"))
    with open(REPO / "examples/examples.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(hub["answers"]) == sorted(r["file"] for r in rows)
    for row in rows:
        here = predictor.predict(str(REPO / "examples" / row["file"]), float(row["age"]) if row["age"] else None,
                                 row["sex"] or None, row["site"] or None)
        for leg in report["legs"].values():
            answer = leg["answers"][row["file"]]
            assert answer["in_distribution"] == here["in_distribution"] == (row["dx"] != OUT_OF_SCOPE_DX)
            assert answer["melanoma_probability"] == pytest.approx(here["melanoma_probability"], abs=1e-6)
            assert answer["diagnosis"] == pytest.approx(here["diagnosis"], abs=1e-6)
