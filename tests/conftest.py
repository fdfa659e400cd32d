"""For every test: no process it started outlives it.

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
