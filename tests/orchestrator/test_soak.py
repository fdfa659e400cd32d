"""A short soak in CI (tests/soak.py runs the long one on demand)."""

from __future__ import annotations

import pytest

from tests.helpers import assert_bitwise_equal
from tests.soak import soak

pytestmark = pytest.mark.slow


def test_a_short_soak_ends_exact(tmp_path):
    report = soak(tmp_path, kills=4, seed=3, parts=2, stages=1, log=lambda _: None)
    assert sum(report["kills"].values()) == 4  # paced by the chain's progress: all land, fast machine or slow
    assert report["promoted_once"] and report["tokens_equal"]
    for ours, theirs in report["pairs"]:
        assert_bitwise_equal(ours, theirs)
