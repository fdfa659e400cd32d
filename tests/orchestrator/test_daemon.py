"""The daemon end to end: real daemon and worker subprocesses, real signals, real files."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from runtime.faults import release
from tests.helpers import (
    REPO,
    assert_bitwise_equal,
    assert_lineage,
    checkpoints_every,
    cli,
    env,
    events,
    freeze_worker,
    holding,
    make_chain,
    part_of,
    promotions,
    read_state,
    running_step,
    start_daemon,
    thaw,
    wait_for,
    wait_held,
)

pytestmark = pytest.mark.slow

PARTS = ["wiki/part-000", "wiki/part-001", "wiki/part-002", "domain/part-000", "domain/part-001", "domain/part-002"]
TOKENS = 24000  # 187 optimizer steps a part: long enough to be killed in the middle
ONE_STAGE = [{"name": "wiki", "parts": ["data/wiki"]}]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """A 2 x 3 chain run without interruption: its run directory."""
    root = tmp_path_factory.mktemp("reference")
    schedule = make_chain(root, tokens=TOKENS)
    proc = start_daemon(schedule, root / "daemon.log", "--exit-when-done")
    assert proc.wait(timeout=600) == 0, (root / "daemon.log").read_text()[-3000:]
    assert_lineage(root / "runs" / "chain")
    return root / "runs" / "chain"


def promoted(run: Path) -> dict[str, Path]:
    return {part_of(read_state(run), pid)["id"]: run / part_of(read_state(run), pid)["checkpoint"] for pid in PARTS}


def test_chain_of_two_stages_completes(reference):
    state = read_state(reference)
    assert [p["id"] for p in state["parts"]] == PARTS
    assert all(p["status"] == "done" and p["attempts"] == 1 for p in state["parts"])
    assert state["global_tokens"] == sum(p["tokens"] for p in state["parts"]) > 0
    assert (reference / "checkpoints" / "LATEST").read_text().strip() == "0006-domain-part-002"
    assert sorted(p.name for p in (reference / "checkpoints").iterdir()) == [
        "0001-wiki-part-000",
        "0002-wiki-part-001",
        "0003-wiki-part-002",
        "0004-domain-part-000",
        "0005-domain-part-001",
        "0006-domain-part-002",
        "LATEST",
    ]
    assert not any((reference / "work").iterdir()), "scratch left behind"
    assert len(list((reference / "metrics").glob("*.jsonl"))) == 6
    val = [p["val_loss"] for p in state["parts"][:3]]
    assert val[2] < val[0]  # the chain learns across parts
    status = json.loads(cli("status", "--json", "--run-dir", str(reference)).stdout)
    assert [p["status"] for p in status["parts"]] == ["done"] * 6
    assert status["parts"][0]["checkpoint"] == "checkpoints/0001-wiki-part-000"
    assert status["daemon"]["state"] == "stopped" and status["current"] is None
    assert (reference.stat().st_mode & 0o777) == 0o700
    # A new chain whose schedule names no family trains the default recipe: llama, Muon + AdamW.
    assert state["model"]["family"] == "llama"
    final = reference / "checkpoints" / "0006-domain-part-002"
    assert json.loads((final / "meta.json").read_text())["model"]["family"] == "llama"
    assert torch.load(final / "optim.pt", weights_only=True)["kind"] == "muon"


def test_a_chain_of_the_previous_release_keeps_its_gpt2_model_and_adamw(tmp_path):
    """state.json written before families existed: its model has no family. The same
    schedule (no family named) is not refused, and the chain goes on in the gpt2 family."""
    schedule = make_chain(tmp_path, parts=1, tokens=800)
    run = tmp_path / "runs" / "chain"
    run.mkdir(parents=True)
    old = {"vocab_size": 64, "block_size": 16, "n_layer": 2, "n_head": 2, "n_embd": 32, "dropout": 0.0, "bias": False}
    (run / "state.json").write_text(json.dumps({"name": "chain", "model": old, "schedule": {"path": str(schedule)}}))
    proc = start_daemon(schedule, tmp_path / "daemon.log", "--exit-when-done")
    assert proc.wait(timeout=300) == 0, (tmp_path / "daemon.log").read_text()[-3000:]
    state = read_state(run)
    assert [p["status"] for p in state["parts"]] == ["done", "done"] and state["model"] == old
    for part in state["parts"]:
        folder = run / part["checkpoint"]
        assert json.loads((folder / "meta.json").read_text())["model"] == {**old, "family": "gpt2"}
        assert torch.load(folder / "optim.pt", weights_only=True)["kind"] == "adamw"
    assert "gpt2 family" in (run / "runtime.log").read_text()


def resumed_at(run: Path, pid: str) -> list[int | None]:
    """The step each start of `pid`'s worker resumed at, in order (None: from its beginning)."""
    found = []
    for e in events(run):
        if e["event"] in ("part-started", "release-started") and e.get("part") == pid:
            m = re.search(r"resuming at step (\d+)", e["message"])
            found.append(int(m.group(1)) if m else None)
    return found


