"""A part trained on several machines (train.nodes): torchrun's agents meet through its c10d
rendezvous, the daemon starts them all and ends them as one job. Here two agents on
127.0.0.1 stand in for two machines (launcher local), both started by the daemon, as the
tests of several GPUs use gloo on CPU for NCCL. What srun and ssh would run is checked as
command lines (no Slurm cluster, no second machine here; docs/operations.md says what
was run where)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from pathlib import Path

import psutil
import pytest

from orchestrator.part.launch import LaunchRefused, Rendezvous, peer_commands
from orchestrator.part.process import _peers_of
from runtime.lockfile import holder
from runtime.spec import TrainConfig
from runtime.workerfiles import MAIN_NODE_ENV
from tests.helpers import (
    assert_bitwise_equal,
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

PART = "wiki/part-000"


def chain(root: Path, train: dict) -> Path:
    """One part of 23 steps, each of 2 processes x 4 x 2 windows of 16 tokens."""
    return make_chain(root, parts=1, tokens=6000, train=train, stages=[{"name": "wiki", "parts": ["data/wiki"]}])


def final(run: Path) -> Path:
    return run / "checkpoints" / "0001-wiki-part-000"


@pytest.fixture(scope="module")
def one_machine_two_processes(tmp_path_factory) -> Path:
    """The reference: the part on one machine's two processes (torchrun --standalone)."""
    root = tmp_path_factory.mktemp("one-machine")
    daemon = start_daemon(chain(root, {"gpus": 2}), root / "daemon.log", "--exit-when-done")
    assert daemon.wait(timeout=300) == 0, (root / "daemon.log").read_text()[-3000:]
    return root / "runs" / "chain"


def agents(daemon: psutil.Process) -> list[psutil.Process]:
    return [p for p in daemon.children() if "torch.distributed.run" in p.cmdline()]


def alive(p: psutil.Process) -> bool:
    return p.is_running() and p.status() != psutil.STATUS_ZOMBIE


def test_two_machines_train_as_one_survive_a_killed_machine_and_stop_warmly(one_machine_two_processes, tmp_path):
    """2 machines x 1 process. Attempt 1: the other machine's worker is SIGKILLed at step 10;
    the daemon ends the attempt on both. Attempt 2 resumes from step 10 on both and is
    stopped warmly at step 16 (the daemon's SIGTERM, as Slurm's before its time limit).
    Attempt 3, under a new daemon, resumes from step 16. The part ends bitwise equal to
    1 machine x 2 processes."""
    schedule = chain(tmp_path, {"nodes": 2, "launcher": "local"})
    run, log, holds = tmp_path / "runs" / "chain", tmp_path / "daemon.log", tmp_path / "holds"
    held = holding(holds, f"{PART}:step@10", f"{PART}:step@16")  # each fires once: attempt 1, then 2
    daemon = start_daemon(schedule, log, "--exit-when-done", extra_env={**held, **checkpoints_every(5)})
    wait_held(holds, f"{PART}:step@10")  # rank 0, after its checkpoint of step 10; rank 1 waits for it

    main = part_of(read_state(run), PART)["worker_pid"]
    both = agents(psutil.Process(daemon.pid))
    assert len(both) == 2 and main in [a.pid for a in both]
    peer = next(a for a in both if a.pid != main)
    rank0 = psutil.Process(holder(run / "work" / "wiki" / "part-000" / "worker.lock"))
    # Rank 0 is on the daemon's machine although torch numbered that machine second (its
    # agent started after the peer's): the workers' own order puts the main machine first.
    assert rank0.ppid() == main and rank0.environ()[MAIN_NODE_ENV] == "1"
    assert rank0.environ()["GROUP_RANK"] == "1"
    spec = run / "work" / "wiki" / "part-000" / "spec.json"
    assert _peers_of(main, spec) == [peer.pid]  # what a restarted daemon would adopt with the main agent
    attempt = [*both, rank0, *peer.children()]
    peer_worker = next(p for p in peer.children() if "trainer.worker" in p.cmdline())

    peer_worker.send_signal(signal.SIGKILL)  # the other machine's worker dies; rank 0 stays held
    wait_for(lambda: started(run, 2), timeout=300, what="the second attempt")
    # The first attempt was over on every machine before the second began: nothing of it is left.
    assert not [p.pid for p in attempt if alive(p)]

    wait_held(holds, f"{PART}:step@16")
    daemon.send_signal(signal.SIGTERM)  # warm: rank 0 stops every rank at the step, after saving
    assert daemon.wait(timeout=300) == 0, log.read_text()[-3000:]
    assert not [p.pid for p in agents_of(run) if alive(p)]
    daemon = start_daemon(schedule, log, "--exit-when-done")
    assert daemon.wait(timeout=300) == 0, log.read_text()[-3000:]

    failed = [e for e in events(run) if e["event"] == "worker-failed"]
    assert len(failed) == 1 and "another machine" in failed[0]["message"]
    assert "resuming at step 10" in started(run, 2)["message"]
    assert "resuming at step 16" in started(run, 3)["message"]
    part = part_of(read_state(run), PART)
    assert part["status"] == "done" and part["attempts"] == 3
    assert_bitwise_equal(final(run), final(one_machine_two_processes))


