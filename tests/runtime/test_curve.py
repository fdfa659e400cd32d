"""The learning-rate curve as data (runtime.curve): its shape, and how a moved end keeps it
continuous. The daemon's and the worker's uses are tested in tests/orchestrator/test_lr_contract.py."""

from __future__ import annotations

import pytest

from runtime.curve import CurvePlan, chain_curve, cooling, stage_curve, warmup_length
from runtime.spec import TrainConfig


def plan(end, cfg: TrainConfig, stage_end=None, stage_fraction=None) -> CurvePlan:
    fraction = cfg.decay_fraction if cfg.lr_schedule == "wsd" else None
    return CurvePlan(
        end=end, floor=cfg.min_lr_ratio, fraction=fraction, stage_end=stage_end, stage_fraction=stage_fraction
    )


def test_the_schedule_draws_warmup_stable_decay_over_the_chain():
    cfg = TrainConfig(warmup_tokens=1000, decay_fraction=0.2, min_lr_ratio=0.1)
    c = chain_curve(cfg, 10_000, 100)
    assert c.at(500) == pytest.approx(0.5)
    assert c.at(1000) == 1.0
    assert c.at(8000) == 1.0  # stable until the last 20%
    assert c.at(9000) == pytest.approx(0.55)
    assert c.at(10_000) == pytest.approx(0.1)
    assert c.at(20_000) == pytest.approx(0.1)
    assert [c.phase(t) for t in (500, 5000, 9000)] == ["warmup", "stable", "decay"]
    cos = chain_curve(TrainConfig(warmup_tokens=0, lr_schedule="cosine", min_lr_ratio=0.0), 10_000, 100)
    assert cos.at(5000) == pytest.approx(0.5)
    assert chain_curve(TrainConfig(lr_schedule="constant", warmup_tokens=0), 10_000, 100).at(9999) == 1.0


def test_default_warmup_is_sized_from_the_chain_and_the_step():
    step = 8 * 8 * 256
    assert warmup_length(None, 0.02, 1_000_000, 1024) == 20_000  # 2% of a 1M-token chain
    assert warmup_length(None, 0.02, 100_000, 1024) == 10 * 1024  # but never under 10 steps
    assert warmup_length(None, 0.02, 10_000_000_000, step) == 1000 * step  # nor over 1000 steps
    assert warmup_length(5, 0.02, 10**9, 1) == 5
    c = chain_curve(TrainConfig(), 1_000_000, 1024)
    assert c.at(10_000) == pytest.approx(0.5) and c.at(590_000) == 1.0


def test_an_end_moved_in_the_stable_phase_moves_the_decay_and_nothing_before_it():
    cfg = TrainConfig(warmup_tokens=1000, decay_fraction=0.2, min_lr_ratio=0.1)
    c = chain_curve(cfg, 10_000, 100)
    longer = c.moved(5000, plan(20_000, cfg))
    assert all(longer.at(t) == c.at(t) for t in range(0, 8001, 100))
    assert longer.at(16_000) == 1.0 and longer.at(18_000) == pytest.approx(0.55)
    assert longer.warmup == 1000  # the warmup never restarts
    assert c.moved(5000, plan(10_000, cfg)) == c  # the same end: the same curve


def test_an_end_moved_in_the_decay_goes_on_from_the_rate_where_it_is():
    cfg = TrainConfig(warmup_tokens=1000, decay_fraction=0.2, min_lr_ratio=0.1)
    c = chain_curve(cfg, 10_000, 100)
    now = 9000  # halfway down: 0.55
    longer = c.moved(now, plan(100_000, cfg))
    assert longer.at(now) == pytest.approx(0.55)  # no jump back to the peak
    assert longer.at(now + 100) < 0.55 and longer.at(now + 100) == pytest.approx(0.55 - 0.45 * 100 / 91_000)
    assert longer.at(100_000) == pytest.approx(0.1)
    shorter = c.moved(now, plan(9500, cfg))  # a removal: faster to the same floor, from where it is
    assert shorter.at(now) == pytest.approx(0.55) and shorter.at(9500) == pytest.approx(0.1)
    # once the stable phase is past, a shrunken plan starts the fall now, not in the past
    early = c.moved(7000, plan(7500, cfg))
    assert early.at(7000) == 1.0 and early.at(7500) == pytest.approx(0.1)


def test_a_stage_rewarms_and_redecays_and_its_end_moves_like_the_chains():
    cfg = TrainConfig(lr_schedule="constant", warmup_tokens=0, min_lr_ratio=0.1)
    c = chain_curve(cfg, 10_000, 64).model_copy(update={"stage": stage_curve("qa", 1000, 3000, 200, 0.5, 0.1)})
    assert [round(c.at(t), 6) for t in (1000, 1050, 1100, 1200, 2000, 2500, 3000, 3500)] == [
        0.0,
        0.25,
        0.5,
        1.0,
        1.0,
        0.55,
        0.1,
        0.1,
    ]
    assert [c.phase(t) for t in (1100, 1500, 2500)] == ["stage re-warm", "stable", "stage decay"]
    moved = c.moved(2500, plan(None, cfg, stage_end=5000, stage_fraction=0.5))
    assert moved.at(2500) == pytest.approx(0.55) and moved.at(5000) == pytest.approx(0.1)
    # only a re-warm, on top of the chain's own wsd decay: the factors multiply
    wsd = TrainConfig(warmup_tokens=0, decay_fraction=0.5)
    both = chain_curve(wsd, 10_000, 64).model_copy(update={"stage": stage_curve("qa", 8000, 10_000, 1000, 0.0, 0.0)})
    assert both.at(8500) == pytest.approx(0.3 * 0.5)


def test_a_release_cools_from_the_chains_rate_at_its_branch():
    c = cooling(5000, 1000, 0.6, 0.1)
    assert c.at(5000) == pytest.approx(0.6) and c.at(5500) == pytest.approx(0.35) and c.at(6000) == pytest.approx(0.1)
    assert cooling(5000, 1000, 0.05, 0.1).at(6000) == pytest.approx(0.05)  # never above where it starts