def test_workers_and_daemon_killed_repeatedly_end_bitwise_equal(reference, tmp_path):
    # A checkpoint every 8 steps: each killed worker's retry resumes from the middle of its part.
    schedule = make_chain(tmp_path, tokens=TOKENS)
    run, log, holds = tmp_path / "runs" / "chain", tmp_path / "daemon.log", tmp_path / "holds"
    # Every kill lands at an exact step: the worker is held there until it is killed. The step
    # is the part's, so the retried worker of part-001 (resumed before 60) holds at 120.
    aims = ["wiki/part-001:step@60", "wiki/part-001:step@120", "wiki/part-002:step@80"]
    aims += ["domain/part-000:step@50", "domain/part-001:step@100"]
    held_env = {**holding(holds, *aims), **checkpoints_every(8)}
    daemon = start_daemon(schedule, log, "--exit-when-done", extra_env=held_env)
    kills = []

    def held_worker(pid_: str, step: int) -> None:
        wait_held(holds, f"{pid_}:step@{step}")
        wait_for(lambda: running_step(run, pid_) == step, timeout=60, what=f"the worker of {pid_} held at step {step}")

    def kill_worker(pid_: str, step: int) -> None:
        held_worker(pid_, step)
        os.kill(part_of(read_state(run), pid_)["worker_pid"], signal.SIGKILL)
        kills.append(("worker", pid_))

    def kill_daemon(pid_: str, step: int):
        held_worker(pid_, step)
        # The worker is frozen while the daemon dies and a new one starts, so the new one always
        # finds it alive and adopts it (else the race between the worker noticing and the new
        # daemon starting is the machine's speed's to decide).
        worker = freeze_worker(run, pid_)
        daemon.send_signal(signal.SIGKILL)
        daemon.wait()
        kills.append(("daemon", pid_))
        adopted = sum(e["event"] == "worker-adopted" for e in events(run))
        new = start_daemon(schedule, log, "--exit-when-done", extra_env=held_env)
        wait_for(
            lambda: sum(e["event"] == "worker-adopted" for e in events(run)) > adopted,
            timeout=300,
            what="the new daemon adopting the worker",
        )
        # Thawed, it finds its daemon gone, which ends its hold: it checkpoints at `step` and
        # exits, and the new daemon starts it again from there.
        thaw(worker)
        return new

    kill_worker("wiki/part-001", 60)
    kill_worker("wiki/part-001", 120)  # the retried attempt, after it resumed
    daemon = kill_daemon("wiki/part-002", 80)
    kill_worker("domain/part-000", 50)
    daemon = kill_daemon("domain/part-001", 100)
    assert daemon.wait(timeout=600) == 0, log.read_text()[-3000:]

    state = read_state(run)
    assert all(p["status"] == "done" for p in state["parts"]) and len(kills) == 5
    assert state["global_tokens"] == read_state(reference)["global_tokens"]
    assert [p["tokens"] for p in state["parts"]] == [p["tokens"] for p in read_state(reference)["parts"]]
    assert promotions(run) == {pid: 1 for pid in PARTS}, "a part was promoted twice or not at all"
    assert part_of(state, "wiki/part-001")["attempts"] == 3
    assert any(e["event"] == "worker-adopted" for e in events(run))
    # Each kill landed where it was aimed: a killed worker's retry resumed from the checkpoint
    # before its step, a worker whose daemon was killed checkpointed at its step exactly.
    starts = {pid_: resumed_at(run, pid_) for pid_ in PARTS}
    twice = starts.pop("wiki/part-001")
    assert twice == [None, 56, 120]  # the newest checkpoint (every 8 steps) at or before each kill
    assert starts.pop("domain/part-000") == [None, 48]
    assert starts == {
        "wiki/part-000": [None],
        "wiki/part-002": [None, 80],
        "domain/part-001": [None, 100],
        "domain/part-002": [None],
    }
    for pid_, folder in promoted(run).items():
        assert_bitwise_equal(folder, promoted(reference)[pid_])


