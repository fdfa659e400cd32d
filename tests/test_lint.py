"""ruff's lint and format check (pyproject.toml's [tool.ruff]) on the whole tree: the lint
would have caught a test defined twice under one name, of which only the second ever ran."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import REPO


def ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ruff", *args], capture_output=True, text=True, cwd=REPO)


def test_ruff_finds_nothing():
    out = ruff("check", "--no-cache", ".")
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_tree_is_formatted():
    out = ruff("format", "--check", "--no-cache", ".")
    assert out.returncode == 0, "run `ruff format .`:\n" + out.stdout + out.stderr


def test_ruff_would_catch_a_test_defined_twice(tmp_path):
    twice = tmp_path / "test_twice.py"
    twice.write_text("def test_a():\n    pass\n\n\ndef test_a():\n    pass\n")
    out = ruff("check", "--no-cache", "--select", "F811", str(twice))
    assert out.returncode == 1 and "F811" in out.stdout
