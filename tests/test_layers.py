"""The import contract: layers point one way, and the light parts stay light.

    runtime       stdlib and pydantic only: the file protocol both processes share
    model         runtime (and torch); never the trainer, the daemon or dataprep
    trainer       runtime and model; never orchestrator or dataprep
    dataprep      runtime (and numpy, sentencepiece); never orchestrator or trainer
    orchestrator  never torch, numpy, model or trainer at module level (a command that
                  needs them imports them inside the function that runs); of dataprep
                  only its public `dataprep.commands`

Checked on the source with ast, so a forbidden import fails here before it slows
`orchestrator status` down or ties the daemon to torch.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

PACKAGES = ("runtime", "model", "trainer", "dataprep", "orchestrator")
STDLIB = set(sys.stdlib_module_names)

# package -> (top-level names it may never import, anywhere; names it may not import at module level)
NEVER = {
    "runtime": {"model", "trainer", "dataprep", "orchestrator", "torch", "numpy"},
    "model": {"trainer", "dataprep", "orchestrator"},
    "trainer": {"orchestrator", "dataprep"},
    "dataprep": {"orchestrator", "trainer", "model", "torch"},
    "orchestrator": set(),
}
NOT_AT_MODULE_LEVEL = {
    "orchestrator": {"torch", "numpy", "model", "trainer", "sentencepiece", "matplotlib", "safetensors", "gguf"},
}
RUNTIME_THIRD_PARTY = {"pydantic"}


def imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, at module level) for every import in a file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                out.extend((alias.name, child.lineno, top) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                out.extend((f"{child.module}.{alias.name}", child.lineno, top) for alias in child.names)
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, False)
            elif isinstance(child, ast.If) and _is_type_checking(child):
                continue  # annotations only, never executed
            else:
                visit(child, top)

    visit(tree, True)
    return out


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def violations(package: str) -> list[str]:
    found = []
    for path in sorted((REPO / package).rglob("*.py")):
        rel = path.relative_to(REPO)
        for name, line, top in imports(path):
            head = name.split(".")[0]
            if head in NEVER[package]:
                found.append(f"{rel}:{line}: imports {name} ({package} never imports {head})")
            elif top and head in NOT_AT_MODULE_LEVEL.get(package, ()):
                found.append(f"{rel}:{line}: imports {name} at module level (import it inside the function)")
            elif package == "orchestrator" and head == "dataprep" and not name.startswith("dataprep.commands"):
                found.append(f"{rel}:{line}: imports {name} (only dataprep.commands is dataprep's interface)")
            elif package == "runtime" and head not in STDLIB and head not in RUNTIME_THIRD_PARTY | {"runtime"}:
                found.append(f"{rel}:{line}: imports {name} (runtime is stdlib and pydantic only)")
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_layers_point_one_way(package):
    assert violations(package) == []


def test_the_checker_catches_a_forbidden_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import torch\nfrom orchestrator.chain import plan\n\ndef f():\n    import numpy\n")
    found = imports(bad)
    assert ("torch", 1, True) in found and ("orchestrator.chain.plan", 2, True) in found
    assert ("numpy", 5, False) in found
