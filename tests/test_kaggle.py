"""The Kaggle side (issue 11): `notebooks/kaggle.py push` stages what a Kaggle user can push unchanged, the
notebook's own cells choose code, data and outcome deterministically, and `rehearse` runs the notebook end to
end (three papermill executions, 2 CPU processes, a fake Hub).

Fast tests first; `test_rehearsal_*` takes ~3 minutes here. Run with `python -m pytest -m kaggle`.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO

pytestmark = pytest.mark.kaggle

SCRIPT = REPO / "notebooks" / "kaggle.py"
NOTEBOOK = REPO / "notebooks" / "melanoma_train_kaggle.ipynb"
KAGGLE_CONFIG = REPO / "train" / "configs" / "kaggle_2xT4.yaml"

_spec = importlib.util.spec_from_file_location("kaggle_notebook", SCRIPT)
kg = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(kg)


def run_script(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=env or os.environ.copy())


def cell(tag: str) -> str:
    nb = json.loads(NOTEBOOK.read_text())
    found = [c for c in nb["cells"] if tag in c.get("metadata", {}).get("tags", [])]
    assert len(found) == 1, f"one notebook cell tagged {tag!r}"
    return "".join(found[0]["source"])


# --- push ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    stage = tmp_path_factory.mktemp("stage")
    done = run_script("push", "--username", "alice-k", "--dry-run", "--stage", str(stage))
    assert done.returncode == 0, done.stderr
    return stage, done.stdout


def test_dry_run_stages_the_code_dataset_with_code_and_no_data(dry_run):
    stage, _ = dry_run
    meta = json.loads((stage / "code-dataset" / "dataset-metadata.json").read_text())
    assert meta["id"] == "alice-k/melanoma-triage-code"
    assert 6 <= len(meta["title"]) <= 50 and 6 <= len(meta["id"].split("/")[1]) <= 50  # the kaggle CLI's rules
    assert len(meta["licenses"]) == 1 and 20 <= len(meta["subtitle"]) <= 80
    root = stage / "code-dataset" / "melanoma-triage"
    files = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
    for needed in ("train/__main__.py", "train/loop.py", "inference/__init__.py", "notebooks/kaggle.py",
                   "notebooks/melanoma_train_kaggle.ipynb", "train/configs/kaggle_2xT4.yaml", "bench/training.py",
                   "requirements.txt", "requirements-train.txt", "CODE_VERSION.json"):
        assert needed in files, needed
    assert not [f for f in files if f.startswith(("output/", "runs/", "input/")) or "/runs/" in f]
    assert not [f for f in files if f.lower().endswith(kg.DATA_SUFFIXES)]  # no images, DICOMs or weights
    assert sum((root / f).stat().st_size for f in files) < 3_000_000
    assert json.loads((root / "CODE_VERSION.json").read_text())["git_commit"]
    # only the metadata file and ONE folder at the top: the folder layout survives the zip upload
    assert sorted(p.name for p in (stage / "code-dataset").iterdir()) == ["dataset-metadata.json", "melanoma-triage"]


def test_dry_run_stages_a_kernel_with_the_right_ids_and_inputs(dry_run):
    stage, _ = dry_run
    text = (stage / "kernel" / "kernel-metadata.json").read_text()
    assert kg.PLACEHOLDER not in text
    meta = json.loads(text)
    assert meta["id"] == "alice-k/melanoma-triage-train-2xt4"
    assert re.sub(r"[^a-z0-9]+", "-", meta["title"].lower()).strip("-") == meta["id"].split("/")[1]
    side = kg.default_isic_side(yaml.safe_load(KAGGLE_CONFIG.read_text())["image_size"])
    assert meta["dataset_sources"] == ["alice-k/melanoma-triage-code", f"cdeotte/jpeg-melanoma-{side}x{side}",
                                       "kmader/skin-cancer-mnist-ham10000"]
    assert meta["competition_sources"] == []  # unused, and it needs its rules accepted
    assert meta["kernel_sources"] == []
    assert meta["machine_shape"] == "NvidiaTeslaT4" and meta["enable_gpu"] and meta["enable_internet"]
    staged = json.loads((stage / "kernel" / meta["code_file"]).read_text())
    assert staged["cells"] == json.loads(NOTEBOOK.read_text())["cells"]


def test_hf_repo_is_written_into_the_staged_notebooks_settings(tmp_path):
    done = run_script("push", "--username", "bob", "--hf-repo", "bob/melanoma-b3", "--dry-run", "--stage", str(tmp_path))
    assert done.returncode == 0, done.stderr
    nb = json.loads((tmp_path / "kernel" / "melanoma_train_kaggle.ipynb").read_text())
    settings = next(c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", []))
    assert 'HF_REPO = "bob/melanoma-b3"' in "".join(settings["source"])
    assert run_script("push", "--username", "bob", "--hf-repo", "not a repo", "--dry-run",
                      "--stage", str(tmp_path)).returncode == 2


def test_staged_metadata_passes_the_kaggle_clis_own_checks(dry_run, tmp_path):
    """The checks `kaggle kernels push` / `datasets create` make before they reach the network."""
    stage, _ = dry_run
    code = f"""
