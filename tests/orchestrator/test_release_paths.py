"""A release under the chain's other paths: a warm stop, `pause` and a guard pause while it
trains; `fsck --repair` of a damaged release; `skip` and `retry release:NAME`; a daemon
killed at the release's rename (docs/operations.md "Releases": "Like a part").

Every test starts from one snapshot, made once: a chain of one part with a release after
it, whose daemon was killed right after writing the release's spec (`spec.after-rename`,
the second spec it wrote), so the part is promoted and the release queued, not started.
Each test copies it (the schedule, the data and the run directory) and starts a daemon on
the copy, so it pays for the release's worker only (about 2.5 s of importing torch each).
The reference every interrupted release must equal bitwise is the release of a worker
that was never interrupted: the one whose daemon is killed before its rename.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from runtime.faults import release as let_go
from tests.helpers import (
    assert_bitwise_equal,
    assert_lineage,
    checkpoints_every,
    cli,
    env,
    events,
    holding,
    make_chain,
    promotions,
    read_state,
    start_daemon,
    wait_for,
    wait_held,
)

pytestmark = pytest.mark.slow

NAME = "0001-wiki-part-000"  # the release after the chain's first part
RID = f"release:{NAME}"  # its job id: its events' part, and the scope of a hold
STEPS = 23  # the release's steps: 0.5 x 5,952 tokens, 128 tokens a step


def release_of(run: Path) -> dict:
    return next((r for r in read_state(run).get("releases", []) if r["name"] == NAME), {})


def release_events(run: Path) -> list[dict]:
    return [e for e in events(run) if e.get("part") == RID]


def kinds(run: Path) -> list[str]:
    return [e["event"] for e in release_events(run)]


def heartbeat(run: Path) -> dict:
    try:
        return json.loads((run / "work" / ".releases" / NAME / "heartbeat.json").read_text())
    except (OSError, ValueError):
        return {}


def status(run: Path) -> dict:
    out = cli("status", "--json", "--run-dir", str(run))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def edit(schedule: Path, **fields) -> None:
    doc = json.loads(schedule.read_text())
    doc.update(fields)
    schedule.write_text(json.dumps(doc, indent=2))


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory) -> Path:
    """A chain whose first part is promoted and whose release is queued, no daemon running."""
    root = tmp_path_factory.mktemp("snapshot")
    # total_tokens: the chain's curve goes on past the branch, so the release cools from the
    # peak rate (at the chain's very end the rate is at its floor already: nothing to cool).
    schedule = make_chain(
        root,
        parts=2,
        train={"total_tokens": 60_000},
        stages=[{"name": "wiki", "parts": ["data/wiki/part-000.bin"]}],
    )
    edit(schedule, release={"every_parts": 1, "decay_fraction": 0.5})
    run = root / "runs" / "chain"
    crash = {"ORCHESTRATOR_FAULT": "spec.after-rename@2"}  # the part's spec, then the release's
    assert start_daemon(schedule, root / "daemon.log", extra_env=crash).wait(timeout=600) == -signal.SIGKILL
    state = read_state(run)
    assert [(p["id"], p["status"]) for p in state["parts"]] == [("wiki/part-000", "done")]
    rel = release_of(run)
    assert rel["status"] == "pending" and rel["attempts"] == 0, rel
    assert rel["decay_tokens"] == STEPS * 128, rel
    assert kinds(run) == ["release-queued"]
    return root


def copy_of(snapshot: Path, to: Path) -> tuple[Path, Path]:
    """The snapshot's schedule, data and run directory in `to`: (schedule, run)."""
    shutil.copytree(snapshot, to, ignore=shutil.ignore_patterns("daemon.log"))
    return to / "schedule.json", to / "runs" / "chain"


