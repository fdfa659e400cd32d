"""Every daemon test ends with the chain's lineage and its learning-rate contract checked
(tests.helpers.assert_lineage, assert_lr_curve) on each run directory it left, unless it
is marked `lineage_broken` (it leaves a run damaged on purpose)."""

from __future__ import annotations

import json

import pytest

from runtime.lockfile import holder
from tests.helpers import assert_lineage, assert_lr_curve


def pytest_configure(config):
    config.addinivalue_line("markers", "lineage_broken: the test leaves a run directory damaged on purpose")


@pytest.fixture(autouse=True)
def lineage_holds(request, tmp_path):
    yield
    if request.node.get_closest_marker("lineage_broken") or getattr(request.node, "rep_call_failed", True):
        return
    for state in tmp_path.rglob("state.json"):
        run = state.parent
        if (run / "checkpoints").is_dir() and holder(run / "daemon.lock") is None and _a_chain(state):
            assert_lineage(run)
            assert_lr_curve(run)


def _a_chain(state) -> bool:
    """A state.json a daemon wrote (some tests write a few fields by hand)."""
    try:
        data = json.loads(state.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "parts" in data and "global_tokens" in data


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    if call.when == "call":
        item.rep_call_failed = outcome.get_result().failed