def test_hot_edits_append_parts_and_refuse_invalid_ones(tmp_path):
    stage = {"name": "wiki", "parts": ["data/wiki/part-000.bin", "data/wiki/part-001.bin"]}
    schedule = make_chain(tmp_path, tokens=TOKENS, stages=[stage])
    run, holds = tmp_path / "runs" / "chain", tmp_path / "holds"
    # The first part is held until both edits are seen: the chain cannot end before them.
    daemon = start_daemon(
        schedule, tmp_path / "daemon.log", "--exit-when-done", extra_env=holding(holds, "wiki/part-000:step@1")
    )
    held = wait_held(holds, "wiki/part-000:step@1")
    good = json.loads(schedule.read_text())

    def save_like_an_editor(text: str) -> None:  # write a temp file, rename it over the original
        tmp = schedule.with_name(".schedule.json.swp")
        tmp.write_text(text)
        os.replace(tmp, schedule)

    bad = dict(good, stagse=good["stages"])
    save_like_an_editor(json.dumps(bad))
    wait_for(lambda: read_state(run)["schedule"]["valid"] is False, timeout=300, what="the invalid edit refused")
    assert "stagse: unknown field (did you mean 'stages'?)" in read_state(run)["schedule"]["error"]
    status = json.loads(cli("status", "--json", "--run-dir", str(run)).stdout)
    assert status["schedule"]["valid"] is False and "stagse" in status["schedule"]["error"]
    assert daemon.poll() is None  # still running the chain

    good["stages"][0]["parts"].append("data/wiki/part-002.bin")
    save_like_an_editor(json.dumps(good))
    wait_for(
        lambda: len(read_state(run)["parts"]) == 3 and read_state(run)["schedule"]["valid"], timeout=300, what="append"
    )
    # both edits were seen while the first part was under way
    assert [p["status"] for p in read_state(run)["parts"]] == ["running", "pending", "pending"]
    release(held)
    assert daemon.wait(timeout=300) == 0
    state = read_state(run)
    assert [p["status"] for p in state["parts"]] == ["done"] * 3
    kinds = [e["event"] for e in events(run)]
    assert "schedule-refused" in kinds and "schedule-reloaded" in kinds


def newest_checkpoint(run: Path, pid: str) -> int | None:
    """The step of the part's newest scratch checkpoint (None: it has none)."""
    saved = sorted((run / "work" / pid / "ckpt").glob("step-*"))
    return int(saved[-1].name.split("-")[1]) if saved else None


def test_warm_stop_then_restart_and_a_second_daemon_is_refused(tmp_path):
    schedule = make_chain(tmp_path, parts=1, tokens=2 * TOKENS, stages=ONE_STAGE)
    run, log = tmp_path / "runs" / "chain", tmp_path / "daemon.log"

    def holding_at(step: int) -> dict:
        """Each daemon holds its worker at a step of its own, each in a new folder (a hold fires
        once a folder); a stop signal ends the hold, so each stop lands at that step exactly."""
        return holding(tmp_path / f"holds-{step}", f"wiki/part-000:step@{step}")

    def wait_held_at(step: int) -> Path:
        return wait_held(tmp_path / f"holds-{step}", f"wiki/part-000:step@{step}")

    daemon = start_daemon(schedule, log, extra_env=holding_at(40))  # no --exit-when-done: it would idle when done
    wait_for(lambda: read_state(run).get("daemon", {}).get("pid") == daemon.pid, timeout=300, what="the daemon up")
    second = cli("run", "--schedule", str(schedule))
    assert second.returncode == 1
    assert f"another daemon (pid {daemon.pid}) is already running on {run}" in second.stderr
    assert "Traceback" not in second.stderr

    wait_held_at(40)
    daemon.send_signal(signal.SIGTERM)  # passed on to the worker, which checkpoints at step 40
    assert daemon.wait(timeout=300) == 0
    part = part_of(read_state(run), "wiki/part-000")
    assert part["status"] == "pending" and read_state(run)["daemon"]["state"] == "stopped"
    stopped_at = newest_checkpoint(run, "wiki/part-000")
    assert stopped_at == 40, "the warm stop did not checkpoint where the worker was"

    daemon = start_daemon(schedule, log, extra_env=holding_at(50))
    wait_held_at(50)  # resumed, and trained on
    started = [e for e in events(run) if e["event"] == "part-started"]
    assert f"resuming at step {stopped_at}" in started[-1]["message"]
    out = cli("stop", "--run-dir", str(run), timeout=300)  # the CLI waits until the daemon has exited
    assert out.returncode == 0, out.stderr
    assert daemon.wait(timeout=60) == 0
    assert newest_checkpoint(run, "wiki/part-000") == 50  # the stop reached the worker at step 50

    daemon = start_daemon(schedule, log, extra_env=holding_at(60))  # a second signal: cold stop, the worker is killed
    wait_held_at(60)
    worker_pid = part_of(read_state(run), "wiki/part-000")["worker_pid"]
    os.kill(worker_pid, signal.SIGSTOP)  # a worker that cannot checkpoint now: the warm stop waits
    daemon.send_signal(signal.SIGINT)
    wait_for(lambda: events(run)[-1]["event"] == "daemon-stopping", timeout=300, what="the warm stop under way")
    daemon.send_signal(signal.SIGINT)  # the impatient second Ctrl-C
    assert daemon.wait(timeout=120) == 0
    wait_for(lambda: not Path(f"/proc/{worker_pid}").exists(), timeout=120, what="the worker killed")
    assert "second request" in events(run)[-2]["message"]
    assert part_of(read_state(run), "wiki/part-000")["status"] == "pending"
    assert newest_checkpoint(run, "wiki/part-000") == 50  # killed at step 60 without a checkpoint


