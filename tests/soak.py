"""The soak: a chain run while a seeded loop SIGKILLs a random process of it, again and again.

    python tests/soak.py [--kills 30] [--seed 1] [--root DIR] [--parts 3] [--stages 2]

It runs the chain once without interruption (the reference), then again while killing,
at random points of its progress, either the worker (the daemon retries it) or the daemon
(the soak starts it again, as systemd would), until --kills kills have landed and the
chain is complete. The kill points are seeded fractions of the chain's tokens, so the
soak does the same on a fast machine and a slow one (pacing kills by the clock once let
a fast machine finish the chain before the kills were done). It then checks that every
promoted checkpoint is bitwise equal to the reference's, that every part was promoted
exactly once, and that the token counts add up, and prints the figures: kills,
recoveries, and work lost (the training time since the killed worker's last checkpoint).
tests/test_soak.py runs a short version.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.helpers import make_chain, promotions, read_state, start_daemon  # noqa: E402

SUPERVISOR = {"max_attempts": 1000, "backoff_s": 0.1, "backoff_max_s": 0.5}


TOKENS_PER_KILL = 40_000  # ~2 s of training on one core: the chain must outlast the kills


def _chain(root: Path, parts: int, stages: int, kills: int) -> Path:
    layout = [{"name": "wiki", "parts": ["data/wiki"]}, {"name": "domain", "parts": ["data/domain"]}][:stages]
    tokens = max(24_000, kills * TOKENS_PER_KILL // (parts * stages))
    return make_chain(
        root, parts=parts, tokens=tokens, stages=layout, supervisor=SUPERVISOR, train={"checkpoint_interval_s": 0.5}
    )


def _heartbeat(run: Path, part: dict) -> dict:
    try:
        return json.loads((run / "work" / part["id"] / "heartbeat.json").read_text())
    except (OSError, ValueError):
        return {}


def _kill(pid: int) -> bool:
    try:
        os.kill(pid, signal.SIGKILL)
        return True
    except ProcessLookupError:
        return False


def _progress(run: Path) -> int:
    """Tokens the chain has trained so far: the done parts', and the running part's."""
    state = read_state(run)
    done = state.get("global_tokens", 0)
    running = next((p for p in state.get("parts", []) if p["status"] == "running"), None)
    if running is None:
        return done
    hb = _heartbeat(run, running)
    current = running.get("worker_pid") in (hb.get("pid"), hb.get("launcher_pid"))  # not an earlier attempt's
    return done + (hb.get("part_tokens", 0) if current else 0)


def soak(root: Path, kills: int, seed: int, parts: int = 3, stages: int = 2, log=print) -> dict:
    rng = random.Random(seed)
    reference = _chain(root / "reference", parts, stages, kills)
    t0 = time.monotonic()
    assert start_daemon(reference, root / "reference.log", "--exit-when-done").wait(timeout=1800) == 0
    uninterrupted_s = time.monotonic() - t0

    schedule = _chain(root / "soak", parts, stages, kills)
    run, dlog = root / "soak" / "runs" / "chain", root / "soak.log"
    daemon = start_daemon(schedule, dlog, "--exit-when-done")
    t0 = time.monotonic()
    total = sum(p.get("planned_tokens", 0) for p in read_state(reference.parent / "runs" / "chain")["parts"])
    # Kill points spread over the first 90% of the chain's tokens, one in each of `kills` slices.
    points = [int(total * 0.9 * (i + rng.random()) / kills) for i in range(kills)]
    landed = {"worker": 0, "daemon": 0}
    lost: list[float] = []
    for point in points:
        while daemon.poll() is None and _progress(run) < point:
            time.sleep(0.02)  # polling an observable: the chain's progress
        if daemon.poll() is not None:
            break  # the chain is complete (it cannot be before the last point; asserted below)
        state = read_state(run)
        running = next((p for p in state.get("parts", []) if p["status"] == "running" and p.get("worker_pid")), None)
        if running and rng.random() < 0.7 and _kill(running["worker_pid"]):
            hb = _heartbeat(run, running)
            landed["worker"] += 1
            if hb.get("phase") == "training":
                lost.append(time.time() - (hb.get("last_checkpoint_time") or hb["time"]))
        else:  # the daemon (also when the worker had just ended)
            daemon.send_signal(signal.SIGKILL)
            daemon.wait()
            landed["daemon"] += 1
            daemon = start_daemon(schedule, dlog, "--exit-when-done")
        log(f"kill {sum(landed.values())} at {point} tokens: {landed}")
    assert daemon.wait(timeout=1800) == 0, f"daemon exit {daemon.returncode}"
    soak_s = time.monotonic() - t0

    ref_run = root / "reference" / "runs" / "chain"
    state, ref = read_state(run), read_state(ref_run)
    report = {
        "kills": landed,
        "recovered": True,
        "parts": len(state["parts"]),
        "promoted_once": promotions(run) == {p["id"]: 1 for p in ref["parts"]},
        "tokens_equal": [p["tokens"] for p in state["parts"]] == [p["tokens"] for p in ref["parts"]]
        and state["global_tokens"] == ref["global_tokens"] == sum(p["tokens"] for p in state["parts"]),
        "work_lost_s": {
            "total": round(sum(lost), 2),
            "mean": round(statistics.mean(lost), 2) if lost else 0,
            "max": round(max(lost), 2) if lost else 0,
        },
        "uninterrupted_s": round(uninterrupted_s, 1),
        "soak_s": round(soak_s, 1),
        "pairs": [(run / p["checkpoint"], ref_run / q["checkpoint"]) for p, q in zip(state["parts"], ref["parts"])],
    }
    return report


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=30)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--parts", type=int, default=3)
    ap.add_argument("--stages", type=int, default=2)
    ap.add_argument("--root", type=Path)
    args = ap.parse_args()
    root = args.root or Path(tempfile.mkdtemp(prefix="soak-"))
    report = soak(root, args.kills, args.seed, args.parts, args.stages)
    from tests.helpers import assert_bitwise_equal

    for ours, theirs in report.pop("pairs"):
        assert_bitwise_equal(ours, theirs)
    report["bitwise_equal"] = True
    print(json.dumps(report, indent=2))
    return 0 if report["promoted_once"] and report["tokens_equal"] else 1


if __name__ == "__main__":
    sys.exit(main())
