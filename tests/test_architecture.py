"""Dependencies point one way: app.py → inference ← train; serving (inference/, app.py) imports no torch."""

import ast
from pathlib import Path

from conftest import REPO

# torch, timm and torchvision too: the Space installs none of them (requirements.txt, test_requirements_split)
FORBIDDEN_IN_INFERENCE = {"train", "studies", "albumentations", "accelerate", "sklearn", "matplotlib", "torch", "timm",
                          "torchvision"}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_inference_imports_neither_train_nor_training_libraries():
    files = list((REPO / "inference").rglob("*.py"))
    assert files
    for path in files:
        assert not _imports(path) & FORBIDDEN_IN_INFERENCE, path


def test_app_imports_only_inference_from_the_project():
    """The Space's code is app.py and its app_*.py modules (deploy/stage.py ships exactly these): they import
    inference and each other, nothing else of the project."""
    from deploy.stage import CODE

    assert (REPO / "app.py").is_file(), "app.py moved: point this test at the Space's entry point"
    space = sorted(REPO.glob("app*.py"))
    assert {p.name for p in space} == {c for c in CODE if c.endswith(".py")}
    project = {p.stem for p in REPO.glob("*.py")} | {p.parent.name for p in REPO.glob("*/__init__.py")}
    assert _imports(REPO / "app.py") & project == {"inference", "app_patient", "app_requests"}
    for path in space:
        assert _imports(path) & project <= {"inference"} | {p.stem for p in space}, path
        assert not _imports(path) & FORBIDDEN_IN_INFERENCE, path


def _requirements(name: str) -> set[str]:
    lines = (REPO / name).read_text().splitlines()
    return {line.split("==")[0].strip().lower() for line in lines if line.strip() and not line.startswith(("#", "-r"))}


def test_requirements_split():
    """The Space's requirements.txt holds no torch; training's brings it."""
    space, training = _requirements("requirements.txt"), _requirements("requirements-train.txt")
    assert not space & {"torch", "torchvision", "timm", "triton"}
    assert {"torch", "torchvision", "timm"} <= training and "-r requirements.txt" in (REPO / "requirements-train.txt").read_text()


def test_nothing_loads_pickles_unsafely():
    # the project's own files: not the virtual environment, nor the scratch runs/ (a kept Kaggle-rehearsal
    # session there holds a whole site-packages)
    for path in REPO.rglob("*.py"):
        if {".venv", "runs"} & set(path.relative_to(REPO).parts):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "load" and \
                    getattr(node.func.value, "id", None) == "torch":
                assert any(k.arg == "weights_only" and getattr(k.value, "value", None) is True
                           for k in node.keywords), f"{path}:{node.lineno} torch.load without weights_only=True"


def test_importing_inference_pulls_in_no_training_library():
    import subprocess
    import sys

    code = ("import sys, inference, inference.batch, inference.hub\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            f"{sorted(FORBIDDEN_IN_INFERENCE)!r}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_public_name_of_inference_resolves():
    """`from inference import X` works for every name the package lists (a lazy map can name a moved class)."""
    import subprocess
    import sys

    code = "import inference\nfor name in inference.__all__: getattr(inference, name)\nprint(len(inference.__all__))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0 and int(out.stdout) >= 10, out.stderr[-2000:]


def test_a_training_run_imports_no_study():
    """train/ is what `python -m train` executes; the studies read its run folders and never the other way round."""
    for path in (REPO / "train").rglob("*.py"):
        assert "studies" not in _imports(path), path
    for path in (REPO / "studies").glob("*.py"):
        relative = {n.module for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ImportFrom) and n.level}
        assert relative <= {"ablate", "baselines", "crosscheck", "guard_eval", "loso", "soup", None}, (path, relative)


def test_files_and_functions_stay_small_outside_the_tests():
    """No .py file over 300 lines and no function over 50 outside tests/: one job per file, readable functions."""
    too_long = []
    for path in REPO.rglob("*.py"):
        if {".venv", "runs", "tests"} & set(path.relative_to(REPO).parts):
            continue
        text = path.read_text()
        if text.count("\n") > 300:
            too_long.append(f"{path.relative_to(REPO)}: {text.count(chr(10))} lines")
        too_long += [f"{path.relative_to(REPO)}: {node.name}() {node.end_lineno - node.lineno + 1} lines"
                     for node in ast.walk(ast.parse(text)) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                     and node.end_lineno - node.lineno + 1 > 50]
    assert too_long == []