@pytest.fixture(scope="module")
def reference(snapshot, tmp_path_factory) -> Path:
    """The release made from the snapshot by a worker never interrupted: its run directory.

    Its daemon is SIGKILLed right before renaming the finished release into releases/ (the
    worker's training is over by then: the folder is its final checkpoint, renamed), and a
    second daemon promotes it; test_a_daemon_killed_before_the_release_rename_... checks
    that path, the other tests compare their release with this one."""
    root = tmp_path_factory.mktemp("reference")
    schedule, run = copy_of(snapshot, root / "c")
    log, fired = root / "daemon.log", root / "fired"
    crash = {"ORCHESTRATOR_FAULT": "release.before-rename", "ORCHESTRATOR_FAULT_ONCE": str(fired)}
    assert start_daemon(schedule, log, "--exit-when-done", extra_env=crash).wait(timeout=600) == -signal.SIGKILL
    assert fired.exists()
    # the worker finished (its result names the final checkpoint), nothing was renamed
    work = run / "work" / ".releases" / NAME
    result = json.loads((work / "result.json").read_text())
    assert (work / result["checkpoint"] / "meta.json").is_file()
    assert not (run / "releases" / NAME).exists()
    assert release_of(run)["status"] == "running"
    assert kinds(run) == ["release-queued", "release-started"]

    assert start_daemon(schedule, log, "--exit-when-done").wait(timeout=600) == 0, log.read_text()[-3000:]
    assert release_of(run)["status"] == "done"
    # the comparisons below mean something only if the release trained: it moved off its branch
    cooled = torch.load(run / "releases" / NAME / "model.pt", weights_only=True)
    branch = torch.load(run / "checkpoints" / NAME / "model.pt", weights_only=True)
    assert any(not torch.equal(cooled[k], branch[k]) for k in cooled), "the release did not train"
    return run


def assert_made_once(run: Path, reference: Path, attempts: int) -> dict:
    """The release is done, promoted once into releases/, bitwise the reference's, its scratch
    gone; the chain is as the reference's (one part, promoted once, the same tokens)."""
    rel = release_of(run)
    assert rel["status"] == "done" and rel["checkpoint"] == f"releases/{NAME}", rel
    assert rel["attempts"] == attempts, rel
    assert_bitwise_equal(run / "releases" / NAME, reference / "releases" / NAME)
    meta = json.loads((run / "releases" / NAME / "meta.json").read_text())
    assert meta["part_tokens"] == release_of(reference)["tokens"] == rel["tokens"]
    assert kinds(run).count("release-done") == 1
    assert [p.name for p in (run / "releases").iterdir()] == [NAME]
    cooled = [json.loads(line) for line in (run / "evals.jsonl").read_text().splitlines()]
    assert [e["checkpoint"] for e in cooled].count(f"releases/{NAME}") == 1  # evaluated once
    assert not (run / "work" / ".releases" / NAME).exists()
    assert promotions(run) == {"wiki/part-000": 1}
    state, ref = read_state(run), read_state(reference)
    assert (state["global_tokens"], state["latest_checkpoint"]) == (ref["global_tokens"], ref["latest_checkpoint"])
    assert_lineage(run)
    check = cli("fsck", "--run-dir", str(run))
    assert check.returncode == 0, check.stdout
    return rel


def test_a_warm_stop_during_a_release_resumes_it_from_its_checkpoint(snapshot, reference, tmp_path):
    schedule, run = copy_of(snapshot, tmp_path / "c")
    log, holds = tmp_path / "daemon.log", tmp_path / "holds"
    # a checkpoint every 5 steps; the worker held right after its first one (step 5)
    held = {**holding(holds, f"{RID}:checkpoint@1"), **checkpoints_every(5)}
    daemon = start_daemon(schedule, log, extra_env=held)
    wait_held(holds, f"{RID}:checkpoint@1")
    assert release_of(run)["status"] == "running"
    daemon.send_signal(signal.SIGTERM)  # warm: the worker is asked to stop, which ends its hold
    assert daemon.wait(timeout=300) == 0, log.read_text()[-3000:]

    rel = release_of(run)
    assert rel["status"] == "pending" and rel["attempts"] == 1 and rel["worker_pid"] is None, rel
    assert rel["failures"] == 0 and rel["error"] is None, rel  # a stop is no failure
    scratch = run / "work" / ".releases" / NAME / "ckpt"
    assert sorted(p.name for p in scratch.glob("step-*")) == ["step-00000005"]
    assert not (run / "releases" / NAME).exists()
    assert "release-failed" not in kinds(run)

    assert start_daemon(schedule, log, "--exit-when-done").wait(timeout=600) == 0, log.read_text()[-3000:]
    starts = [e["message"] for e in release_events(run) if e["event"] == "release-started"]
    assert len(starts) == 2 and "resuming" not in starts[0] and "resuming at step 5)" in starts[1], starts
    assert_made_once(run, reference, attempts=2)


