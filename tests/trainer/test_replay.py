"""Replay and stage transitions: the mixture's order (deterministic by seed, weights honoured,
the ramp's shape), mixed batches of masked and unmasked windows, the stage's learning-rate
shape, the planned tokens, and a real worker killed mid-part resuming bitwise exactly."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from orchestrator.chain.plan import mixed_tokens
from runtime.atomic import read_json
from runtime.spec import DataRef, Mixture, ReplaySource
from runtime.workerfiles import EXIT_DONE, EXIT_ERROR
from tests.helpers import (
    assert_bitwise_equal,
    checkpoints_every,
    holding,
    make_instruction_dir,
    make_token_dir,
    result_checkpoint,
    run_worker,
    start_worker,
    wait_held,
    write_spec,
)
from trainer.data import IGNORE, WindowOrder
from trainer.mixture import MixedBatches, MixedOrder, Pool, shares
from trainer.tokenfile import open_part

REF = DataRef(manifest=Path("unused.json"), part="part-000")


def mixture(*weights: float, ramp: int = 0, stage_tokens: int = 0) -> Mixture:
    sources = [ReplaySource(name=f"s{i}", weight=w, parts=[REF]) for i, w in enumerate(weights)]
    return Mixture(sources=sources, ramp_tokens=ramp, ramp_from="s0" if ramp else None, stage_tokens=stage_tokens)


def order(mix: Mixture, windows: int = 4000, seed: int = 1, part: str = "domain/part-000") -> MixedOrder:
    return MixedOrder(WindowOrder(windows, 1, seed, part), "domain", mix, [windows, 500, 300], block_size=16)


def test_the_interleaving_is_deterministic_by_seed_and_honours_the_weights():
    mix = mixture(0.1, 0.25)
    a, b = order(mix), order(mix)
    assert np.array_equal(a.source, b.source) and a.total == b.total
    assert not np.array_equal(order(mix, seed=2).source[:1000], a.source[:1000])
    assert not np.array_equal(order(mix, part="domain/part-001").source[:1000], a.source[:1000])
    counts = a.positions(a.total)
    assert counts["domain"] == 4000  # the part ends with its own last window
    n = a.total
    for name, w in (("s0", 0.1), ("s1", 0.25)):
        tolerance = 4 * np.sqrt(n * w * (1 - w))  # binomial draws: 4 standard deviations
        assert abs(counts[name] - w * n) < tolerance, (name, counts[name], w * n)
    # Taken in any cut (steps of another size, a resume at any cursor) the rows are the same.
    whole, end = a.take(0, n)
    assert end == n and whole.shape == (n, 2)
    pieces, cursor = [], 0
    for size in [7, 64, 1, 333] * 100:
        rows, cursor = b.take(cursor, size)
        pieces.append(rows)
    assert np.array_equal(np.concatenate(pieces), whole)
    own = whole[whole[:, 0] == 0, 1]
    assert sorted(own.tolist()) == list(range(4000))  # every own window once, in its WindowOrder
    assert np.array_equal(own, WindowOrder(4000, 1, 1, "domain/part-000").at(np.arange(4000)))
    replayed = whole[whole[:, 0] == 2, 1]
    assert replayed.min() >= 0 and replayed.max() < 300 and len(set(replayed.tolist())) > 200  # spread over the pool
    assert a.positions(1000) == {k: int(np.count_nonzero(whole[:1000, 0] == i)) for i, k in enumerate(counts)}


def test_skipped_slots_consume_their_windows():
    a = order(mixture(0.2))
    b = MixedOrder(
        WindowOrder(4000, 1, 1, "domain/part-000"), "domain", mixture(0.2), [4000, 500, 300], 16, skip=[(100, 110)]
    )
    rows_a, _ = a.take(0, 200)
    rows_b, end = b.take(0, 190)
    assert end == 200 and np.array_equal(np.delete(rows_a, range(100, 110), axis=0), rows_b)
    assert b.usable() == a.total - 10 and not b.covers(0, 200, 105) and b.covers(0, 200, 99)


def test_the_ramp_rises_linearly_from_the_previous_stage():
    mix = mixture(0.1, ramp=1600)  # 100 windows of 16 tokens
    s = shares(mix, np.array([0, 25, 50, 100, 500]), block_size=16)
    assert np.allclose(s.sum(axis=1), 1)
    assert np.allclose(s[:, 0], [0, 0.9 * 0.25, 0.9 * 0.5, 0.9, 0.9])  # the stage's own share
    assert np.allclose(s[:, 1], [1, 0.1 + 0.9 * 0.75, 0.1 + 0.9 * 0.5, 0.1, 0.1])  # the previous stage fills the rest
    # a later part of the stage is further up the ramp: where the stage's tokens say
    later = shares(mixture(0.1, ramp=1600, stage_tokens=800), np.array([0, 50]), block_size=16)
    assert np.allclose(later[:, 0], [0.45, 0.9])
    # drawn: the own share in successive stretches of slots climbs along the line
    o = order(mixture(0.1, ramp=16 * 2000), windows=3000)
    own = (o.source == 0).reshape(-1)[:2000].reshape(10, 200).mean(axis=1)
    expected = 0.9 * (np.arange(10) * 200 + 100) / 2000
    assert np.all(np.abs(own - expected) < 0.12), own


def test_planned_tokens_match_what_the_worker_draws():
    """The daemon plans a mixed part's tokens (progress, the LR curve's total) from the
    weights and the ramp alone; the worker's draws land within a few percent of it."""
    for mix in (mixture(0.2), mixture(0.1, ramp=16 * 1500), mixture(0.1, ramp=16 * 6000)):
        drawn = order(mix, windows=3000).total * 16
        planned = mixed_tokens(mix, 3000 * 16)
        assert abs(planned - drawn) / drawn < 0.05, (mix, planned, drawn)
    assert mixed_tokens(mixture(0.2), 8000) == pytest.approx(10_000)