def started(run: Path, attempt: int) -> dict | None:
    return next((e for e in events(run) if e["event"] == "part-started" and e.get("attempt") == attempt), None)


def agents_of(run: Path) -> list[psutil.Process]:
    """Every torchrun of the run's part still here (any parent)."""
    spec = str(run / "work" / "wiki" / "part-000" / "spec.json")
    found = []
    for p in psutil.process_iter():
        try:
            if spec in p.cmdline():
                found.append(p)
        except psutil.Error:
            pass
    return found


def test_a_launcher_that_cannot_reach_the_machines_fails_the_part_saying_why(tmp_path, monkeypatch):
    """srun outside a Slurm allocation: the part fails at once as bad input, with the fix in the message."""
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    schedule = chain(tmp_path, {"nodes": 2, "launcher": "srun"})
    log = tmp_path / "daemon.log"
    daemon = start_daemon(schedule, log, "--exit-when-done")
    assert daemon.wait(timeout=300) == 1, log.read_text()[-3000:]
    part = part_of(read_state(tmp_path / "runs" / "chain"), PART)
    assert part["status"] == "failed" and part["attempts"] == 1
    assert "not run inside a Slurm allocation" in part["error"] and "orchestrator slurm" in part["error"]


# -- what srun and ssh would start (no cluster here) -------------------------------------------

RDZV = Rendezvous(nodes=3, host="node-a", port=29411, id="abc123")
SPEC = Path("/shared/runs/chain/work/wiki/part-000/spec.json")