def write_sensors(path: Path, **values) -> None:
    tmp = path.with_name(".sensors.tmp")
    tmp.write_text(json.dumps(values))
    os.replace(tmp, path)


def assert_paused_at(run: Path, step: int, reason: str) -> dict:
    """The release's worker is paused after `step`, for `reason`, and stays there across
    heartbeats (one every 0.2 s); `status` says so. Returns status --json."""
    hb = wait_for(lambda: (h := heartbeat(run)).get("phase") == "paused" and h, timeout=120, what="a paused release")
    later = wait_for(lambda: (h := heartbeat(run)).get("time", 0) > hb["time"] + 0.3 and h, timeout=120, what="beats")
    assert (hb["step"], later["step"], later["phase"]) == (step, step, "paused"), later
    assert reason in later["paused_reason"], later
    now = status(run)
    assert now["daemon"]["state"] == "paused", now["daemon"]
    assert (now["current"]["id"], now["current"]["phase"], now["current"]["step"]) == (RID, "paused", step)
    assert now["current"]["release"] and now["chain"]["global_tokens"] == read_state(run)["parts"][0]["tokens"]
    assert release_of(run)["status"] == "running"
    return now


def test_pause_and_a_guard_pause_during_a_release_pause_its_worker_until_lifted(snapshot, reference, tmp_path):
    schedule, run = copy_of(snapshot, tmp_path / "c")
    log, holds = tmp_path / "daemon.log", tmp_path / "holds"
    sensor = tmp_path / "c" / "sensors.json"
    cool = dict(gpu_temp_c=60, on_battery=False, ram_available_gb=8, disk_free_gb=100)
    write_sensors(sensor, **cool)
    edit(
        schedule,
        guard={"sensor_file": "sensors.json", "poll_interval_s": 0.1, "min_pause_s": 0.5, "sensor_stale_s": 600},
    )
    control = run / "work" / ".releases" / NAME / "control.json"
    # Held after step 3 for `pause`, after step 10 for the guard. A held worker reads
    # control.json only once it is let go, then before its next step: it pauses right there.
    entries = (f"{RID}:step@3", f"{RID}:step@10")
    daemon = start_daemon(schedule, log, "--exit-when-done", extra_env=holding(holds, *entries))

    held = wait_held(holds, entries[0])
    # `pause` answers, then waits for the worker to take the pause (it says so)
    pause = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "pause", "--run-dir", str(run)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env(),
    )
    wait_for(lambda: json.loads(control.read_text()).get("pause"), timeout=120, what="the pause in control.json")
    let_go(held)
    said = pause.communicate(timeout=300)[0]
    assert pause.returncode == 0 and f"the worker of {RID} is paused" in said, said
    assert_paused_at(run, 3, "paused by the user")
    shown = cli("status", "--run-dir", str(run))
    assert shown.returncode == 0 and f"{RID} (attempt 1): paused, step 3/{STEPS}" in shown.stdout, shown.stdout
    resumed = cli("resume", "--run-dir", str(run))
    assert resumed.returncode == 0 and "resumed" in resumed.stdout, resumed.stdout + resumed.stderr

    held = wait_held(holds, entries[1])  # the same worker went on
    write_sensors(sensor, **{**cool, "gpu_temp_c": 90})  # hot
    wait_for(
        lambda: json.loads(control.read_text()).get("pause"), timeout=120, what="the guard's pause in control.json"
    )
    let_go(held)
    assert assert_paused_at(run, 10, "GPU 90 °C >= 83 °C")["hardware"]["gpu_temp_c"] == 90
    write_sensors(sensor, **cool)  # cool again: the release goes on by itself

    assert daemon.wait(timeout=600) == 0, log.read_text()[-3000:]
    rel = assert_made_once(run, reference, attempts=1)  # one worker, paused twice, bitwise as if never
    assert rel["paused_seconds"] > 0, rel
    pauses = [e["event"] for e in events(run) if e["event"] in ("paused", "resumed", "guard-pause", "guard-resume")]
    assert pauses == ["paused", "resumed", "guard-pause", "guard-resume"], pauses


