"""For every test: no process it started outlives it. And the longest files start first.

Each test runs with its own tag in the environment (ORCHESTRATOR_TEST_TAG), which every
process it starts inherits: a daemon, its workers, torchrun and its ranks, a worker
orphaned by a killed daemon. After the test, passed or failed, whatever still carries the
tag is SIGKILLed, found by its environment rather than its parent, so that nothing escapes
by being reparented."""

from __future__ import annotations

import os
import uuid

import psutil
import pytest

TAG_ENV = "ORCHESTRATOR_TEST_TAG"

# The files that take longest, longest first (from `--durations`; the order matters more than
# the figures). Files run one per xdist worker (--dist loadfile) and are handed out in
# collection order (--no-loadscope-reorder: xdist's own order, by number of tests, started the
# one-test soak last, where it ran alone while the other workers idled). The suite is bound by
# its CPU time (mostly torch imports), so a long file begun late makes a tail no parallelism
# can shorten. A new long file belongs in this list; the rest keep their collection order.
LONGEST_FIRST = [
    "tests/trainer/test_worker.py",
    "tests/orchestrator/test_daemon.py",
    "tests/orchestrator/test_faults.py",
    "tests/trainer/test_distributed.py",
    "tests/orchestrator/test_eval.py",
    "tests/orchestrator/test_lineage.py",
    "tests/orchestrator/test_release.py",
    "tests/orchestrator/test_sample.py",
    "tests/orchestrator/test_lr_contract.py",
    "tests/orchestrator/test_lr_done_stages.py",
    "tests/orchestrator/test_release_paths.py",
    "tests/orchestrator/test_soak.py",
    "tests/orchestrator/test_export.py",
    "tests/orchestrator/test_lr_edits.py",
    "tests/orchestrator/test_data_changed.py",
    "tests/orchestrator/test_rundir.py",
    "tests/orchestrator/test_unit_loop.py",
    "tests/orchestrator/test_guard.py",
    "tests/orchestrator/test_beside.py",
    "tests/orchestrator/test_fsck_releases.py",
    "tests/orchestrator/test_lr_releases.py",
    "tests/orchestrator/test_multinode.py",
]


def pytest_collection_modifyitems(items):
    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))  # stable: the rest keep their order


@pytest.fixture(autouse=True)
def no_process_outlives_its_test(monkeypatch):
    tag = uuid.uuid4().hex
    monkeypatch.setenv(TAG_ENV, tag)
    yield
    left = tagged(tag)
    for proc in left:
        try:
            proc.kill()  # SIGKILL: a frozen (SIGSTOPped) process dies too
        except psutil.Error:
            pass
    psutil.wait_procs(left, timeout=30)


def tagged(tag: str) -> list[psutil.Process]:
    me = os.getpid()
    found = []
    for proc in psutil.process_iter():
        if proc.pid == me:
            continue
        try:
            if proc.environ().get(TAG_ENV) == tag:
                found.append(proc)
        except (psutil.Error, OSError):
            pass  # gone, a zombie, or not ours to read
    return found
