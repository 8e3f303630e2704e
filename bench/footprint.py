"""The Space's footprint as a new user (and the Hugging Face builder) meets it: install, start, memory.

    python bench/footprint.py                      # stages the bundled Space, builds a fresh venv, measures
    python bench/footprint.py --json out.json      # also writes the headline figures

One run, in this order: stage exactly what `python -m deploy space --bundled` uploads; a fresh venv with the
front matter's Python and `pip install -r requirements.txt` from the stage alone (pip's own cache is used
as on any machine that installed these wheels before; `--no-cache` measures a cold download instead); its
size on disk; then, in turns (`--rounds`), `python -c "import gradio"` and `python app.py` → first HTTP 200
(cold start), from the staged folder; after the last start, one `/predict` through gradio_client on an
example and the server's resident memory (RSS). Also checks that `import app` leaves torch out of
sys.modules. Targets (issue 21) are printed beside the figures; docs/space.md ("Footprint") quotes a run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import psutil  # noqa: E402

from deploy.rehearse import Leg, app_env, build_venv, find_python, free_port, stop, wait_for_200  # noqa: E402
from deploy.stage import BUNDLED, front_matter, front_matter_value, stage  # noqa: E402



def environment(venv_python: Path, work: Path) -> tuple[int, dict[str, str]]:
    """(a free port, the app's environment as the rehearsal sets it): no Hub needed, the bundled model is local.
    `import gradio` runs in the same environment, so both read the same bytecode cache."""
    port = free_port()
    return port, app_env(port, work, Leg("bench", None, BUNDLED, None), "http://127.0.0.1:9", venv_python)


def python_seconds(venv_python: Path, code: str, cwd: Path, work: Path) -> float:
    """Wall seconds of `python -c code` in the venv, from the staged folder."""
    start = time.perf_counter()
    subprocess.run([str(venv_python), "-c", code], cwd=cwd, env=environment(venv_python, work)[1], check=True,
                   capture_output=True, timeout=300)
    return time.perf_counter() - start


def cold_start(venv_python: Path, stage_dir: Path, work: Path, request: bool) -> tuple[float, float | None]:
    """(seconds from `python app.py` to the first HTTP 200, RSS MB after one /predict or None)."""
    port, env = environment(venv_python, work)
    server = subprocess.Popen([str(venv_python), "app.py"], cwd=stage_dir, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        seconds = wait_for_200(f"http://127.0.0.1:{port}/", server, 240)
        rss = None
        if request:
            from gradio_client import Client, handle_file

            example = sorted((stage_dir / "examples").glob("*.jpg"))[0]
            Client(f"http://127.0.0.1:{port}/", verbose=False).predict(handle_file(str(example)), 50, "female",
                                                                        "torso", api_name="/predict")
            rss = psutil.Process(server.pid).memory_info().rss / 2**20
        return seconds, rss
    finally:
        stop(server)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="cold starts and gradio imports, in turns")
    parser.add_argument("--no-cache", action="store_true", help="pip --no-cache-dir: time a cold download")
    parser.add_argument("--json", type=Path, help="also write the headline figures to this JSON file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-space-") as tmp:
        work, stage_dir = Path(tmp), Path(tmp) / "stage"
        stage(stage_dir, None, bundled=True)
        version = front_matter_value(front_matter(stage_dir / "README.md"), "python_version") or "3.10"
        venv_python, pip_s, venv_mb = build_venv(stage_dir, work, find_python(version), no_cache=args.no_cache)
        code = "import json, sys, app; print(json.dumps([m for m in ('torch', 'timm', 'torchvision') if m in sys.modules]))"
        leaks = json.loads(subprocess.run([str(venv_python), "-c", code], cwd=stage_dir, capture_output=True, text=True,
                                          timeout=300, check=True).stdout.strip().splitlines()[-1])
        imports, starts, rss = [], [], None
        for i in range(args.rounds):
            imports.append(python_seconds(venv_python, "import gradio", stage_dir, work))
            seconds, measured = cold_start(venv_python, stage_dir, work, request=i == args.rounds - 1)
            starts.append(seconds)
            rss = measured if measured is not None else rss
    figures = {"python": version, "venv_mb": venv_mb, "pip_seconds": pip_s, "pip_cache": not args.no_cache,
               "import_gradio_s": statistics.median(imports), "cold_start_s": statistics.median(starts),
               "rss_after_request_mb": rss, "torch_modules_after_import_app": leaks}
    figures["cold_start_over_import_gradio_s"] = figures["cold_start_s"] - figures["import_gradio_s"]
    print(f"\nThe bundled Space, fresh venv (Python {version}), medians of {args.rounds} rounds")
    print("| what | measured | target |\n| --- | ---: | ---: |")
    rows = [("venv size, MB", "venv_mb", "≤ 1200"), ("pip install -r requirements.txt, s"
             + ("" if args.no_cache else " (pip cache warm)"), "pip_seconds", "≤ 90"),
            ("python -c 'import gradio', s", "import_gradio_s", ""),
            ("python app.py → first HTTP 200, s", "cold_start_s", ""),
            ("cold start − import gradio, s", "cold_start_over_import_gradio_s", "≤ 2"),
            ("server RSS after one /predict, MB", "rss_after_request_mb", "≤ 450")]
    for name, key, target in rows:
        print(f"| {name} | {figures[key]:.1f} | {target} |")
    print(f"| torch, timm, torchvision in sys.modules after `import app` | {leaks} | [] |")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
