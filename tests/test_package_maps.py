"""docs/architecture.md says each package's __init__.py maps its modules, and lists the
daemon loop's steps: both are checked against the code, so the map cannot drift."""

from __future__ import annotations

import ast
import inspect
import re

import pytest

from orchestrator.daemon import loop
from tests.helpers import REPO

PACKAGES = sorted(
    p.parent
    for top in ("runtime", "model", "trainer", "dataprep", "orchestrator")
    for p in (REPO / top).rglob("__init__.py")
    if "__pycache__" not in p.parts
)


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_package_docstring_maps_its_modules(package):
    doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text())) or ""
    # An entry is a name at a line's start (or after a wide gap, in two columns), then spaces.
    listed = set(re.findall(r"(?:^|\s{2,})(\w+)(?:/|\.py)? +", doc, re.M))
    modules = {p.stem for p in package.glob("*.py") if p.stem not in ("__init__", "__main__")}
    modules |= {p.name for p in package.iterdir() if (p / "__init__.py").exists()}
    assert sorted(modules - listed) == [], f"{package.name}/__init__.py does not map these modules"


def test_architecture_md_lists_the_loops_steps_in_order():
    tick = inspect.getsource(loop.Daemon.tick)
    steps = tick[tick.index("self.retry_after_fault()") :]  # the fault wait above only handles signals
    called = re.findall(r"self\.((?:handle_\w+|runner\.tell_plan|publish))\(\)", steps)
    text = (REPO / "docs" / "architecture.md").read_text()
    drawn = text[text.index("and dispatches:") :].split("(the running part")[0]
    assert re.findall(r"`([\w.]+)`", drawn) + ["publish"] == called
