"""Replay in a real chain: a domain stage that replays the Wikipedia stage, run by the daemon
with real workers; a weight edit applies from the next part, never to a started one; a
release of the stage cools down on the stage's mix."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from runtime.atomic import read_jsonl
from tests.helpers import (
    checkpoints_every,
    events,
    holding,
    make_chain,
    part_of,
    read_state,
    start_daemon,
    wait_for,
    wait_held,
)

pytestmark = pytest.mark.slow


def replayed_share(run: Path, pid: str) -> float:
    """The share of replayed windows in the part's promoted checkpoint."""
    meta = json.loads((run / part_of(read_state(run), pid)["checkpoint"] / "meta.json").read_text())
    sources = meta["sources"]
    return sources["wiki"] / sum(sources.values())


def test_a_chain_with_replay_runs_and_a_weight_edit_applies_from_the_next_part(tmp_path):
    stages = [
        {"name": "wiki", "parts": ["data/wiki/part-000.bin"]},
        {
            "name": "domain",
            "parts": ["data/domain"],
            "replay": [{"stage": "wiki", "weight": 0.2}],
            "lr_rewarm_tokens": 512,
        },
    ]
    schedule = make_chain(tmp_path, parts=2, tokens=5000, stages=stages)
    raw = json.loads(schedule.read_text())
    raw["release"] = {"every_parts": 3, "decay_fraction": 0.2}  # after the chain's third part: domain/part-001
    schedule.write_text(json.dumps(raw))
    run, log, holds = tmp_path / "runs" / "chain", tmp_path / "daemon.log", tmp_path / "holds"
    first = "domain/part-000"
    # Held after its first checkpoint (a few steps of 49), so that the edit lands while the part
    # is under way and after its spec is frozen (a part without a checkpoint would start afresh).
    held = {**holding(holds, f"{first}:checkpoint@1"), **checkpoints_every(5)}
    daemon = start_daemon(schedule, log, "--exit-when-done", extra_env=held)
    try:
        wait_held(holds, f"{first}:checkpoint@1")
        raw = json.loads(schedule.read_text())
        raw["stages"][1]["replay"][0]["weight"] = 0.5
        tmp = schedule.with_name(".schedule.json.swp")
        tmp.write_text(json.dumps(raw))
        os.replace(tmp, schedule)
        note = f"{first} keeps the replay, ramp and learning-rate shape it started with"
        wait_for(
            lambda: any(e["event"] == "schedule-reloaded" and note in json.dumps(e) for e in events(run)),
            timeout=120,
            what="the edit loaded, the part under way named",
        )
        # the part is retried: from its frozen spec, so with the weight it started with
        os.kill(part_of(read_state(run), first)["worker_pid"], signal.SIGKILL)
        assert daemon.wait(timeout=600) == 0, log.read_text()[-3000:]
    finally:
        daemon.kill()

    state = read_state(run)
    assert [p["status"] for p in state["parts"]] == ["done"] * 3
    assert part_of(state, first)["attempts"] == 2
    wiki_meta = json.loads((run / part_of(state, "wiki/part-000")["checkpoint"] / "meta.json").read_text())
    assert not {"sources", "mixture"} & set(wiki_meta)  # without replay: the sidecar a release before replay reads
    assert 0.15 < replayed_share(run, first) < 0.25  # the weight it started with
    assert 0.45 < replayed_share(run, "domain/part-001") < 0.55  # the edit, from the next part
    # a mixed part trains more tokens than its own windows: the plan expected that
    for pid in ("domain/part-000", "domain/part-001"):
        part = part_of(state, pid)
        assert abs(part["tokens"] - part["planned_tokens"]) < 0.1 * part["planned_tokens"], part
    assert part_of(state, "domain/part-001")["tokens"] > 1.5 * part_of(state, "wiki/part-000")["tokens"]
    # the stage re-warms: its first step's rate is a quarter of the one four steps on (512 tokens = 4 steps)
    lrs = [m["lr"] for m in read_jsonl(run / "metrics" / "domain--part-000.jsonl")]
    assert lrs[0] == pytest.approx(lrs[3] / 4, rel=0.05)
    # the release of the domain stage cools down on the stage's mix (the weight of its part: 0.5)
    (release,) = state["releases"]
    assert release["status"] == "done" and release["part"] == "domain/part-001", release
    sources = json.loads((run / release["checkpoint"] / "meta.json").read_text())["sources"]
    assert 0.3 < sources["wiki"] / sum(sources.values()) < 0.7, sources