def test_a_mix_of_masked_and_unmasked_windows(tmp_path):
    text = open_part(make_token_dir(tmp_path / "text", parts=1, tokens=2000, val_tokens=0), "part-000")
    qa = open_part(make_instruction_dir(tmp_path / "qa", parts=2, windows=30, val_windows=0), "part-001")
    qa0 = open_part(tmp_path / "qa" / "manifest.json", "part-000")
    batches = MixedBatches([Pool([text]), Pool([qa0, qa])], 16, torch.device("cpu"))
    assert batches.masked
    rows = np.array([[0, 5], [1, 3], [1, 45], [0, 7]])  # pool 1: window 45 is qa's window 15
    x, y = batches.get(rows)
    s = int(qa.starts[15])
    assert torch.equal(x[2], torch.from_numpy(np.asarray(qa.tokens[s : s + 16], dtype=np.int64)))
    counted = np.asarray(qa.mask[s + 1 : s + 17]) != 0
    assert torch.equal(y[2][torch.from_numpy(~counted)], torch.full((int((~counted).sum()),), IGNORE))
    assert bool((y[0] != IGNORE).all()) and bool((y[3] != IGNORE).all())  # text windows count every target
    assert batches.targets(rows) == 2 * 16 + int((y[1] != IGNORE).sum()) + int(counted.sum())


# -- a real worker -------------------------------------------------------------------------------------


def test_sigkill_mid_part_with_replay_resumes_bitwise_exact(tmp_path):
    """The part's own text, 20% replayed text from another stage and 10% replayed
    instruction data (masked), on a ramp: killed after a checkpoint, resumed to the same
    final checkpoint as an uninterrupted run; a spec whose mixture was changed by hand
    does not resume from that checkpoint."""
    own = make_token_dir(tmp_path / "own", parts=1, tokens=8000, seed=50)
    wiki = make_token_dir(tmp_path / "wiki", parts=2, tokens=3000, seed=0, val_tokens=0)
    qa = make_instruction_dir(tmp_path / "qa", parts=1, windows=60, val_windows=0)
    mix = {
        "sources": [
            {
                "name": "wiki",
                "weight": 0.2,
                "parts": [{"manifest": str(wiki), "part": p} for p in ("part-000", "part-001")],
            },
            {"name": "qa", "weight": 0.1, "parts": [{"manifest": str(qa), "part": "part-000"}]},
        ],
        "ramp_tokens": 3000,
        "ramp_from": "wiki",
        "stage_tokens": 1000,
    }
    stage_lr = {"start_tokens": 0, "end_tokens": 12_000, "rewarm_tokens": 500, "decay_fraction": 0.3}
    ref = write_spec(
        tmp_path / "ref.json", own, "part-000", tmp_path / "ref", mixture=mix, stage_lr=stage_lr, token_offset=1000
    )
    assert run_worker(ref, tmp_path / "ref.log") == EXIT_DONE, (tmp_path / "ref.log").read_text()[-2000:]
    reference = result_checkpoint(tmp_path / "ref")
    meta = json.loads((reference / "meta.json").read_text())
    sources = meta["sources"]
    assert meta["mixture"] == {
        "weights": {"wiki": 0.2, "qa": 0.1},
        "ramp_tokens": 3000,
        "ramp_from": "wiki",
        "stage_tokens": 1000,
    }
    # every own window but those of a last, partial micro-batch round (as without replay); both sources replayed
    assert 499 - 4 < sources["stage"] <= 499 and sources["wiki"] > sources["qa"] > 0
    assert meta["part_tokens"] == (meta["cursor"] // 8) * 8 * 16  # whole micro-batch rounds of the mixed slots

    spec = write_spec(
        tmp_path / "spec.json",
        own,
        "part-000",
        tmp_path / "work",
        mixture=mix,
        stage_lr=stage_lr,
        token_offset=1000,
    )
    log, holds, every = tmp_path / "worker.log", tmp_path / "holds", checkpoints_every(16)
    proc = start_worker(spec, log, extra_env={**every, **holding(holds, "step@37")})
    wait_held(holds, "step@37")  # five steps after the checkpoint at step 32
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    edited = json.loads(spec.read_text())
    edited["mixture"]["sources"][0]["weight"] = 0.3
    other = tmp_path / "other.json"
    other.write_text(json.dumps(edited))
    assert run_worker(other, tmp_path / "other.log") == EXIT_ERROR
    assert "made with another replay mixture" in read_json(tmp_path / "work" / "error.json")["message"]

    assert run_worker(spec, log, extra_env=every) == EXIT_DONE, log.read_text()[-2000:]
    assert "resuming from step-00000032" in log.read_text()
    assert_bitwise_equal(result_checkpoint(tmp_path / "work"), reference)
    assert json.loads((result_checkpoint(tmp_path / "work") / "meta.json").read_text())["sources"] == sources
