"""README is the front door and docs/ the reference: short enough, links that resolve, commands that still work.

Every ```bash block in README.md and docs/*.md parses (`bash -n`); every `python -m MODULE` / `python FILE.py` in
them names a module or file of this repository, and every `--flag` it passes is one that command's `--help` lists.
The commands themselves are run where they are cheap elsewhere (the app, the tests, the benches, the studies).
"""

from __future__ import annotations

import itertools
import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
from conftest import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# Commands that take their arguments from a config file or another parser than argparse's --help lists.
NO_HELP = {"train"}  # `python -m train --help` lists every Config field: checked below through the Config itself


def bash_blocks(path: Path) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", path.read_text(), re.S)


def commands(block: str) -> list[list[str]]:
    """The block's `python ...` commands as argument lists (continuation lines joined, comments dropped)."""
    found = []
    for line in block.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line.replace("…", ""), posix=True, punctuation_chars=True)
        lexer.whitespace_split, lexer.commenters = True, "#"
        words: list[str] = []
        for token in [*lexer, ";"]:
            if token not in ("&&", "||", "|", ";", "&", "(", ")"):
                words.append(token)
                continue
            while words and "=" in words[0] and not words[0].startswith("-"):  # VAR=value prefixes
                words = words[1:]
            if words[:1] in (["python"], ["python3"]) and len(words) > 1:
                found.append(words[1:])
            words = []
    return found


@cache
def help_text(target: tuple[str, ...]) -> str:
    done = subprocess.run([sys.executable, *target, "--help"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (target, done.stderr[-2000:])
    return done.stdout


def test_readme_is_short_with_both_commands_on_its_first_screen():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 250
    first = "\n".join(lines[:60])
    assert "pip install -r requirements.txt && python app.py" in first
    assert "pip install -q -r requirements-dev.txt && python -m pytest" in first
    ci = (REPO / ".ci" / "run").read_text()
    assert "pip install -q -r requirements-dev.txt" in ci and "python -m pytest" in ci  # CI runs README's command


def test_links_between_readme_and_docs_resolve():
    for path in DOCS:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", path.read_text()):
            assert (path.parent / target).exists(), f"{path.name}: link to {target} does not resolve"
    linked = set(re.findall(r"\(docs/([\w.]+\.md)", (REPO / "README.md").read_text()))
    assert linked == {p.name for p in (REPO / "docs").glob("*.md")}, "every docs page is linked from README"


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_shell_blocks_parse_and_their_python_commands_exist_with_their_flags(path):
    from train.config import FIELDS

    for block in bash_blocks(path):
        parsed = subprocess.run(["bash", "-n"], input=block, capture_output=True, text=True)
        assert parsed.returncode == 0, (path.name, block, parsed.stderr)
        for words in commands(block):
            if words[0] == "-c":
                continue
            if words[0] == "-m":
                module, rest = words[1], words[2:]
                if not (REPO / module.split(".")[0]).is_dir():
                    continue  # venv, pip, pytest: not ours
                assert (REPO / module.replace(".", "/")).with_suffix(".py").is_file() or \
                    (REPO / module.replace(".", "/") / "__main__.py").is_file(), (path.name, module)
                target = ("-m", module)
            else:
                script, rest = words[0], words[1:]
                assert (REPO / script).is_file(), (path.name, script)
                target = (script,)
            flags = [w.split("=")[0] for w in rest if w.startswith("--")]
            if not flags:
                continue
            if target == ("-m", "train"):
                assert {f[2:] for f in flags} - {"config"} <= set(FIELDS), (path.name, words)
                continue
            sub = tuple(itertools.takewhile(lambda w: not w.startswith("-"), rest))  # `deploy space rehearse`
            shown = help_text(target + sub)
            assert all(f in shown for f in flags), (path.name, words, [f for f in flags if f not in shown])
