"""A part on several processes under torchrun (gloo on CPU, as on a multi-GPU machine with
NCCL): the same training as one process with the combined batch, exact resume after a
warm stop and after SIGKILL of either rank, and the daemon learning the real exit code
through torchrun (which itself exits 1 for any failure)."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import torch

from runtime.atomic import read_json
from runtime.workerfiles import EXIT_DONE, EXIT_STOPPED, ExitReport, Heartbeat, read_model
from tests.helpers import (
    assert_bitwise_equal,
    env,
    events,
    freeze_worker,
    holding,
    make_chain,
    make_instruction_dir,
    make_token_dir,
    part_of,
    promotions,
    read_state,
    result_checkpoint,
    run_worker,
    start_daemon,
    thaw,
    wait_for,
    wait_held,
    write_spec,
)

TWO = {"gpus": 2, "checkpoint_interval_s": 0.25}


def start_torchrun(spec: Path, log: Path, extra_env: dict | None = None) -> subprocess.Popen:
    with open(log, "ab") as f:
        launcher = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc-per-node=2",
                "-m",
                "trainer.worker",
                "--spec",
                str(spec),
            ],
            stdout=f,
            stderr=subprocess.STDOUT,
            env={**env(), **(extra_env or {})},
            cwd=spec.parent,
        )
    return launcher


def run_torchrun(spec: Path, log: Path) -> int:
    return start_torchrun(spec, log).wait(timeout=300)


def exit_code(work: Path) -> int | None:
    report = read_model(work / "exit.json", ExitReport)
    return report.code if report else None


def ranks(launcher: subprocess.Popen) -> list[psutil.Process]:
    """torchrun's two workers, rank 0 first (the one whose pid the heartbeat carries)."""

    def found():
        kids = [p for p in psutil.Process(launcher.pid).children() if "trainer.worker" in p.cmdline()]
        return kids if len(kids) == 2 else None

    kids = wait_for(found, what="torchrun's two workers")
    return sorted(kids, key=lambda p: 0 if p.environ().get("RANK") == "0" else 1)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    return make_token_dir(tmp_path_factory.mktemp("small"), parts=1, tokens=6000)


@pytest.fixture(scope="module")
def small_instruction(tmp_path_factory) -> Path:
    return make_instruction_dir(tmp_path_factory.mktemp("small_instruction"), parts=1, windows=350)


@pytest.mark.parametrize("kind", ["text", "instruction"])
def test_two_ranks_train_like_one_process_with_twice_the_micro_batch(small, small_instruction, tmp_path, kind):
    """On instruction data the ranks' micro-batches count different numbers of targets: the
    step's loss is still the mean over all of them, as in one process."""
    data = small if kind == "text" else small_instruction
    two = write_spec(tmp_path / "two" / "spec.json", data, "part-000", tmp_path / "two" / "work", train=TWO)
    one = write_spec(
        tmp_path / "one" / "spec.json", data, "part-000", tmp_path / "one" / "work", train={"micro_batch": 8}
    )
    launcher = start_torchrun(two, tmp_path / "two.log")
    assert launcher.wait(timeout=300) == 0, (tmp_path / "two.log").read_text()[-3000:]
    assert run_worker(one, tmp_path / "one.log") == EXIT_DONE

    w2, w1 = tmp_path / "two" / "work", tmp_path / "one" / "work"
    assert exit_code(w2) == EXIT_DONE
    r2, r1 = read_json(w2 / "result.json"), read_json(w1 / "result.json")
    assert (r2["step"], r2["part_tokens"]) == (r1["step"], r1["part_tokens"])
    assert r2["loss"] == pytest.approx(r1["loss"], rel=1e-3)
    hb = read_model(w2 / "heartbeat.json", Heartbeat)
    assert hb.launcher_pid == launcher.pid and hb.pid != launcher.pid
    steps = [json.loads(line)["step"] for line in (w2 / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, r2["step"] + 1))  # rank 0 alone writes the metrics
    a = torch.load(result_checkpoint(w2) / "model.pt", weights_only=True)
    b = torch.load(result_checkpoint(w1) / "model.pt", weights_only=True)
    for k in a:  # the same sums in another order: equal up to rounding
        torch.testing.assert_close(a[k], b[k], atol=1e-3, rtol=1e-3)


