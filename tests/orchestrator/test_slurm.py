"""`orchestrator slurm`: the batch script it writes, the mistakes it refuses, and the script
itself run by bash as Slurm would (SIGTERM before the time limit: a warm stop, then
`scontrol requeue`), with a stand-in scontrol. Against a real Slurm cluster only when one
answers (tests/slurm/start-cluster.sh starts one of two nodes on this machine)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from orchestrator.cli import main
from tests.helpers import env, events, holding, make_chain, part_of, read_state, wait_for, wait_held

PART = "wiki/part-000"


def chain(root: Path, train: dict | None = None, **kw) -> Path:
    return make_chain(root, parts=1, tokens=6000, train=train, stages=[{"name": "wiki", "parts": ["data/wiki"]}], **kw)


def sbatch_lines(script: Path) -> list[str]:
    return [line.removeprefix("#SBATCH ") for line in script.read_text().splitlines() if line.startswith("#SBATCH")]


def test_the_script_asks_for_the_nodes_requeues_and_is_signalled_before_the_limit(tmp_path, capsys):
    schedule = chain(tmp_path, {"nodes": 2, "gpus": 4}, supervisor={"stop_grace_s": 120})
    code = main(
        ["slurm", "--schedule", str(schedule), "--nodes", "2", "--gpus-per-node", "4", "--time", "1-00:00:00"]
        + ["--partition", "gpu", "--cpus-per-task", "32", "--sbatch=--mem=64G"]
    )
    assert code == 0
    script = tmp_path / "chain.sbatch"
    assert f"sbatch {script}" in capsys.readouterr().out
    assert os.access(script, os.X_OK)
    assert sbatch_lines(script) == [
        "--job-name=orchestrator-chain",
        "--nodes=2",
        "--ntasks-per-node=1",
        "--gpus-per-node=4",
        "--cpus-per-task=32",
        "--time=1-00:00:00",
        "--partition=gpu",
        "--requeue",
        "--signal=B:TERM@180",  # the warm stop's grace and a minute
        f"--output={tmp_path}/slurm-chain-%j.out",
        "--open-mode=append",
        "--mem=64G",
    ]
    text = script.read_text()
    assert f"-m orchestrator run --schedule {schedule} --run-dir {tmp_path}/runs/chain --exit-when-done &" in text
    assert 'scontrol requeue "$SLURM_JOB_ID"' in text and 'export SRUN_CPUS_PER_TASK="$SLURM_CPUS_PER_TASK"' in text
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0


@pytest.mark.parametrize(
    "train, flags, says",
    [
        ({"nodes": 3}, ["--nodes", "2", "--gpus-per-node", "1"], "train.nodes 3 machines, but --nodes is 2"),
        ({"gpus": 8}, ["--nodes", "1", "--gpus-per-node", "4"], "train.gpus 8 GPUs per machine"),
        (
            {"nodes": 2, "launcher": "ssh", "hosts": ["b"]},
            ["--nodes", "2", "--gpus-per-node", "1"],
            "launcher ssh; inside a Slurm allocation",
        ),
        ({}, ["--nodes", "1", "--gpus-per-node", "1", "--time", "5"], "--time 5 leaves no time to train"),
        ({}, ["--nodes", "1", "--gpus-per-node", "1", "--time", "soon"], "--time: 'soon' is not one of Slurm's"),
        ({}, ["--nodes", "1", "--gpus-per-node", "1", "--sbatch=--mem=1G\nrm -rf /"], "is not one sbatch option"),
        ({}, ["--nodes", "0", "--gpus-per-node", "1"], "--nodes"),
    ],
)
def test_a_mistake_exits_1_saying_what_to_change(tmp_path, capsys, train, flags, says):
    schedule = chain(tmp_path, train)
    assert main(["slurm", "--schedule", str(schedule), *flags]) == 1
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err
    assert not (tmp_path / "chain.sbatch").exists()


def test_the_script_stops_the_daemon_warmly_on_the_signal_requeues_and_resumes(tmp_path):
    """bash runs the script as Slurm's batch step would; SIGTERM to it (--signal=B:TERM) stops
    the daemon warmly and queues the job again; run again, it resumes and finishes, not queued again."""
    schedule = chain(tmp_path)
    assert main(["slurm", "--schedule", str(schedule), "--nodes", "1", "--gpus-per-node", "0"]) == 0
    bin_dir, calls = tmp_path / "bin", tmp_path / "scontrol.calls"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (bin_dir / "scontrol").chmod(0o755)
    holds, run = tmp_path / "holds", tmp_path / "runs" / "chain"
    job_env = {**env(), "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242"}
    with open(tmp_path / "job.out", "ab") as out:
        job = subprocess.Popen(
            ["bash", str(tmp_path / "chain.sbatch")],
            env={**job_env, **holding(holds, f"{PART}:step@5")},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    wait_held(holds, f"{PART}:step@5")
    job.send_signal(signal.SIGTERM)
    assert job.wait(timeout=300) == 0, (tmp_path / "job.out").read_text()[-3000:]
    assert calls.read_text() == "requeue 4242\n"
    kinds = [e["event"] for e in events(run)]
    assert "daemon-stopping" in kinds and "worker-failed" not in kinds
    assert part_of(read_state(run), PART)["status"] == "pending"

    with open(tmp_path / "job.out", "ab") as out:  # the job, queued again
        job = subprocess.run(["bash", str(tmp_path / "chain.sbatch")], env=job_env, stdout=out, timeout=300)
    assert job.returncode == 0, (tmp_path / "job.out").read_text()[-3000:]
    assert calls.read_text() == "requeue 4242\n"  # done: not queued again
    resumed = [e for e in events(run) if e["event"] == "part-started"][-1]
    assert "resuming at step 5" in resumed["message"]
    assert part_of(read_state(run), PART)["status"] == "done"


def slurm_answers() -> bool:
    if os.environ.get("ORCHESTRATOR_TEST_SLURM") != "1" or shutil.which("sbatch") is None:
        return False
    return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=30).returncode == 0


@pytest.mark.skipif(
    not slurm_answers(), reason="no Slurm cluster (ORCHESTRATOR_TEST_SLURM=1, tests/slurm/start-cluster.sh)"
)
def test_a_two_node_chain_runs_under_sbatch(tmp_path):
    """A real sbatch: the daemon on the first node, each part's second agent started by srun
    on the other (two slurmd on this machine stand in for two machines)."""
    schedule = make_chain(
        tmp_path, parts=2, tokens=6000, train={"nodes": 2}, stages=[{"name": "wiki", "parts": ["data/wiki"]}]
    )
    assert main(["slurm", "--schedule", str(schedule), "--nodes", "2", "--gpus-per-node", "0"]) == 0
    submitted = subprocess.run(
        ["sbatch", "--parsable", str(tmp_path / "chain.sbatch")],
        capture_output=True,
        text=True,
        env=env(),
        cwd=tmp_path,
    )
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip().split(";")[0]
    run = tmp_path / "runs" / "chain"

    def finished():
        q = subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True)
        return q.returncode == 0 and not q.stdout.strip()

    try:
        wait_for(finished, timeout=600, what=f"Slurm job {job}", interval=1)
    finally:
        subprocess.run(["scancel", job])
    out = (tmp_path / f"slurm-chain-{job}.out").read_text()
    assert "every part is done" in out, out[-3000:]
    state = read_state(run)
    assert [p["status"] for p in state["parts"]] == ["done", "done"]
