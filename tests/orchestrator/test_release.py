"""Cooled releases: a branch every k parts that decays the learning rate, evaluated and kept
in releases/, with the chain itself exactly as it would be without them; a release
survives SIGKILLs of its worker and of the daemon exactly; the commands find releases."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from tests.helpers import (
    REPO,
    assert_bitwise_equal,
    assert_lineage,
    checkpoints_every,
    cli,
    events,
    holding,
    read_state,
    start_daemon,
    wait_held,
)

pytestmark = pytest.mark.slow

CORPUS = REPO / "orchestrator" / "demo_corpus" / "enwiki-excerpt-pages-articles.xml.bz2"
NAME = "0002-wiki-part-001"  # the release after the chain's second part


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A real tokenizer and real text, prepared in small parts (the commands need a tokenizer)."""
    root = tmp_path_factory.mktemp("release-data")
    tok = root / "tok" / "t.model"
    # generous ceilings: both are real work, slow on a busy machine
    trained = cli("tokenizer", "train", "-i", str(CORPUS), "--vocab-size", "600", "--out", str(tok), "-q", timeout=300)
    assert trained.returncode == 0, trained.stderr
    out = cli(
        "prepare",
        "-i",
        str(CORPUS),
        "--tokenizer",
        str(tok),
        "--out",
        str(root / "wiki"),
        "--part-tokens",
        "8000",
        "--block-size",
        "16",
        "--val-fraction",
        "0.05",
        "-q",
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    return root


def chain(root: Path, data: Path, release: dict | None = None, parts: int = 3, **train) -> Path:
    """A chain of the first `parts` parts; its learning-rate curve spans a fixed total, so it
    is the same curve however many parts are queued."""
    root.mkdir(parents=True, exist_ok=True)
    schedule = {
        "name": "chain",
        "model": {"block_size": 16, "n_layer": 2, "n_head": 2, "n_embd": 32},
        "tokenizer": str(data / "tok" / "t.model"),
        "train": {
            "micro_batch": 4,
            "grad_accum": 2,
            "lr": 3e-3,
            "warmup_tokens": 2048,
            "cpu_threads": 1,
            "heartbeat_interval_s": 0.2,
            "eval_windows": 8,
            "total_tokens": 24_000,
            **train,
        },
        "eval": {"windows": 16},
        "supervisor": {"backoff_s": 0.2, "heartbeat_timeout_s": 60},
        "stages": [{"name": "wiki", "parts": [str(data / "wiki" / f"part-00{i}.bin") for i in range(parts)]}],
    }
    if release:
        schedule["release"] = release
    path = root / "schedule.json"
    path.write_text(json.dumps(schedule, indent=2))
    return path


RELEASE = {"every_parts": 2, "decay_fraction": 0.5}


@pytest.fixture(scope="module")
def with_releases(data, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("with")
    schedule = chain(root, data, RELEASE)
    assert start_daemon(schedule, root / "daemon.log", "--exit-when-done").wait(timeout=600) == 0, (
        root / "daemon.log"
    ).read_text()[-3000:]
    assert_lineage(root / "runs" / "chain")
    return root / "runs" / "chain"


@pytest.fixture(scope="module")
def without(data, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("without")
    schedule = chain(root, data)
    assert start_daemon(schedule, root / "daemon.log", "--exit-when-done").wait(timeout=600) == 0
    return root / "runs" / "chain"


def meta(folder: Path) -> dict:
    return json.loads((folder / "meta.json").read_text())


def test_a_release_every_two_parts_cools_a_branch_and_leaves_the_chain_exactly_as_without(with_releases, without):
    run, plain = with_releases, without
    state, ref = read_state(run), read_state(plain)
    assert [(p["id"], p["status"], p["tokens"], p["checkpoint"]) for p in state["parts"]] == [
        (p["id"], p["status"], p["tokens"], p["checkpoint"]) for p in ref["parts"]
    ]
    assert (state["global_tokens"], state["latest_checkpoint"]) == (ref["global_tokens"], ref["latest_checkpoint"])
    assert (run / "checkpoints" / "LATEST").read_text() == (plain / "checkpoints" / "LATEST").read_text()
    for part in state["parts"]:  # the chain never saw the release: every promoted checkpoint is the same
        assert_bitwise_equal(run / part["checkpoint"], plain / part["checkpoint"])

    (rel,) = state["releases"]  # three parts, every second: one release
    assert rel["name"] == NAME and rel["status"] == "done" and rel["checkpoint"] == f"releases/{NAME}"
    assert sorted(p.name for p in (run / "releases").iterdir()) == [NAME]
    m = meta(run / "releases" / NAME)
    assert m["part_id"] == f"release:{NAME}" and m["start"] == NAME and m["done"]
    assert m["global_tokens"] - m["part_tokens"] == rel["branch_tokens"] == meta(run / rel["branch"])["global_tokens"]
    assert m["part_tokens"] == rel["decay_tokens"] == rel["tokens"] > 0
    assert abs(rel["decay_tokens"] - 0.5 * rel["branch_tokens"]) <= 4 * 2 * 16  # whole steps of the cool-down

    lines = [json.loads(line) for line in (run / "metrics" / "releases" / f"{NAME}.jsonl").read_text().splitlines()]
    lrs = [line["lr"] for line in lines]
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] == 0.0 and lrs[0] > 0  # a straight fall to the floor
    evals = [json.loads(line) for line in (run / "evals.jsonl").read_text().splitlines()]
    cooled = next(e for e in evals if e["checkpoint"] == f"releases/{NAME}")
    assert cooled["source"] == "release" and cooled["branch_tokens"] == rel["branch_tokens"]
    assert set(cooled["sets"]) == {"wiki"} and rel["eval"] == {"wiki": cooled["sets"]["wiki"]["loss"]}
    assert not any((run / "work").iterdir())  # the release's scratch is gone
    assert [e["event"] for e in events(run) if e.get("part") == f"release:{NAME}"] == [
        "release-queued",
        "release-started",
        "release-done",
    ]
    assert cli("fsck", "--run-dir", str(run)).returncode == 0


def test_a_release_survives_sigkills_of_its_worker_and_of_the_daemon_exactly(with_releases, data, tmp_path):
    schedule = chain(tmp_path, data, RELEASE, parts=2)  # up to the release
    run, log, holds = tmp_path / "runs" / "chain", tmp_path / "daemon.log", tmp_path / "holds"
    scratch = run / "work" / ".releases" / NAME / "ckpt"
    # The release's worker is held after its first checkpoint, the relaunched one after its
    # second: each kill finds the release under way, with a checkpoint to resume from.
    rid = f"release:{NAME}"  # the release's part id, which scopes the holds

    def release() -> dict:
        return next(iter(read_state(run).get("releases", [])), {})

    def newest() -> int:
        return max(int(p.name[5:]) for p in scratch.glob("step-*"))

    # a checkpoint every 4 steps (the release trains about 60)
    held = {**holding(holds, f"{rid}:checkpoint@1", f"{rid}:checkpoint@2"), **checkpoints_every(4)}
    daemon = start_daemon(schedule, log, extra_env=held)
    wait_held(holds, f"{rid}:checkpoint@1")
    assert release()["status"] == "running" and release()["attempts"] == 1
    first = newest()
    os.kill(release()["worker_pid"], signal.SIGKILL)
    wait_held(holds, f"{rid}:checkpoint@2")  # the relaunched worker's second checkpoint
    assert release()["status"] == "running" and release()["attempts"] == 2
    second = newest()
    assert second > first, "the relaunched release did not checkpoint further"
    daemon.send_signal(signal.SIGKILL)  # its worker notices (which ends its hold) and exits
    daemon.wait(timeout=30)

    # ... and the next daemon dies right after renaming the release into releases/: the one
    # after it records the promotion from the folder
    fired = tmp_path / "fired"
    crash = {"ORCHESTRATOR_FAULT": "release.after-rename", "ORCHESTRATOR_FAULT_ONCE": str(fired)}
    assert start_daemon(schedule, log, "--exit-when-done", extra_env=crash).wait(timeout=600) == -signal.SIGKILL
    assert fired.exists() and (run / "releases" / NAME).is_dir() and release()["status"] != "done"
    assert start_daemon(schedule, log, "--exit-when-done").wait(timeout=600) == 0, log.read_text()[-3000:]
    rel = release()
    assert rel["status"] == "done" and rel["attempts"] >= 3, rel
    assert "promotion-completed" in [e["event"] for e in events(run) if e.get("part") == f"release:{NAME}"]
    assert_bitwise_equal(run / "releases" / NAME, with_releases / "releases" / NAME)
    assert meta(run / "releases" / NAME)["global_tokens"] == meta(with_releases / "releases" / NAME)["global_tokens"]
    assert "worker-failed" in [e["event"] for e in events(run) if e.get("part") == f"release:{NAME}"]
    # each relaunch resumed where the kill left the release: its newest checkpoint
    starts = [e["message"] for e in events(run) if e["event"] == "release-started"]
    assert f"resuming at step {first})" in starts[1] and f"resuming at step {second})" in starts[2], starts
    assert_lineage(run)


def test_status_compare_sample_and_export_find_a_release(with_releases, data, tmp_path):
    run = with_releases
    status = json.loads(cli("status", "--json", "--run-dir", str(run)).stdout)
    (rel,) = status["releases"]
    assert rel["id"] == f"release:{NAME}" and rel["status"] == "done" and rel["eval"]
    assert "releases" in cli("status", "--run-dir", str(run)).stdout

    table = json.loads(cli("compare", "--json", "--run-dir", str(run)).stdout)
    rows = [r["checkpoint"] for r in table["rows"]]
    assert rows.index(f"releases/{NAME}") == rows.index(f"checkpoints/{NAME}") + 1  # beside its branch
    assert next(r for r in table["rows"] if r["checkpoint"] == f"releases/{NAME}")["release"]

    args = ("--prompt", "The history of", "--temperature", "0", "--max-tokens", "8", "--run-dir", str(run))
    by_name = cli("sample", "--checkpoint", f"release:{NAME}", *args)
    latest = cli("sample", "--checkpoint", "release:latest", *args)
    assert by_name.returncode == 0, by_name.stderr
    assert by_name.stdout == latest.stdout and by_name.stdout.startswith("The history of")
    missing = cli("sample", "--checkpoint", "release:nope", *args)
    assert missing.returncode == 1 and NAME in missing.stderr and "Traceback" not in missing.stderr

    out = cli(
        "export",
        "--checkpoint",
        f"release:{NAME}",
        "--run-dir",
        str(run),
        "--out",
        str(tmp_path / "pt"),
        "--format",
        "pt",
    )
    assert out.returncode == 0, out.stderr
    assert f"release:{NAME}" in (tmp_path / "pt" / "README.md").read_text()