def test_hung_worker_is_killed_and_retried(tmp_path):
    # A heartbeat timeout above any pause in a training worker's beats on a busy machine, yet
    # short for a test; the retried worker's setup is under startup_timeout_s (600 s).
    schedule = make_chain(
        tmp_path, parts=1, tokens=TOKENS, supervisor={"heartbeat_timeout_s": 5, "hung_grace_s": 1}, stages=ONE_STAGE
    )
    run, holds = tmp_path / "runs" / "chain", tmp_path / "holds"
    daemon = start_daemon(
        schedule, tmp_path / "daemon.log", "--exit-when-done", extra_env=holding(holds, "wiki/part-000:step@20")
    )
    wait_held(holds, "wiki/part-000:step@20")  # certainly under way: its end cannot come first
    worker_pid = part_of(read_state(run), "wiki/part-000")["worker_pid"]
    os.kill(worker_pid, signal.SIGSTOP)  # frozen: no heartbeat
    assert daemon.wait(timeout=300) == 0
    kinds = [e["event"] for e in events(run)]
    assert kinds.index("worker-hung") < kinds.index("worker-killed") < kinds.index("worker-failed")
    (hung,) = [e for e in events(run) if e["event"] == "worker-hung"]  # the frozen worker, and only it
    assert hung["part"] == "wiki/part-000"
    assert not Path(f"/proc/{worker_pid}").exists()
    part = part_of(read_state(run), "wiki/part-000")
    assert part["status"] == "done" and part["attempts"] == 2


def pause_requested(control: Path) -> bool:
    try:
        return json.loads(control.read_text())["pause"]
    except (OSError, ValueError, KeyError):
        return False


def test_pause_resume_skip_retry_through_the_cli(tmp_path):
    stage = {"name": "wiki", "parts": ["data/wiki/part-*.bin"]}
    schedule = make_chain(tmp_path, tokens=TOKENS, stages=[stage])
    run, holds = tmp_path / "runs" / "chain", tmp_path / "holds"
    daemon = start_daemon(
        schedule, tmp_path / "daemon.log", "--exit-when-done", extra_env=holding(holds, "wiki/part-000:step@10")
    )
    held = wait_held(holds, "wiki/part-000:step@10")

    # A held worker reads no control.json: `pause` (which waits for the worker to pause) is
    # asked while it is held, and the hold is released once the daemon has passed the pause on,
    # so that the worker pauses right after step 10.
    pause = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "pause", "--reason", "testing", "--run-dir", str(run)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env(),
        cwd=REPO,
    )
    control = run / "work" / "wiki" / "part-000" / "control.json"
    wait_for(lambda: pause_requested(control), timeout=300, what="the pause passed on to the worker")
    release(held)
    out, err = pause.communicate(timeout=300)
    assert pause.returncode == 0 and "is paused" in out, err
    step = running_step(run, "wiki/part-000")
    assert step == 10  # paused right where it was held
    hb = run / "work" / "wiki" / "part-000" / "heartbeat.json"
    first = json.loads(hb.read_text())["time"]
    wait_for(lambda: json.loads(hb.read_text())["time"] > first + 0.5, timeout=120, what="heartbeats while paused")
    assert running_step(run, "wiki/part-000") == step
    status = json.loads(cli("status", "--json", "--run-dir", str(run)).stdout)
    assert status["paused"]["user"]["reason"] == "testing" and status["daemon"]["state"] == "paused"

    assert cli("skip", "part-001", "--run-dir", str(run)).returncode == 0
    refused = cli("retry", "wiki/part-000", "--run-dir", str(run))
    assert refused.returncode == 1 and "is running" in refused.stderr
    assert cli("resume", "--run-dir", str(run)).returncode == 0
    wait_for(lambda: running_step(run, "wiki/part-000") > step, timeout=300, what="training resumed")
    assert daemon.wait(timeout=300) == 0
    assert [p["status"] for p in read_state(run)["parts"]] == ["done", "skipped", "done"]

    out = cli("retry", "part-001", "--run-dir", str(run))  # no daemon: applied to state.json directly
    assert out.returncode == 0 and "no daemon is running" in out.stdout
    assert start_daemon(schedule, tmp_path / "daemon.log", "--exit-when-done").wait(timeout=300) == 0
    assert [p["status"] for p in read_state(run)["parts"]] == ["done", "done", "done"]