def test_fsck_repair_sets_a_damaged_release_aside_and_the_daemon_makes_it_again(reference, tmp_path):
    shutil.copytree(reference.parent.parent, tmp_path / "c", ignore=shutil.ignore_patterns("daemon.log"))
    schedule, run = tmp_path / "c" / "schedule.json", tmp_path / "c" / "runs" / "chain"
    weights = run / "releases" / NAME / "model.pt"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # cut short

    found = cli("fsck", "--run-dir", str(run))
    assert found.returncode == 1 and f"releases/{NAME}/model.pt" in found.stdout, found.stdout + found.stderr
    assert weights.exists()  # without --repair nothing moves

    fixed = cli("fsck", "--repair", "--run-dir", str(run))
    assert fixed.returncode == 1, fixed.stdout + fixed.stderr
    assert f"moved releases/{NAME} to quarantine/" in fixed.stdout and "made again" in fixed.stdout, fixed.stdout
    assert not (run / "releases" / NAME).exists()
    aside = [p for p in (run / "quarantine").iterdir() if NAME in p.name and p.is_dir()]
    assert len(aside) == 1 and (aside[0] / "meta.json").is_file(), list((run / "quarantine").iterdir())
    rel = release_of(run)
    assert rel["status"] == "pending" and rel["checkpoint"] is None, rel
    clean = cli("fsck", "--run-dir", str(run))
    assert clean.returncode == 0, clean.stdout

    log = tmp_path / "daemon.log"
    assert start_daemon(schedule, log, "--exit-when-done").wait(timeout=600) == 0, log.read_text()[-3000:]
    rel = release_of(run)
    assert rel["status"] == "done", rel
    assert_bitwise_equal(run / "releases" / NAME, reference / "releases" / NAME)
    assert promotions(run) == {"wiki/part-000": 1}  # the chain's part was not trained again
    starts = [e["message"] for e in release_events(run) if e["event"] == "release-started"]
    assert len(starts) == 2 and "resuming" not in starts[1], starts  # made again from its branch
    assert_lineage(run)
    assert cli("fsck", "--run-dir", str(run)).returncode == 0


def test_skip_of_a_running_release_ends_it_unpromoted_and_the_chain_goes_on(snapshot, tmp_path):
    schedule, run = copy_of(snapshot, tmp_path / "c")
    log, holds = tmp_path / "daemon.log", tmp_path / "holds"
    # a part queued after the release (in a stage that makes none)
    doc = json.loads(schedule.read_text())
    doc["stages"].append({"name": "domain", "parts": ["data/domain/part-000.bin"], "release": {"every_parts": 0}})
    schedule.write_text(json.dumps(doc, indent=2))
    daemon = start_daemon(schedule, log, "--exit-when-done", extra_env=holding(holds, f"{RID}:step@3"))
    wait_held(holds, f"{RID}:step@3")
    skipped = cli("skip", RID, "--run-dir", str(run))
    assert skipped.returncode == 0, skipped.stdout + skipped.stderr
    assert f"skipped {RID}; the chain goes on without it" in skipped.stdout
    assert daemon.wait(timeout=600) == 0, log.read_text()[-3000:]  # the skip ended the hold

    rel = release_of(run)
    assert rel["status"] == "skipped" and rel["checkpoint"] is None and rel["worker_pid"] is None, rel
    assert not (run / "releases" / NAME).exists()
    assert not (run / "work" / ".releases" / NAME).exists()  # its scratch is cleared
    assert kinds(run) == ["release-queued", "release-started", "part-skipped"], kinds(run)
    state = read_state(run)
    assert [(p["id"], p["status"]) for p in state["parts"]] == [("wiki/part-000", "done"), ("domain/part-000", "done")]
    meta = json.loads((run / state["parts"][1]["checkpoint"] / "meta.json").read_text())
    assert meta["start"] == NAME  # the chain went on from the part the release branched from
    assert promotions(run) == {"wiki/part-000": 1, "domain/part-000": 1}
    assert next(r for r in status(run)["releases"] if r["id"] == RID)["status"] == "skipped"
    assert cli("fsck", "--run-dir", str(run)).returncode == 0