def test_srun_starts_one_agent_on_each_other_node_of_the_allocation(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")  # CI has no Slurm
    slurm = {"SLURM_JOB_ID": "77", "SLURM_JOB_NUM_NODES": "3"}
    [command] = peer_commands(TrainConfig(nodes=3, gpus=4), SPEC, RDZV, slurm)
    at = command.index(sys.executable)
    srun, agent = command[:at], command[at:]
    assert srun == [
        "srun",
        "--nodes=2",
        "--ntasks=2",
        "--ntasks-per-node=1",
        "--relative=1",
        "--kill-on-bad-exit=1",
        f"--chdir={SPEC.parent}",
    ]
    assert agent[1:8] == [
        "-m",
        "torch.distributed.run",
        "--nnodes=3",
        "--nproc-per-node=4",
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=node-a:29411",
        "--rdzv-id=abc123",
    ]
    assert "--rdzv-conf=is_host=0" in agent and "--max-restarts=0" in agent
    assert agent[-4:] == ["-m", "trainer.worker", "--spec", str(SPEC)]


def test_srun_is_refused_outside_an_allocation_or_in_one_too_small(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    with pytest.raises(LaunchRefused, match="not run inside a Slurm allocation"):
        peer_commands(TrainConfig(nodes=2, launcher="srun"), SPEC, RDZV, {})
    with pytest.raises(LaunchRefused, match="has 2 node"):
        peer_commands(TrainConfig(nodes=3), SPEC, RDZV, {"SLURM_JOB_ID": "7", "SLURM_JOB_NUM_NODES": "2"})


def test_ssh_starts_an_agent_on_each_listed_host_with_the_environment_torch_needs(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    train = TrainConfig(nodes=3, launcher="ssh", hosts=["me@10.0.0.2", "10.0.0.3", "10.0.0.4"])
    commands = peer_commands(train, SPEC, RDZV, {})
    assert [c[0] for c in commands] == ["ssh", "ssh"] and "-tt" in commands[0]
    assert [c[c.index("--") + 1] for c in commands] == ["me@10.0.0.2", "10.0.0.3"]
    assert "BatchMode=yes" in commands[0] and "ConnectTimeout=30" in commands[0]
    remote = commands[0][-1]
    assert remote.startswith(f"cd {SPEC.parent} && exec env ")
    assert "--local-addr=10.0.0.2" in remote and "--rdzv-endpoint=node-a:29411" in remote
    assert "PYTHONPATH=" in remote and MAIN_NODE_ENV not in remote
    with pytest.raises(LaunchRefused, match="train.hosts lists 0"):
        peer_commands(TrainConfig(nodes=2), SPEC, RDZV, {})  # auto, outside Slurm: ssh, to nobody


def test_the_machines_are_numbered_from_the_daemons():
    from trainer.distributed import main_first, main_node

    class Store(dict):
        def set(self, k, v):
            self[k] = v.encode()

        def get(self, k):
            return dict.get(self, k)

    store = Store()
    for node in range(3):  # torch's numbers; the daemon's machine is torch's 2
        main_node(store, node, 3, 0, on_main=node == 2)
    assert main_node(store, 0, 3, 1, on_main=False) == 2
    ranks = {(n, lr): main_first(n, 2, 3, lr, 2) for n in range(3) for lr in range(2)}
    assert ranks[(2, 0)] == 0 and ranks[(2, 1)] == 1 and ranks[(0, 0)] == 2 and ranks[(1, 1)] == 5
    assert sorted(ranks.values()) == list(range(6))
    nobody = Store({f"orchestrator/main_node/{n}": b"0" for n in range(2)})
    assert main_node(nobody, 1, 2, 1, on_main=False) == 0  # torchrun started by hand: torch's order


# -- doctor: do the other machines see the run directory? -------------------------------------


def machines_checks(schedule: Path):
    from orchestrator.chain.plan import resolve
    from orchestrator.chain.schedule import load
    from orchestrator.commands.doctor import _machines_checks

    return _machines_checks(resolve(load(schedule), schedule), schedule.parent / "runs" / "chain")


def fake_ssh(bin_dir: Path, body: str) -> None:
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "ssh").write_text(f"#!/bin/sh\nfor a; do host=$script; script=$a; done\n{body}\n")
    (bin_dir / "ssh").chmod(0o755)


def test_doctor_reads_a_file_written_here_on_each_other_machine(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    schedule = chain(tmp_path, {"nodes": 3, "hosts": ["b", "c"]})
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    fake_ssh(tmp_path / "bin", 'SLURMD_NODENAME="$host" exec sh -c "$script"')  # "b" and "c" see this disk
    [check] = machines_checks(schedule)
    assert check.status == "ok" and "was read on b, c" in check.detail
    assert not list(tmp_path.glob(".orchestrator-doctor-*"))  # the probe's file is gone

    fake_ssh(tmp_path / "bin", 'echo "$host"; echo "cat: no such file"')  # a disk of their own
    [check] = machines_checks(schedule)
    assert check.status == "problem" and "b did not read it (cat: no such file)" in check.detail
    assert "same path on every machine" in check.fix


def test_doctor_says_what_it_cannot_check_from_here(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    [check] = machines_checks(chain(tmp_path / "a", {"nodes": 2, "launcher": "srun"}))
    assert check.status == "warning" and "outside a Slurm allocation" in check.detail
    assert "salloc --nodes 2 orchestrator doctor" in check.fix
    [check] = machines_checks(chain(tmp_path / "b", {"nodes": 2, "launcher": "local"}))
    assert check.status == "ok" and "all this machine" in check.detail
    assert machines_checks(chain(tmp_path / "c", {})) == []


def test_srun_answers_are_read_task_by_task():
    from orchestrator.preflight.nodes import shared_check, split_labelled

    out = "1: n3\n0: n2\n0: w0rd\n1: w0rd\n1: missing: /data/m.json\n"
    check = shared_check("w0rd", Path("/shared/runs"), split_labelled(out), expected=2)
    assert check.status == "problem" and check.detail.endswith("n3 has not: /data/m.json")
    check = shared_check("w0rd", Path("/shared/runs"), split_labelled("0: n2\n0: w0rd\n"), expected=2)
    assert check.status == "problem" and "only 1 of the 2 other machines answered" in check.detail


def test_how_machines_are_reached_is_always_the_schedules_current(tmp_path):
    """A part's spec is frozen with its first checkpoint, but not `launcher`, `hosts` and
    `rdzv_host`: a machine replaced while a part was under way is used by its next attempt."""
    from orchestrator.chain.plan import resolve
    from orchestrator.chain.schedule import load
    from orchestrator.part.spec import current_launch

    schedule = chain(tmp_path, {"nodes": 2, "hosts": ["10.0.0.2"], "rdzv_host": "10.0.0.1"})
    raw = json.loads(schedule.read_text())
    raw["stages"][0]["train"] = {"hosts": ["10.0.0.9"]}
    schedule.write_text(json.dumps(raw))
    plan = resolve(load(schedule), schedule)
    assert current_launch(plan, "wiki") == {"launcher": "auto", "hosts": ["10.0.0.9"], "rdzv_host": "10.0.0.1"}
    assert current_launch(plan, "gone") == {}


def test_a_system_unit_lets_the_daemon_reach_the_other_machines():
    from orchestrator.commands.service import unit_text

    one = unit_text(Path("/s/schedule.json"), Path("/s/runs/c"), "c", False, 300, "me")
    several = unit_text(Path("/s/schedule.json"), Path("/s/runs/c"), "c", False, 300, "me", network=True)
    assert "PrivateNetwork=yes" in one and "PrivateNetwork=yes" not in several
