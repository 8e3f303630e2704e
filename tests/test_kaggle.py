"""The Kaggle side: `python -m deploy kaggle push` stages what Kaggle accepts and says "pushed" only when it is;
the notebook's helpers (the kaggle_notebook package) choose code, data, what to install and the outcome
deterministically, in the mount layouts Kaggle has; `rehearse` runs the notebook end to end inside a
Kaggle-image environment (three papermill sessions, 2 CPU processes, a fake Hub).

Fast tests first; the rehearsal takes several minutes (more the first time: it builds the environment).
Run with `python -m pytest -m kaggle`.
"""

from __future__ import annotations

import ast
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
import yaml
from conftest import REPO

import kaggle_notebook as ks
from deploy import kaggle_env, kaggle_inputs, kaggle_push, kaggle_rehearse
from inference import layout

pytestmark = pytest.mark.kaggle

NOTEBOOK = REPO / "notebooks" / "melanoma_train_kaggle.ipynb"
KAGGLE_CONFIG = REPO / "train" / "configs" / "kaggle_2xT4.yaml"


def run_script(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deploy", "kaggle", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=env or os.environ.copy())


def cell(tag: str) -> str:
    nb = json.loads(NOTEBOOK.read_text())
    found = [c for c in nb["cells"] if tag in c.get("metadata", {}).get("tags", [])]
    assert len(found) == 1, f"one notebook cell tagged {tag!r}"
    return "".join(found[0]["source"])


# --- push: staging ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    stage = tmp_path_factory.mktemp("stage")
    done = run_script("push", "--username", "alice-k", "--dry-run", "--stage", str(stage))
    assert done.returncode == 0, done.stderr
    return stage, done.stdout


def test_dry_run_stages_the_code_as_one_zip_with_code_and_no_data(dry_run):
    stage, _ = dry_run
    meta = json.loads((stage / "code-dataset" / "dataset-metadata.json").read_text())
    assert meta["id"] == "alice-k/melanoma-triage-code"
    assert 6 <= len(meta["title"]) <= 50 and 6 <= len(meta["id"].split("/")[1]) <= 50  # the kaggle CLI's rules
    assert len(meta["licenses"]) == 1 and 20 <= len(meta["subtitle"]) <= 80
    assert sorted(p.name for p in (stage / "code-dataset").iterdir()) == ["dataset-metadata.json", kaggle_push.CODE_ZIP]
    with zipfile.ZipFile(stage / "code-dataset" / kaggle_push.CODE_ZIP) as archive:
        files = set(archive.namelist())
        version = json.loads(archive.read(ks.CODE_MARKER))
    for needed in ("train/__main__.py", "train/loop.py", "inference/__init__.py", "inference/layout.py",
                   "kaggle_notebook/__init__.py", "kaggle_notebook/run.py", "notebooks/melanoma_train_kaggle.ipynb",
                   "train/configs/kaggle_2xT4.yaml", "bench/training.py", "requirements.txt", "requirements-train.txt"):
        assert needed in files, needed
    assert not [f for f in files if f.startswith(("output/", "runs/", "input/")) or "/runs/" in f]
    assert not [f for f in files if f.lower().endswith(kaggle_push.DATA_SUFFIXES)]  # no images, DICOMs or weights
    assert (stage / "code-dataset" / kaggle_push.CODE_ZIP).stat().st_size < 3_000_000
    assert version["git_commit"]


def test_dry_run_stages_a_kernel_with_the_right_ids_and_inputs(dry_run):
    stage, _ = dry_run
    text = (stage / "kernel" / "kernel-metadata.json").read_text()
    assert kaggle_push.PLACEHOLDER not in text
    meta = json.loads(text)
    assert meta["id"] == "alice-k/melanoma-triage-train-2xt4"
    assert re.sub(r"[^a-z0-9]+", "-", meta["title"].lower()).strip("-") == meta["id"].split("/")[1]
    side = ks.default_isic_side(yaml.safe_load(KAGGLE_CONFIG.read_text())["image_size"])
    assert meta["dataset_sources"] == ["alice-k/melanoma-triage-code", f"cdeotte/jpeg-melanoma-{side}x{side}",
                                       "kmader/skin-cancer-mnist-ham10000", ks.ISIC2019_SLUG.format(side=side)]
    assert meta["competition_sources"] == []  # unused, and it needs its rules accepted
    assert meta["kernel_sources"] == [] and "docker_image_pinning_type" not in meta  # a first run: today's image
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


def test_resume_attaches_the_kernels_own_output_and_pins_its_image(tmp_path):
    """Item 7: a resumed session must run the image the saved state was written with."""
    done = run_script("push", "--username", "bob", "--dry-run", "--resume", "--no-run", "--stage", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert re.search(r"kaggle kernels push -p \S+ --no-run$", done.stdout, re.M)
    meta = json.loads((tmp_path / "kernel" / "kernel-metadata.json").read_text())
    assert meta["kernel_sources"] == ["bob/melanoma-triage-train-2xt4"]
    assert meta["docker_image_pinning_type"] == "original"


def test_staged_metadata_passes_the_kaggle_clis_own_checks(tmp_path):
    """The checks `kaggle kernels push` / `datasets create` make before they reach the network."""
    done = run_script("push", "--username", "alice-k", "--dry-run", "--resume", "--stage", str(tmp_path / "s"))
    assert done.returncode == 0, done.stderr
    stage = tmp_path / "s"
    code = f"""
import json
from kaggle.api.kaggle_api_extended import KaggleApi
api = KaggleApi.__new__(KaggleApi)
kernel = json.load(open({str(stage / 'kernel' / 'kernel-metadata.json')!r}))
assert kernel["language"] in api.valid_push_language_types and kernel["kernel_type"] in api.valid_push_kernel_types
assert kernel["docker_image_pinning_type"] in api.valid_push_pinning_types
api.validate_kernel_string(kernel["id"])
for source in kernel["dataset_sources"] + kernel["kernel_sources"]:
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
    assert re.search(rf"kaggle datasets create -p {re.escape(str(stage / 'code-dataset'))}$", out, re.M)
    assert re.search(rf"kaggle kernels push -p {re.escape(str(stage / 'kernel'))}$", out, re.M)


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
    assert kaggle_push.code_files(repo) == [".gitignore", "inference/__init__.py", "new_module.py", "train/__main__.py"]


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
    assert kaggle_push.kaggle_credentials() is None
    (tmp_path / ".config" / "kaggle").mkdir(parents=True)
    (tmp_path / ".config" / "kaggle" / "kaggle.json").write_text('{"username": "a", "key": "k"}')
    assert kaggle_push.kaggle_credentials().endswith(".config/kaggle/kaggle.json")
    (tmp_path / ".kaggle").mkdir()
    (tmp_path / ".kaggle" / "access_token").write_text("KGAT_x\n")
    assert kaggle_push.kaggle_credentials().endswith(".kaggle/access_token")
    monkeypatch.setenv("KAGGLE_API_TOKEN", "KGAT_y")
    assert kaggle_push.kaggle_credentials() == "KAGGLE_API_TOKEN"


def test_bad_username_is_one_clear_line():
    done = run_script("push", "--username", "YOUR_KAGGLE_USERNAME", "--dry-run")
    assert done.returncode == 2 and done.stderr.startswith("error: --username") and "Traceback" not in done.stderr


# --- push: honest about what Kaggle did (item 4) ----------------------------------------------------------------

FAKE_KAGGLE = """#!{python}
# Answers as kaggle 2.2.5 does (its own wording); logs every call. The dataset is processed after `ready_after`
# status calls; `kernels push` names it an invalid source if it was pushed before the dataset was ready.
import json, sys
from pathlib import Path
state_file = Path({state!r})
state = json.loads(state_file.read_text())
args = sys.argv[1:]
state["calls"].append(" ".join(args[:2]))
if args[:2] == ["datasets", "status"]:
    if state["version"] is None:
        state_file.write_text(json.dumps(state)); print("404 Client Error: Not Found"); sys.exit(1)
    state["polls"] += 1
    ready = state["polls"] > state["ready_after"]
    state["ready"] = ready
    print(json.dumps({{"status": "ready" if ready else "pending", "current_version_number": state["version"]}}))
elif args[:2] in (["datasets", "create"], ["datasets", "version"]):
    state["version"] = (state["version"] or 0) + 1
    state["ready"], state["polls"] = False, 0
    print("Dataset version is being created. Please check progress at https://www.kaggle.com/datasets/u/c")
elif args[:2] == ["kernels", "push"]:
    if not state["ready"]:
        print("The following are not valid dataset sources and could not be added to the kernel: ['u/c']")
    print("Kernel version 1 successfully pushed.  Please check progress at https://www.kaggle.com/code/u/k")
state_file.write_text(json.dumps(state))
"""


def fake_kaggle(tmp_path: Path, version: int | None, ready_after: int) -> tuple[str, Path]:
    state = tmp_path / "kaggle-state.json"
    state.write_text(json.dumps({"calls": [], "version": version, "ready": version is not None, "polls": 0,
                                 "ready_after": ready_after}))
    exe = tmp_path / "kaggle"
    exe.write_text(FAKE_KAGGLE.format(python=sys.executable, state=str(state)))
    exe.chmod(0o755)
    return str(exe), state


def test_push_waits_for_the_new_dataset_version_before_pushing_the_kernel(tmp_path, capsys):
    exe, state = fake_kaggle(tmp_path, version=3, ready_after=2)
    waits = []
    kaggle_push.push(exe, tmp_path, tmp_path, "u/c", "code abc", no_run=True, sleep=waits.append)
    calls = json.loads(state.read_text())["calls"]
    assert calls == ["datasets status", "datasets version", "datasets status", "datasets status", "datasets status",
                     "kernels push"]
    assert len(waits) == 2 and "version 4 is ready" in capsys.readouterr().out


def test_push_fails_in_one_line_when_the_cli_says_the_kernel_cannot_see_its_code(tmp_path, monkeypatch):
    """kaggle 2.2.5 prints "not valid dataset sources" and exits 0: the output decides, not the exit code."""
    exe, state = fake_kaggle(tmp_path, version=None, ready_after=0)
    monkeypatch.setattr(kaggle_push, "wait_until_ready", lambda *a, **k: 1)  # the old push: no wait
    with pytest.raises(kaggle_push.KaggleCliError) as err:
        kaggle_push.push(exe, tmp_path, tmp_path, "u/c", "code abc", no_run=False)
    message = str(err.value)
    assert "not valid dataset sources" in message and "push again" in message and "\n" not in message
    assert json.loads(state.read_text())["calls"][-1] == "kernels push"


def test_waiting_for_the_dataset_gives_up_with_what_to_do(tmp_path):
    exe, _ = fake_kaggle(tmp_path, version=1, ready_after=10**6)
    ticks = iter(range(0, 10**6, 100))
    with pytest.raises(kaggle_push.KaggleCliError, match="not ready after .* then push again"):
        kaggle_push.wait_until_ready(exe, "u/c", before=0, timeout=250, sleep=lambda s: None,
                                     clock=lambda: next(ticks))


# --- the notebook's choices: code, layouts, what to install ------------------------------------------------------

def unpack(code_zip: Path, dataset: Path, where: str) -> Path:
    """The zip `push` uploads, unpacked the two ways Kaggle has been seen to (item 6)."""
    target = dataset / Path(kaggle_push.CODE_ZIP).stem if where == "folder" else dataset
    with zipfile.ZipFile(code_zip) as archive:
        archive.extractall(target)
    return target


@pytest.fixture(scope="module")
def code_zip(tmp_path_factory) -> Path:
    return kaggle_push.stage_code("alice", tmp_path_factory.mktemp("code")) / kaggle_push.CODE_ZIP


@pytest.mark.parametrize("where", ["folder", "root"])
def test_the_code_dataset_wins_over_an_earlier_output_in_the_current_layout(tmp_path, code_zip, where):
    """Items 5 and 6: datasets/<owner>/<slug> and notebooks/<owner>/<slug>, the zip unpacked either way."""
    root = tmp_path / "input"
    output = root / "notebooks" / "alice" / "melanoma-triage-train-2xt4"  # an earlier output: code/ beside runs/
    unpack(code_zip, output, "root").rename(output.parent / "tmp")
    output.mkdir(parents=True)
    (output.parent / "tmp").rename(output / "code")
    (output / "runs").mkdir()
    (output / ks.SESSION_FILE).write_text("{}")
    dataset = unpack(code_zip, root / "datasets" / "alice" / "melanoma-triage-code", where)
    working = tmp_path / "working"
    working.mkdir()
    code, version, lines = ks.use_code(root, working)
    assert code == working / "code" and (code / "train" / "__main__.py").is_file() and version["git_commit"]
    assert lines[0].startswith(f"code: {dataset} (the code dataset") and f"not used: {output / 'code'}" in lines[1]

    shutil.rmtree(root / "datasets")  # only the earlier output: its copy is used, and it says so
    assert "an earlier output" in ks.use_code(root, working)[2][0]


def test_no_code_attached_says_how_to_push_it(tmp_path):
    (tmp_path / "input").mkdir()
    with pytest.raises(SystemExit, match=r"python -m deploy kaggle push --username"):
        ks.use_code(tmp_path / "input", tmp_path)


def test_no_search_finds_its_target_at_its_depth_limit_in_the_current_layout(tmp_path, code_zip):
    """Item 5: a previous run at notebooks/<owner>/<slug>/runs/<name> sat exactly at the old max_depth=5."""
    root = tmp_path / "input"
    run = root / "notebooks" / "alice" / "melanoma-triage-train-2xt4" / "runs" / "kaggle_2xT4"
    run.mkdir(parents=True)
    (run / layout.RUN_CONFIG).write_text("seed: 1\n")
    code = unpack(code_zip, root / "datasets" / "alice" / "melanoma-triage-code", "folder")
    isic = root / "datasets" / "cdeotte" / "jpeg-melanoma-384x384"
    isic.mkdir(parents=True)
    found, _ = ks.choose_previous_run(root, "kaggle_2xT4")
    assert found == run
    depths = {folder: depth for folder, depth in ks.walk_dirs(root)}
    assert max(depths[run], depths[code], depths[isic]) <= ks.SEARCH_DEPTH - 2  # room for one more level, and one


def test_previous_run_is_found_by_run_name(tmp_path):
    for name, folds in (("a", 2), ("b", 1)):
        run = tmp_path / "input" / f"out-{name}" / "runs" / "kaggle_2xT4"
        run.mkdir(parents=True)
        (run / layout.RUN_CONFIG).write_text("seed: 1\n")
        for f in range(folds):
            (run / f"fold{f}").mkdir()
            (run / f"fold{f}" / "DONE").write_text("ok\n")
    found, lines = ks.choose_previous_run(tmp_path / "input", "kaggle_2xT4")
    assert found == tmp_path / "input" / "out-a" / "runs" / "kaggle_2xT4"  # the most folds done
    assert ks.choose_previous_run(tmp_path / "input", "other")[0] is None


def test_the_notebook_installs_every_requirement_except_kaggles_torch_and_the_space_ui():
    """Item 1: one source of truth. requirements-train.txt (and the requirements.txt it includes) is what the
    notebook installs, less ks.NOT_INSTALLED."""
    wanted = ks.requirement_pins(REPO / "requirements-train.txt")
    assert "simplejpeg" in wanted and "accelerate" in wanted  # the -r include was followed
    assert ks.to_install(REPO) == {k: v for k, v in wanted.items() if k not in ks.NOT_INSTALLED}
    assert set(ks.NOT_INSTALLED) == {"torch", "torchvision", "gradio"}
    assert "ks.install(CODE, run_pip=INSTALL)" in cell("install")


def _third_party_imports(paths: list[Path]) -> dict[str, set[str]]:
    """Top-level module → the files importing it, for every import in the files (function-level ones too)."""
    first_party = {p.stem for p in REPO.glob("*.py")} | {p.parent.name for p in REPO.glob("*/__init__.py")} | {"bench"}
    found: dict[str, set[str]] = {}
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in first_party:
                    found.setdefault(top, set()).add(str(path.relative_to(REPO)))
    return found


def test_every_third_party_import_is_in_kaggles_image_or_installed_by_the_notebook():
    """Item 1: simplejpeg was imported by inference/image.py, absent from Kaggle and not installed."""
    available = kaggle_env.image_packages() | set(ks.to_install(REPO))
    distributions = packages_distributions()
    missing = {}
    kaggle_runs = [*(REPO / "train").rglob("*.py"), *(REPO / "inference").rglob("*.py"), REPO / "bench" / "training.py"]
    for module, files in _third_party_imports(kaggle_runs).items():
        names = {kaggle_env.normalise(d) for d in distributions.get(module, [])}
        assert names, f"{module} (imported by {sorted(files)}) is not installed here: add it to requirements*.txt"
        if not names & available:
            missing[module] = sorted(files)
    assert missing == {}, f"neither on Kaggle nor installed by the notebook: {missing}"


def test_the_rehearsal_environment_is_kaggles_versions_with_tensorflow_and_no_project_requirement():
    """Items 1 and 3: Kaggle's pins (tensorboard and tensorflow among them), nothing from requirements*.txt."""
    spec = kaggle_env.spec()
    pins = dict(r.split("==") for r in spec["requirements"] if "==" in r)
    assert spec["python"] == "3.12" and pins["torch"] == "2.10.0" and pins["torchvision"] == "0.25.0"
    assert pins["numpy"] == "2.0.2" and pins["tensorflow"] == "2.20.0" and pins["tensorboard"] == "2.20.0"
    assert "simplejpeg" not in " ".join(spec["requirements"] + spec["constraints"])  # not on Kaggle: not here
    assert kaggle_env.env_dir().parent == kaggle_env.CACHE and re.fullmatch(r"kaggle-env-[0-9a-f]{16}",
                                                                             kaggle_env.env_dir().name)


def test_the_notebooks_helpers_need_only_the_standard_library():
    """They run before anything is installed, and the rehearsal's driver runs in any Python."""
    code = ("import sys; sys.path.insert(0, '.')\n"
            "import kaggle_notebook, deploy.kaggle_cli, deploy.recording_hub\n"
            "print('ok' if 'deploy.kaggle_rehearse' in sys.modules else 'cli without the rehearsal')")
    done = subprocess.run([sys.executable, "-S", "-c", code], cwd=REPO, capture_output=True, text=True)  # -S: no
    assert done.stdout.strip() == "ok", done.stderr[-2000:]  # site-packages at all


def test_notebook_cells_are_a_few_calls_each():
    """Item 9: logic lives in the kaggle_notebook package, where tests import it."""
    nb = json.loads(NOTEBOOK.read_text())
    for c in nb["cells"]:
        if c["cell_type"] == "code":
            code = [line for line in "".join(c["source"]).splitlines() if line.strip() and not line.startswith("#")]
            assert len(code) <= 22, f"{c['metadata'].get('tags')}: {len(code)} lines of code"
            assert not [n for n in ast.walk(ast.parse("".join(c["source"]))) if isinstance(n, (ast.For, ast.While))] \
                or "parameters" in c["metadata"].get("tags", []) or "results" in c["metadata"].get("tags", [])


def test_run_and_model_folder_names_are_spelled_only_in_inference_layout():
    """Item 9: one module owns the layout; the others ask it."""
    names = [layout.STATUS, layout.RUN_CONFIG, layout.FOLDS, layout.ONNX, layout.WEIGHTS, layout.METRICS,
             layout.TRAINING_CONFIG, layout.LOGIT_PREFIX, *layout.PLOTS]
    spelled = []
    for path in [*(REPO / "train").rglob("*.py"), *(REPO / "kaggle_notebook").glob("*.py"), *(REPO / "deploy").glob("kaggle_*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                    any(node.value == n or node.value.startswith(layout.LOGIT_PREFIX) for n in names):
                spelled.append(f"{path.relative_to(REPO)}:{node.lineno} {node.value!r}")
    assert spelled == []


def test_files_in_train_stay_within_300_lines_and_configs_quote_no_measured_figures():
    assert {p.name: n for p in (REPO / "train").rglob("*.py") if (n := len(p.read_text().splitlines())) > 300} == {}
    for config in (REPO / "train" / "configs").glob("*.yaml"):
        assert not re.search(r"\d\s*(img|images)/s", config.read_text()), f"{config.name}: figures live in README"


def test_the_recipes_fold_comment_says_what_the_code_does():
    """Item 8: fold = tfrecord % 5 is the 1st place's "oldfold" option; their default mapped tfrecords to folds
    with a lookup table."""
    text = KAGGLE_CONFIG.read_text()
    comment = text.split("fold_source: tfrecord", 1)[1].split("train_folds")[0]
    assert "oldfold" in comment and "lookup table" in comment
    import pandas as pd

    from train.folds import assign_folds

    frame = pd.DataFrame({"image_id": [f"i{k}" for k in range(15)], "group": [f"p{k}" for k in range(15)],
                          "source": "isic2020", "label": "nv", "target": 0, "tfrecord": range(15)})
    assert assign_folds(frame, 5, 0, [], "tfrecord").tolist() == [k % 5 for k in range(15)]


# --- the data: ISIC 2020 and the ISIC 2019 set share a layout ----------------------------------------------------

ISIC2020_WORDS = ["unknown", "nevus", "melanoma", "unknown", "seborrheic keratosis"]
ISIC2019_WORDS = ["NV", "NV", "MEL", "BCC", "AK", "BKL", "SCC", "DF", "VASC"]


def jpeg_folder(folder: Path, diagnoses: list[str]) -> Path:
    """A folder in the jpeg-melanoma layout (cdeotte's ISIC 2020 and 2019 sets alike): the same columns, only the
    diagnosis words differ; train/ holds (empty) JPEG files, all the search looks at."""
    (folder / "train").mkdir(parents=True)
    lines = ["image_name,patient_id,sex,age_approx,anatom_site_general_challenge,diagnosis,benign_malignant,target,"
             "tfrecord,width,height"]
    for i, dx in enumerate(diagnoses):
        (folder / "train" / f"ISIC_{folder.name[:4]}{i}.jpg").write_bytes(b"")
        mel = int(dx.lower() in ("mel", "melanoma"))
        lines.append(f"ISIC_{folder.name[:4]}{i},-1,female,50.0,anterior torso,{dx},"
                     f"{'malignant' if mel else 'benign'},{mel},{i % 15},1022,767")
    (folder / "train.csv").write_text("\n".join(lines) + "\n")
    return folder


@pytest.mark.parametrize("isic2020_name, isic2019_name", [
    ("jpeg-melanoma-512x512", "jpeg-isic2019-384x384"),  # the 2019 set has the better size for 384 px
    ("jpeg-melanoma-384x384", "jpeg-isic2019-384x384"),  # the 2019 set's path sorts first
    ("jpeg-isic2019-384x384", "jpeg-melanoma-384x384"),  # names swapped: the contents decide
])
def test_the_isic2019_set_is_found_and_never_taken_for_isic2020(tmp_path, isic2020_name, isic2019_name):
    """Both sets have train.csv with image_name, patient_id, target and train/*.jpg: only the diagnosis
    vocabulary tells them apart (2019: MEL, NV, BCC, ...; 2020: words)."""
    root = tmp_path / "input"
    isic2020 = jpeg_folder(root / "datasets" / "cdeotte" / isic2020_name, ISIC2020_WORDS)
    isic2019 = jpeg_folder(root / "datasets" / "cdeotte" / isic2019_name, ISIC2019_WORDS)
    chosen, lines = ks.choose_isic(root, 384)
    assert chosen == str(isic2020)
    assert f"  skipped: {isic2019}: the ISIC 2019 set" in "\n".join(lines)
    found, lines = ks.choose_isic2019(root, 384)
    assert found == [str(isic2019)] and lines[0].startswith(f"ISIC 2019: {isic2019} (resized JPEG")


def test_the_isic2019_set_prefers_the_same_size_as_isic2020_and_is_optional(tmp_path):
    root = tmp_path / "input"
    isic2020 = jpeg_folder(root / "jpeg-melanoma-384x384", ISIC2020_WORDS)
    found, lines = ks.choose_isic2019(root, 384)
    assert found == [] and lines == ["ISIC 2019: not attached (training continues without it; add "
                                     "cdeotte/jpeg-isic2019-384x384 for the 1st place's external data)"]
    small = jpeg_folder(root / "jpeg-isic2019-256x256", [d.lower() for d in ISIC2019_WORDS])  # any case
    large = jpeg_folder(root / "jpeg-isic2019-512x512", ISIC2019_WORDS)
    found, lines = ks.choose_isic2019(root, 384)
    assert found == [str(large)] and lines[1] == f"  not chosen: {small} (resized JPEG (train/*.jpg))"
    assert ks.choose_isic(root, 384)[0] == str(isic2020)
    shutil.rmtree(isic2020)  # only the 2019 set: no ISIC 2020, and the error says the 2019 set is no substitute
    with pytest.raises(SystemExit, match=r"add the dataset cdeotte/jpeg-melanoma-384x384 .*does not replace it"):
        ks.choose_isic(root, 384)


def test_the_notebook_trains_on_the_isic2019_set_when_it_is_attached(tmp_path):
    """The data cell, run as it is, finds both sets and saves them in the session; the launch cell's data
    options pass the 2019 set to training beside ISIC 2020 (train/sources/jpeg_melanoma.py reads both)."""
    root = tmp_path / "input"
    isic2020 = jpeg_folder(root / "jpeg-melanoma-384x384", ISIC2020_WORDS)
    isic2019 = jpeg_folder(root / "jpeg-isic2019-384x384", ISIC2019_WORDS)
    (root / "ham").mkdir()
    (root / "ham" / "HAM10000_metadata.csv").write_text("lesion_id,image_id,dx,dx_type,age,sex,localization\n")
    scope = {"ks": ks, "CODE": REPO, "CONFIG": "train/configs/kaggle_2xT4.yaml", "OVERRIDES": {},
             "INPUT_ROOT": str(root), "SESSION": ks.Session(tmp_path)}
    exec(cell("data"), scope)
    options = [line for line in cell("launch").splitlines() if line.startswith("DATA_OPTIONS = ")]
    exec(options[0], scope)
    assert scope["DATA_OPTIONS"] == {"isic_dirs": [str(isic2020), str(isic2019)], "ham_dirs": [str(root / "ham")]}
    saved = json.loads((tmp_path / ks.SESSION_FILE).read_text())
    assert saved["isic_dir"] == str(isic2020) and saved["isic2019_dirs"] == [str(isic2019)]
    assert yaml.safe_load(KAGGLE_CONFIG.read_text())["isic_dirs"][1].endswith("/jpeg-isic2019-384x384")


def test_the_rehearsal_mocks_the_isic2019_set_from_isic2017_images(tmp_path, data_dir, code_zip):
    """cdeotte/jpeg-isic2019-384x384 in its layout: the 2019 abbreviations, patient_id -1, finer sites, tfrecords;
    images symlinked from the real ISIC 2017 training set; training's own reader takes it as isic2019."""
    from train.sources.jpeg_melanoma import load_jpeg_melanoma

    inp = kaggle_inputs.build_input_tree(tmp_path, "flat", code_zip, "root", data=data_dir, isic_benign=10,
                                           ham_per_dx=2)
    mock = kaggle_inputs.mount(inp, "dataset", "flat", *kaggle_inputs.ISIC2019)
    with open(mock / "train.csv", newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == ["image_name", "patient_id", "sex", "age_approx", "anatom_site_general_challenge",
                                 "diagnosis", "benign_malignant", "target", "tfrecord", "width", "height"]
    assert {r["patient_id"] for r in rows} == {"-1"} and {r["diagnosis"] for r in rows} == {"MEL", "NV", "BKL"}
    assert "anterior torso" in {r["anatom_site_general_challenge"] for r in rows}
    assert len(rows) == sum(kaggle_inputs.ISIC2019_ROWS.values())
    assert (mock / "train").resolve() == (data_dir / "isic2017" / "ISIC-2017_Training_Data").resolve()
    assert ks.choose_isic(inp, 64)[0] == str(kaggle_inputs.mount(inp, "dataset", "flat", *kaggle_inputs.ISIC))
    assert ks.choose_isic2019(inp, 64)[0] == [str(mock)]
    frame = load_jpeg_melanoma(mock)
    assert set(frame.source) == {"isic2019"} and len(frame) == len(rows)
    assert (frame.label == "mel").sum() == kaggle_inputs.ISIC2019_ROWS["MEL"] and set(frame.site) >= {"torso"}


# --- outcome: status.json, never the launcher's exit code -----------------------------------------------------

def test_time_limit_is_read_from_status_json_not_the_exit_code(tmp_path):
    (tmp_path / layout.STATUS).write_text(json.dumps({"status": "time_limit", "folds_done": [0], "model_dir": None}))
    status = ks.read_status(tmp_path)
    assert status["status"] == "time_limit" and status["folds_done"] == [0]
    assert "run again with this output attached" in ks.outcome_message(status, tmp_path, 1.0, 1, "", tmp_path)
    assert "STATUS = ks.read_status(RUN_DIR)" in cell("train")


def test_status_running_after_the_launcher_ended_is_a_failure(tmp_path):
    assert ks.read_status(tmp_path)["status"] == "failed"  # no marker at all: training never started
    (tmp_path / layout.STATUS).write_text(json.dumps({"status": "running", "folds_done": [], "model_dir": None}))
    status = ks.read_status(tmp_path)
    assert status["status"] == "failed"  # a crash after the folder was claimed
    with pytest.raises(SystemExit, match="error: bad image.*run folder .* is kept"):
        ks.outcome_message(status, tmp_path, 1.0, 1, "noise\nerror: bad image\n", tmp_path / "train.log")
    crash = ("Traceback (most recent call last):\n  File \"train/loop.py\", line 1\n"
             "[rank0]: RuntimeError: Connection closed by peer\nE1203 torch/distributed/elastic failed\n")
    with pytest.raises(SystemExit, match=r"\[rank0\]: RuntimeError: Connection closed by peer \(the traceback is above"):
        ks.outcome_message(status, tmp_path, 1.0, 1, crash, tmp_path / "train.log")


def test_kaggle_recipe_fits_one_session_on_paper():
    """The README's paper estimate, recomputed from the config: it must fit 11 h with >= 1.5 h to spare."""
    cfg = yaml.safe_load(KAGGLE_CONFIG.read_text())
    plan = float(re.search(r"PLAN_IMAGES_PER_S_PER_GPU = ([\d.]+)", cell("parameters")).group(1))
    images = 33_126 - 424 + 10_015  # ISIC 2020 less one of each known duplicate pair, + HAM10000 (README)
    images += 25_331 - 10_015  # + ISIC 2019's training set less its copies of HAM10000 (HAM's rows win)
    train, val = images * (cfg["folds"] - 1) / cfg["folds"], images / cfg["folds"]
    hours = cfg["folds"] * cfg["epochs"] * (train / (2 * plan) + val / (2 * 3 * plan)) / 3600
    assert hours <= 11 - 1.5, f"{hours:.1f} h"


# --- the launcher and the smoke run ---------------------------------------------------------------------------

def test_cpu_launch_starts_two_real_processes(tmp_path):
    """`accelerate launch --cpu --num_processes 2` runs ONE process; the notebook's CPU launch must run two."""
    launch, env = ks.launch_command(REPO, cpu=True, processes=2)
    assert "--cpu" not in launch and env["ACCELERATE_USE_CPU"] == "yes"
    probe = tmp_path / "probe.py"
    probe.write_text("from accelerate import Accelerator\na = Accelerator()  # as training builds it\n"
                     "print(f'rank {a.process_index} of {a.num_processes} backend {a.state.backend}', flush=True)\n")
    code, out = ks.run_logged(launch + [str(probe)], tmp_path / "probe.log", REPO, env)
    assert code == 0, out
    assert sorted(re.findall(r"rank (\d) of 2 backend gloo", out)) == ["0", "1"], out


def test_smoke_run_reports_per_process_rate_loader_wait_and_memory(tmp_path, data_dir, code_zip):
    inp = kaggle_inputs.build_input_tree(tmp_path, "current", code_zip, "folder", data=data_dir, isic_benign=30,
                                           ham_per_dx=6)  # real rows, symlinked images
    isic = kaggle_inputs.mount(inp, "dataset", "current", *kaggle_inputs.ISIC)
    ham = kaggle_inputs.mount(inp, "dataset", "current", *kaggle_inputs.HAM)
    launch, env = ks.launch_command(REPO, cpu=True, processes=2)
    out = tmp_path / "smoke.json"
    code, text = ks.run_logged(launch + ["bench/training.py", "--smoke", "--images", "64", "--json", str(out),
                                         "--device", "cpu", "--config", str(KAGGLE_CONFIG),
                                         *ks.options({**kaggle_rehearse.TINY, "isic_dirs": [isic], "ham_dirs": [ham]})],
                               tmp_path / "smoke.log", REPO, env)
    assert code == 0, text[-3000:]
    result = json.loads(out.read_text())
    assert result["processes"] == 2 and sorted(r["rank"] for r in result["ranks"]) == [0, 1]
    for r in result["ranks"]:
        assert r["images_per_s"] > 0 and 0 <= r["loader_wait_share"] <= 1 and r["steps_timed"] >= 1
        assert r["peak_gpu_memory_gb"] is None  # CPU
    assert "| process | images/s per process | loader wait share of step time |" in text
    assert ks.smoke_verdict(result, cpu=True, plan=0.0).startswith("smoke: ")
    with pytest.raises(SystemExit, match="far below the plan"):
        ks.smoke_verdict(result, cpu=True, plan=1e9)


def test_fake_hub_records_the_upload_through_the_real_push(tiny_model_dir, tmp_path):
    model = tmp_path / "run" / "model"
    shutil.copytree(tiny_model_dir, model)
    (model / layout.CARD).write_text("card")
    (model / layout.METRICS).write_text("{}")
    sha, line = ks.push_model(model, "org/name", "HF_TOKEN", fake_record=str(tmp_path / "record.json"))
    calls = json.loads((tmp_path / "record.json").read_text())["calls"]
    assert [c["call"] for c in calls] == ["create_repo", "upload_folder"]
    assert calls[1]["repo_id"] == "org/name" and calls[1]["oid"] == sha and sha in line
    assert set(calls[1]["files"]) == {p.name for p in model.iterdir()}  # the whole model folder, as it is
    assert {layout.CONFIG, layout.WEIGHTS, layout.ONNX, layout.CARD, layout.METRICS} <= set(calls[1]["files"])
    assert "Model from training run run" == calls[1]["commit_message"]


# --- the rehearsal ------------------------------------------------------------------------------------------

def test_rehearse_refuses_to_replace_a_folder_that_is_not_a_rehearsal(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    done = run_script("rehearse", "--out", str(tmp_path))
    assert done.returncode == 2 and "is not an earlier rehearsal folder" in done.stderr
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_rehearsal_runs_the_notebook_as_three_kaggle_sessions_in_kaggles_image_and_passes(tmp_path):
    out = tmp_path / "rehearsal"
    done = run_script("rehearse", "--out", str(out), timeout=2400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-9000:]
    assert re.search(r"^rehearsal: passed in \d+ s", done.stdout, re.M), done.stdout[-2000:]
    report = json.loads((out / "rehearsal.json").read_text())
    assert report["ok"] and not report["failures"] and all(c["ok"] for c in report["checks"])
    assert report["python"].startswith("3.12.") and report["torch"].startswith("2.10.")
    assert report["installed_by_notebook"]["simplejpeg"] == ks.to_install(REPO)["simplejpeg"]
    assert report["installed_by_notebook"] == ks.to_install(REPO)
    assert report["processes"] == 2 and report["code_delivery"] == "zip"
    assert set(report["layouts"]) == {"current", "flat"} and set(report["code_unpacked"]) == {"folder", "root"}
    assert [s["status"] for s in report["sessions"]] == ["complete", "time_limit", "complete"]
    # the ISIC 2019 mock was trained on: every one of its rows is in session 1's folds and class x source table
    assert report["trained_rows_by_source"]["isic2019"] == sum(kaggle_inputs.ISIC2019_ROWS.values())
    assert set(report["trained_rows_by_source"]) == {"isic2020", "ham10000", "isic2019"}
    folds = (out / "outputs" / "1-complete" / "runs" / "rehearsal-a" / layout.FOLDS).read_text()
    assert folds.count(",isic2019,") == sum(kaggle_inputs.ISIC2019_ROWS.values())
    text = kaggle_rehearse.notebook_text(out / "executed-1-complete.ipynb")
    assert re.search(r"^ISIC 2019: \S+/jpeg-isic2019-384x384 ", text, re.M)
    assert re.search(r"^source\s+ham10000\s+isic2019\s+isic2020\s*$", text, re.M)
    uploads = [c for c in json.loads((out / "hub-record.json").read_text())["calls"] if c["call"] == "upload_folder"]
    assert len(uploads) == 2 and all(kaggle_rehearse.EXPECTED_UPLOAD <= set(u["files"]) for u in uploads)
    # the ISIC images of the rehearsal are symlinks into the shared data, never copies
    assert (kaggle_inputs.mount(out / "kaggle" / "input", "dataset", "current", *kaggle_inputs.ISIC)
            / "train").is_symlink()