def test_skip_of_a_queued_release_with_no_daemon_running_drops_it(snapshot, tmp_path):
    schedule, run = copy_of(snapshot, tmp_path / "c")
    skipped = cli("skip", RID, "--run-dir", str(run))
    assert skipped.returncode == 0 and "no daemon is running" in skipped.stdout, skipped.stdout + skipped.stderr
    assert release_of(run)["status"] == "skipped"
    log = tmp_path / "daemon.log"
    assert start_daemon(schedule, log, "--exit-when-done").wait(timeout=600) == 0, log.read_text()[-3000:]
    assert release_of(run)["status"] == "skipped"
    assert kinds(run) == ["release-queued", "part-skipped"], kinds(run)  # never started
    assert not (run / "releases").exists() or not any((run / "releases").iterdir())
    assert "chain-done" in [e["event"] for e in events(run)]


def test_retry_of_a_failed_release_runs_it_again(snapshot, reference, tmp_path):
    schedule, run = copy_of(snapshot, tmp_path / "c")
    log = tmp_path / "daemon.log"
    doc = json.loads(schedule.read_text())
    doc["supervisor"]["max_attempts"] = 1  # the first failure gives the release up
    schedule.write_text(json.dumps(doc, indent=2))
    # The release's worker dies at its first heartbeat (only once: the retried one lives).
    crash = {"ORCHESTRATOR_FAULT": "heartbeat.before-rename", "ORCHESTRATOR_FAULT_ONCE": str(tmp_path / "fired")}
    daemon = start_daemon(schedule, log, extra_env=crash)  # stays up when the chain is done
    wait_for(lambda: release_of(run).get("status") == "failed", timeout=300, what="the release given up")
    wait_for(lambda: "chain-done" in [e["event"] for e in events(run)], timeout=120, what="the chain done")
    assert daemon.poll() is None and (tmp_path / "fired").exists()
    rel = release_of(run)
    assert rel["attempts"] == 1 and "killed by SIGKILL" in rel["error"], rel
    assert kinds(run)[-1] == "release-failed"
    assert next(r for r in status(run)["releases"] if r["id"] == RID)["status"] == "failed"

    retried = cli("retry", RID, "--run-dir", str(run))
    assert retried.returncode == 0 and f"{RID} queued again" in retried.stdout, retried.stdout + retried.stderr
    wait_for(lambda: release_of(run).get("status") == "done", timeout=300, what="the retried release done")
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=120) == 0, log.read_text()[-3000:]
    assert kinds(run) == [
        "release-queued",
        "release-started",
        "release-failed",
        "part-requeued",
        "release-started",
        "release-done",
    ], kinds(run)
    rel = assert_made_once(run, reference, attempts=2)
    assert rel["error"] is None and rel["failures"] == 0, rel


def test_a_daemon_killed_before_the_release_rename_promotes_it_once_on_restart(reference):
    run = reference  # killed at release.before-rename, then started again (the fixture)
    # promoted from the result its worker left: no second worker, one promotion, one evaluation
    assert kinds(run) == ["release-queued", "release-started", "release-done"], kinds(run)
    assert_made_once(run, reference, attempts=1)
    assert not (run / "quarantine").exists() or not any((run / "quarantine").iterdir())  # nothing refused