def test_oom_halves_the_micro_batch_and_nonfinite_skips_the_window(tmp_path):
    schedule = make_chain(tmp_path, parts=1, tokens=6000, stages=ONE_STAGE)
    run = tmp_path / "runs" / "chain"
    faults = {"ORCHESTRATOR_FAULT_OOM_ABOVE_MICRO_BATCH": "2", "ORCHESTRATOR_FAULT_NAN_AT_CURSOR": "100"}
    daemon = start_daemon(schedule, tmp_path / "daemon.log", "--exit-when-done", extra_env=faults)
    assert daemon.wait(timeout=300) == 0, (tmp_path / "daemon.log").read_text()[-3000:]
    part = part_of(read_state(run), "wiki/part-000")
    assert part["status"] == "done"
    assert part["overrides"]["micro_batch"] == 2 and part["overrides"]["grad_accum"] == 4
    ((start, end),) = part["overrides"]["skip_windows"]
    assert start <= 100 < end and end - start == 8  # one optimizer step's windows
    assert part["tokens"] == (374 // 2 * 2 - 8) * 16  # every whole micro-batch, minus the skipped step
    kinds = [e["event"] for e in events(run)]
    assert kinds.index("oom-retry") < kinds.index("nonfinite-rollback") < kinds.index("part-done")


def test_lost_state_is_rebuilt_without_retraining(reference, tmp_path):
    run = tmp_path / "runs" / "chain"
    shutil.copytree(reference.parent.parent / "data", tmp_path / "data")
    shutil.copy(reference.parent.parent / "schedule.json", tmp_path / "schedule.json")
    shutil.copytree(reference, run)
    (run / "state.json").unlink()
    before = len(events(run))
    daemon = start_daemon(tmp_path / "schedule.json", tmp_path / "daemon.log", "--exit-when-done")
    assert daemon.wait(timeout=300) == 0
    state, ref = read_state(run), read_state(reference)
    assert [(p["id"], p["status"], p["tokens"], p["checkpoint"]) for p in state["parts"]] == [
        (p["id"], p["status"], p["tokens"], p["checkpoint"]) for p in ref["parts"]
    ]
    assert state["global_tokens"] == ref["global_tokens"]
    new = [e["event"] for e in events(run)[before:]]
    assert "state-rebuilt" in new and "part-started" not in new


def test_systemd_notifications_over_a_real_socket(tmp_path):
    schedule = make_chain(tmp_path, parts=1, tokens=2000, stages=ONE_STAGE)
    sock_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(sock_path))
        sock.settimeout(300)
        daemon = start_daemon(
            schedule,
            tmp_path / "daemon.log",
            "--exit-when-done",
            extra_env={"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "400000"},
        )
        messages = []
        while not any("STOPPING=1" in m for m in messages):
            messages.append(sock.recv(4096).decode())
        assert daemon.wait(timeout=300) == 0
    fields = [f for m in messages for f in m.split("\n")]
    assert "READY=1" in fields and "WATCHDOG=1" in fields and f"MAINPID={daemon.pid}" in fields
    assert any(f.startswith("STATUS=") for f in fields)
    assert fields.index("READY=1") < fields.index("STOPPING=1")