import json
from kaggle.api.kaggle_api_extended import KaggleApi
api = KaggleApi.__new__(KaggleApi)
kernel = json.load(open({str(stage / 'kernel' / 'kernel-metadata.json')!r}))
assert kernel["language"] in api.valid_push_language_types and kernel["kernel_type"] in api.valid_push_kernel_types
api.validate_kernel_string(kernel["id"])
for source in kernel["dataset_sources"]:
    api.validate_dataset_string(source)
dataset = json.load(open({str(stage / 'code-dataset' / 'dataset-metadata.json')!r}))
api.validate_dataset_string(dataset["id"])
assert KaggleApi.DATASET_METADATA_FILE == "dataset-metadata.json"
print("valid")
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_")}
    env.update(HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path / ".config"))  # importing kaggle writes config dirs
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0 and done.stdout.strip().endswith("valid"), done.stderr[-2000:]


def test_dry_run_prints_the_exact_kaggle_commands(dry_run):
    stage, out = dry_run
    assert re.search(rf"kaggle datasets create -p {re.escape(str(stage / 'code-dataset'))} --dir-mode zip$", out, re.M)
    assert re.search(rf"kaggle kernels push -p {re.escape(str(stage / 'kernel'))}$", out, re.M)


def test_resume_attaches_the_kernels_own_output(tmp_path):
    done = run_script("push", "--username", "bob", "--dry-run", "--resume", "--no-run", "--stage", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert re.search(r"kaggle kernels push -p \S+ --no-run$", done.stdout, re.M)
    meta = json.loads((tmp_path / "kernel" / "kernel-metadata.json").read_text())
    assert meta["kernel_sources"] == ["bob/melanoma-triage-train-2xt4"]


def test_code_files_are_what_git_would_commit_minus_runs_models_and_data(tmp_path):
    repo = tmp_path / "repo"
    for name, text in {"train/__main__.py": "", "inference/__init__.py": "", ".gitignore": "runs/\n",
                       "output/default/config.json": "{}", "docs/figure.png": "x", "runs/r/config.yaml": "a: 1",
                       "new_module.py": "", "gone.py": ""}.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run(git + ["init", "-q"], cwd=repo, check=True)
    subprocess.run(git + ["add", "train", "inference", ".gitignore", "output", "docs", "gone.py"], cwd=repo, check=True)
    subprocess.run(git + ["commit", "-qm", "x"], cwd=repo, check=True)
    (repo / "gone.py").unlink()
    assert kg.code_files(repo) == [".gitignore", "inference/__init__.py", "new_module.py", "train/__main__.py"]


def test_push_without_credentials_says_how_to_get_them_in_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_")}
    env.update(HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path / ".config"))
    done = run_script("push", "--username", "alice", "--stage", str(tmp_path / "stage"), env=env)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "kaggle.com/settings/api" in lines[0] and "access_token" in lines[0], done.stderr
    assert "Traceback" not in done.stderr