def test_any_rank_stopped_or_killed_resumes_bitwise_exact(tmp_path):
    data = make_token_dir(tmp_path / "data", parts=1, tokens=40000)
    ref = write_spec(tmp_path / "ref" / "spec.json", data, "part-000", tmp_path / "ref" / "work", train=TWO)
    assert run_torchrun(ref, tmp_path / "ref.log") == 0, (tmp_path / "ref.log").read_text()[-3000:]

    spec = write_spec(tmp_path / "cut" / "spec.json", data, "part-000", tmp_path / "cut" / "work", train=TWO)
    work, log = tmp_path / "cut" / "work", tmp_path / "cut.log"
    rng = random.Random(7)
    target = 0
    for i, how in enumerate(("SIGTERM to torchrun", "SIGKILL rank 1", "SIGKILL rank 0")):
        target += rng.randint(8, 30)  # of 156 steps; rank 0 is held there (rank 1 waits for it)
        holds = tmp_path / f"holds-{i}"
        launcher = start_torchrun(spec, log, extra_env=holding(holds, f"step@{target}"))
        workers = ranks(launcher)
        wait_held(holds, f"step@{target}")
        if how == "SIGTERM to torchrun":
            launcher.send_signal(signal.SIGTERM)
        else:
            workers[int(how[-1])].send_signal(signal.SIGKILL)
        assert launcher.wait(timeout=120) == 1  # torchrun's code for any failure
        if how.startswith("SIGTERM"):
            assert exit_code(work) == EXIT_STOPPED  # the real one, in exit.json
        assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in workers)
    assert run_torchrun(spec, log) == 0, log.read_text()[-3000:]
    assert_bitwise_equal(result_checkpoint(work), result_checkpoint(tmp_path / "ref" / "work"))


def test_daemon_runs_a_part_on_two_ranks_acts_on_their_exit_code_survives_its_death_and_stops_warmly(tmp_path):
    schedule = make_chain(
        tmp_path,
        parts=1,
        tokens=20000,
        train={"gpus": 2, "checkpoint_interval_s": 0.3},
        stages=[{"name": "wiki", "parts": ["data/wiki"]}],
    )
    run, log = tmp_path / "runs" / "chain", tmp_path / "daemon.log"
    # Every rank runs out of memory at micro_batch 4: torchrun exits 1, exit.json says 90.
    oom = {"ORCHESTRATOR_FAULT_OOM_ABOVE_MICRO_BATCH": "2"}
    first, third = tmp_path / "holds-1", tmp_path / "holds-3"
    daemon = start_daemon(
        schedule, log, "--exit-when-done", extra_env={**oom, **holding(first, "wiki/part-000:step@10")}
    )
    wait_held(first, "wiki/part-000:step@10")  # the retry at micro_batch 2 (of 78 steps)
    frozen = freeze_worker(run, "wiki/part-000")  # torchrun and its ranks, held so the new daemon finds them
    daemon.send_signal(signal.SIGKILL)  # torchrun and its workers live on; rank 0 notices, saves, exits 75
    daemon.wait()
    # adopts torchrun, then relaunches; the third attempt is held at step 30
    daemon = start_daemon(
        schedule, log, "--exit-when-done", extra_env={**oom, **holding(third, "wiki/part-000:step@30")}
    )
    wait_for(lambda: "worker-adopted" in [e["event"] for e in events(run)], timeout=300, what="the adoption")
    thaw(frozen)
    wait_held(third, "wiki/part-000:step@30")
    assert part_of(read_state(run), "wiki/part-000")["attempts"] == 3
    daemon.send_signal(signal.SIGTERM)  # warm: SIGTERM to rank 0, which stops every rank after saving
    assert daemon.wait(timeout=120) == 0, log.read_text()[-3000:]
    worker_log = (run / "work" / "wiki" / "part-000" / "worker.log").read_text()
    assert "death signal" not in worker_log  # torchrun itself was never sent SIGTERM
    daemon = start_daemon(schedule, log, "--exit-when-done", extra_env=oom)
    assert daemon.wait(timeout=300) == 0, log.read_text()[-3000:]

    part = part_of(read_state(run), "wiki/part-000")
    assert part["status"] == "done" and part["failures"] == 0
    assert part["overrides"]["micro_batch"] == 2 and part["overrides"]["grad_accum"] == 4
    assert part["tokens"] == 1249 // 4 * 4 * 16  # whole rounds of 2 ranks x micro_batch 2
    kinds = [e["event"] for e in events(run)]
    assert kinds.index("oom-retry") < kinds.index("worker-adopted") < kinds.index("part-done")
    assert "daemon-stopped" in kinds[: kinds.index("part-done")]  # the warm stop
    assert promotions(run) == {"wiki/part-000": 1}


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs (NCCL)")
def test_two_gpus_train_stop_and_resume(tmp_path):
    data = make_token_dir(tmp_path / "data", parts=1, tokens=40000)
    work = tmp_path / "work"
    spec = write_spec(tmp_path / "spec.json", data, "part-000", work, train={**TWO, "device": "cuda"})
    log = tmp_path / "worker.log"
    holds = tmp_path / "holds"
    launcher = start_torchrun(spec, log, extra_env=holding(holds, "step@30"))
    wait_held(holds, "step@30", timeout=600)  # training on two GPUs
    launcher.send_signal(signal.SIGTERM)
    assert launcher.wait(timeout=120) == 1 and exit_code(work) == EXIT_STOPPED, log.read_text()[-3000:]
    assert run_torchrun(spec, log) == 0, log.read_text()[-3000:]
    assert exit_code(work) == EXIT_DONE and "resuming from step-" in log.read_text()
    assert read_model(work / "heartbeat.json", Heartbeat).device == "cuda:0"