def test_credentials_are_found_where_kaggle_2_looks(tmp_path, monkeypatch):
    for key in [k for k in os.environ if k.startswith("KAGGLE_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / ".config"))
    assert kg.kaggle_credentials() is None
    (tmp_path / ".config" / "kaggle").mkdir(parents=True)
    (tmp_path / ".config" / "kaggle" / "kaggle.json").write_text('{"username": "a", "key": "k"}')
    assert kg.kaggle_credentials().endswith(".config/kaggle/kaggle.json")
    (tmp_path / ".kaggle").mkdir()
    (tmp_path / ".kaggle" / "access_token").write_text("KGAT_x\n")
    assert kg.kaggle_credentials().endswith(".kaggle/access_token")
    monkeypatch.setenv("KAGGLE_API_TOKEN", "KGAT_y")
    assert kg.kaggle_credentials() == "KAGGLE_API_TOKEN"


def test_bad_username_is_one_clear_line():
    done = run_script("push", "--username", "YOUR_KAGGLE_USERNAME", "--dry-run")
    assert done.returncode == 2 and done.stderr.startswith("error: --username") and "Traceback" not in done.stderr


# --- the notebook's choices ---------------------------------------------------------------------------------

def _isic_folder(folder: Path, data_dir: Path, images: str = "train") -> None:
    folder.mkdir(parents=True)
    (folder / "train.csv").write_text((data_dir / "isic2020" / "train.csv").read_text())
    (folder / images).parent.mkdir(parents=True, exist_ok=True)
    os.symlink(data_dir / "isic2020" / "train", folder / images)


def _competition(folder: Path, data_dir: Path, with_jpeg: bool) -> None:
    (folder / "train").mkdir(parents=True)
    (folder / "train.csv").write_text((data_dir / "isic2020" / "train.csv").read_text())
    for i in range(5):
        (folder / "train" / f"ISIC_{i:07d}.dcm").write_bytes(b"\0" * 128 + b"DICM")
    if with_jpeg:
        (folder / "jpeg").mkdir()
        os.symlink(data_dir / "isic2020" / "train", folder / "jpeg" / "train")


def test_data_choice_prefers_resized_jpegs_over_the_dicom_competition_folder(tmp_path, data_dir):
    # Kaggle's newer mounts put competitions/ before datasets/: a search that sorts paths, or trusts any
    # train/ folder, picks the competition, whose train/ holds DICOMs.
    root = tmp_path / "input"
    _competition(root / "competitions" / "siim-isic-melanoma-classification", data_dir, with_jpeg=True)
    _isic_folder(root / "datasets" / "cdeotte" / "jpeg-melanoma-512x512", data_dir)
    _isic_folder(root / "datasets" / "cdeotte" / "jpeg-melanoma-256x256", data_dir)
    chosen, lines = kg.choose_isic(root, 384)
    assert chosen == str(root / "datasets" / "cdeotte" / "jpeg-melanoma-512x512")  # smallest side >= 384
    assert lines[0].startswith(f"ISIC 2020: {chosen} (resized JPEG")
    assert any("not chosen" in line and "siim-isic" in line and "competition" in line for line in lines)
    assert kg.choose_isic(root, 256)[0] == str(root / "datasets" / "cdeotte" / "jpeg-melanoma-256x256")
    assert "kg.choose_isic(INPUT_ROOT, IMAGE_SIZE)" in cell("data")  # the notebook uses exactly this


def test_data_choice_skips_a_train_folder_of_dicoms_and_says_so(tmp_path, data_dir):
    root = tmp_path / "input"
    _competition(root / "siim-isic-melanoma-classification", data_dir, with_jpeg=False)
    with pytest.raises(SystemExit, match="cdeotte/jpeg-melanoma-384x384"):
        kg.choose_isic(root, 384)
    _isic_folder(root / "jpeg-melanoma-256x256", data_dir)
    chosen, lines = kg.choose_isic(root, 384)
    assert chosen == str(root / "jpeg-melanoma-256x256")
    assert any(line.startswith("  skipped:") and "DICOM" in line for line in lines)


def _run_cell(tag: str, namespace: dict) -> dict:
    exec(compile(cell(tag), f"<notebook cell {tag}>", "exec"), namespace)
    return namespace


def test_code_choice_the_code_dataset_wins_over_an_earlier_output(tmp_path, capsys):
    root = tmp_path / "input"
    staged = kg.stage_code("alice", tmp_path / "stage")
    # An earlier output sorts first by path, and holds code/ beside its runs/ and session.json.
    output = root / "a-melanoma-triage-train-2xt4"
    shutil.copytree(staged / "melanoma-triage", output / "code")
    (output / "runs").mkdir()
    (output / "session.json").write_text("{}")
    shutil.copytree(staged / "melanoma-triage", root / "melanoma-triage-code" / "melanoma-triage")
    working = tmp_path / "working"
    working.mkdir()
    ns = _run_cell("find-code", {"INPUT_ROOT": str(root), "WORKING": str(working)})
    out = capsys.readouterr().out
    assert ns["kind"] == 0 and ns["source"] == str(root / "melanoma-triage-code" / "melanoma-triage")
    assert f"code: {ns['source']} (the code dataset" in out and f"not used: {output / 'code'}" in out
    assert (working / "code" / "train" / "__main__.py").is_file() and (working / "session.json").is_file()
    assert ns["kg"].choose_isic  # the helpers were imported from the chosen code

    shutil.rmtree(root / "melanoma-triage-code")  # only the earlier output: its copy is used, and it says so
    (tmp_path / "w2").mkdir()
    ns = _run_cell("find-code", {"INPUT_ROOT": str(root), "WORKING": str(tmp_path / "w2")})
    assert ns["source"] == str(output / "code") and "an earlier output" in capsys.readouterr().out


def test_no_code_attached_says_how_to_push_it(tmp_path):
    (tmp_path / "input").mkdir()
    with pytest.raises(SystemExit, match=r"kaggle\.py push --username"):
        _run_cell("find-code", {"INPUT_ROOT": str(tmp_path / "input"), "WORKING": str(tmp_path)})


def test_previous_run_is_found_by_run_name(tmp_path):
    for name, folds in (("a", 2), ("b", 1)):
        run = tmp_path / "input" / f"out-{name}" / "runs" / "kaggle_2xT4"
        run.mkdir(parents=True)
        (run / "config.yaml").write_text("seed: 1\n")
        for f in range(folds):
            (run / f"fold{f}").mkdir()
            (run / f"fold{f}" / "DONE").write_text("ok\n")
    found, lines = kg.choose_previous_run(tmp_path / "input", "kaggle_2xT4")
    assert found == tmp_path / "input" / "out-a" / "runs" / "kaggle_2xT4"  # the most folds done
    assert kg.choose_previous_run(tmp_path / "input", "other")[0] is None


# --- outcome: status.json, never the launcher's exit code -----------------------------------------------------

def test_time_limit_is_read_from_status_json_not_the_exit_code(tmp_path):
    (tmp_path / "status.json").write_text(json.dumps({"status": "time_limit", "folds_done": [0], "model_dir": None}))
    status = kg.read_status(tmp_path)
    assert status["status"] == "time_limit" and status["folds_done"] == [0]
    assert "kg.read_status(RUN_DIR)" in cell("train")
    assert "returncode" not in cell("train").split("STATUS = ")[1].split("if STATUS")[0]


def test_status_running_after_the_launcher_ended_is_a_failure(tmp_path):
    assert kg.read_status(tmp_path)["status"] == "failed"  # no marker at all: training never started
    (tmp_path / "status.json").write_text(json.dumps({"status": "running", "folds_done": [], "model_dir": None}))
    assert kg.read_status(tmp_path)["status"] == "failed"  # a crash after the folder was claimed


# --- pins and the plan ------------------------------------------------------------------------------------------

def _requirements() -> dict[str, str]:
    pins = {}
    for name in ("requirements.txt", "requirements-train.txt"):
        for line in (REPO / name).read_text().splitlines():
            found = re.match(r"([A-Za-z0-9_.\-]+)==([^\s#]+)", line.strip())
            if found:
                pins[found.group(1).lower().replace("_", "-")] = found.group(2)
    return pins


def test_notebook_pins_every_library_that_decides_folds_or_training_as_the_requirements_do():
    tree = ast.parse(cell("pins"))
    pins = next(ast.literal_eval(node.value) for node in tree.body
                if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "PINS")
    required = {"scikit-learn", "pandas", "numpy", "albumentations", "timm", "accelerate", "huggingface-hub", "onnx",
                "onnxruntime"}
    normalised = {k.lower().replace("_", "-"): v for k, v in pins.items()}
    assert required <= set(normalised)
    reqs = _requirements()
    assert {k: v for k, v in normalised.items() if reqs.get(k) != v} == {}


def test_the_rehearsal_checks_installed_versions_against_the_pins():
    source = cell("pins")
    assert "if INSTALL:" in source and "raise SystemExit" in source.split("if INSTALL:")[1]


def test_kaggle_recipe_fits_one_session_on_paper():
    """The README's paper estimate, recomputed from the config: it must fit 11 h with >= 1.5 h to spare."""
    cfg = yaml.safe_load(KAGGLE_CONFIG.read_text())
    plan = float(re.search(r"PLAN_IMAGES_PER_S_PER_GPU = ([\d.]+)", cell("parameters")).group(1))
    images = 33_126 - 424 + 10_015  # ISIC 2020 less one of each known duplicate pair, + HAM10000 (README)
    train, val = images * (cfg["folds"] - 1) / cfg["folds"], images / cfg["folds"]
    hours = cfg["folds"] * cfg["epochs"] * (train / (2 * plan) + val / (2 * 3 * plan)) / 3600
    assert hours <= 11 - 1.5, f"{hours:.1f} h"


# --- the launcher and the smoke run ---------------------------------------------------------------------------

def test_cpu_launch_starts_two_real_processes(tmp_path):
    """`accelerate launch --cpu --num_processes 2` runs ONE process; the notebook's CPU launch must run two."""
    ns = _run_cell("launch", {"NUM_PROCESSES": 2, "CPU": True, "CODE": REPO, "ISIC_DIR": "x", "HAM_DIRS": [],
                              "WORKING": str(tmp_path), "os": os, "sys": sys, "Path": Path,
                              "subprocess": subprocess})
    assert "--cpu" not in ns["LAUNCH"] and ns["ENV"]["ACCELERATE_USE_CPU"] == "yes"
    probe = tmp_path / "probe.py"
    probe.write_text("from accelerate import Accelerator\na = Accelerator()  # as training builds it\n"
                     "print(f'rank {a.process_index} of {a.num_processes} backend {a.state.backend}', flush=True)\n")
    code, out = ns["run_logged"](ns["LAUNCH"] + [str(probe)], "probe.log")
    assert code == 0, out
    assert sorted(re.findall(r"rank (\d) of 2 backend gloo", out)) == ["0", "1"], out


def test_smoke_run_reports_per_process_rate_loader_wait_and_memory(tmp_path, data_dir):
    inp = kg.build_input_tree(tmp_path, data_dir, isic_benign=30, ham_per_dx=6)  # real rows, symlinked images
    isic, ham = inp / "jpeg-melanoma-256x256", inp / "skin-cancer-mnist-ham10000"
    env = {**os.environ, "ACCELERATE_USE_CPU": "yes", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    out = tmp_path / "smoke.json"
    done = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1",
                           "--num_processes", "2", "--multi_gpu", "--mixed_precision", "no", "--dynamo_backend", "no",
                           "bench/training.py", "--smoke", "--images", "64", "--json", str(out), "--device", "cpu",
                           "--config", str(KAGGLE_CONFIG), "--backbone", "test_efficientnet", "--image_size", "64",
                           "--batch_size", "8", "--num_workers", "1", "--mixed_precision", "no",
                           "--isic_dirs", f"[{isic}]", "--ham_dirs", f"[{ham}]"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["processes"] == 2 and sorted(r["rank"] for r in result["ranks"]) == [0, 1]
    for r in result["ranks"]:
        assert r["images_per_s"] > 0 and 0 <= r["loader_wait_share"] <= 1 and r["steps_timed"] >= 1
        assert r["peak_gpu_memory_gb"] is None  # CPU
    assert "| process | images/s per process | loader wait share of step time |" in done.stdout


def test_fake_hub_records_the_upload_through_the_real_push(tiny_model_dir, tmp_path):
    from train import publish

    model = tmp_path / "run" / "model"
    shutil.copytree(tiny_model_dir, model)
    (model / "README.md").write_text("card")
    (model / "metrics.json").write_text("{}")
    sha = publish.push(model, "org/name", "token", api=kg.RecordingHubApi(tmp_path / "record.json"))
    calls = json.loads((tmp_path / "record.json").read_text())["calls"]
    assert [c["call"] for c in calls] == ["create_repo", "upload_folder"]
    assert calls[1]["repo_id"] == "org/name" and calls[1]["oid"] == sha
    assert set(calls[1]["files"]) == {"config.json", "model.safetensors", "README.md", "metrics.json"}
    assert "Model from training run run" == calls[1]["commit_message"]


# --- the rehearsal ------------------------------------------------------------------------------------------

def test_rehearse_refuses_to_replace_a_folder_that_is_not_a_rehearsal(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    done = run_script("rehearse", "--out", str(tmp_path))
    assert done.returncode == 2 and "is not an earlier rehearsal folder" in done.stderr
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_rehearsal_runs_the_notebook_three_times_and_passes(tmp_path):
    out = tmp_path / "rehearsal"
    done = run_script("rehearse", "--out", str(out), timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert re.search(r"^rehearsal: passed in \d+ s", done.stdout, re.M), done.stdout[-2000:]
    assert "FAIL" not in done.stdout
    uploads = [c for c in json.loads((out / "hub-record.json").read_text())["calls"] if c["call"] == "upload_folder"]
    assert len(uploads) == 2 and all(kg.EXPECTED_UPLOAD <= set(u["files"]) for u in uploads)
    working = out / "kaggle" / "working"
    session = json.loads((working / "session.json").read_text())
    assert session["status"] == "complete" and session["pushed"] == uploads[1]["oid"]
    run2 = json.loads((out / "kaggle" / "input" / kg.KERNEL_SLUG / "session.json").read_text())
    assert run2["status"] == "time_limit" and run2["pushed"] is None
    # the ISIC images of the rehearsal are symlinks into the shared data, never copies
    assert (out / "kaggle" / "input" / "jpeg-melanoma-256x256" / "train").is_symlink()
