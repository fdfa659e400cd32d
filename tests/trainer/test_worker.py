"""The worker as a real subprocess: training, exact resume after SIGKILL, stop, pause, bad input."""

from __future__ import annotations

import json
import os
import random
import re
import signal
from pathlib import Path

import pytest
import torch

from runtime.atomic import atomic_write_json, read_json
from runtime.checkpoint import sha256_file, step_dirs, verify, write_manifest
from runtime.faults import release
from runtime.workerfiles import EXIT_DONE, EXIT_ERROR, EXIT_NONFINITE, EXIT_STOPPED, Heartbeat, read_model
from tests.helpers import (
    TINY_GPT2,
    TINY_MODEL,
    assert_bitwise_equal,
    checkpoints_every,
    holding,
    make_instruction_dir,
    make_token_dir,
    result_checkpoint,
    run_worker,
    start_worker,
    wait_for,
    wait_held,
    write_spec,
)

EVERY_16 = checkpoints_every(16)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_token_dir(tmp_path_factory.mktemp("data"), parts=2, tokens=40000)


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> Path:
    """part-000 trained without interruption: the final checkpoint folder."""
    root = tmp_path_factory.mktemp("reference")
    spec = write_spec(root / "spec.json", data, "part-000", root / "work")
    assert run_worker(spec, root / "worker.log") == EXIT_DONE, (root / "worker.log").read_text()
    return root / "work" / read_json(root / "work" / "result.json")["checkpoint"]


def heartbeat(work: Path) -> Heartbeat | None:
    return read_model(work / "heartbeat.json", Heartbeat)


def test_part_trains_loss_falls_and_reports(data, reference):
    work = reference.parent.parent
    result = read_json(work / "result.json")
    metrics = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    assert result["step"] == len(metrics) == metrics[-1]["step"]
    assert result["part_tokens"] == 2499 // 4 * 4 * 16  # whole micro-batches of 4 windows x 16 tokens
    assert metrics[-1]["loss"] < metrics[0]["loss"] - 1.0
    assert result["val_loss"] < 3.0  # the bigram table is learnable: ln(64) = 4.16 at random
    assert heartbeat(work).phase == "done"
    assert verify(reference).ok
    assert [p.name for _s, p in step_dirs(work / "ckpt")] == [reference.name]


def test_sigkill_at_random_steps_resumes_bitwise_exact(data, reference, tmp_path):
    """SIGKILLed at four random steps of 312 (held there, so that each kill lands exactly
    where it is aimed), with a checkpoint every 16 steps: each run resumes from the newest
    checkpoint before the last kill, and the part ends bitwise equal to an uninterrupted run."""
    spec = write_spec(tmp_path / "spec.json", data, "part-000", tmp_path / "work")
    log = tmp_path / "worker.log"
    targets = sorted(random.Random(7).sample(range(20, 290), 4))
    for i, target in enumerate(targets):
        holds = tmp_path / f"holds-{i}"
        proc = start_worker(spec, log, extra_env={**EVERY_16, **holding(holds, f"step@{target}")})
        wait_held(holds, f"step@{target}")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert run_worker(spec, log, extra_env=EVERY_16) == EXIT_DONE, log.read_text()[-2000:]
    resumed = [int(s) for s in re.findall(r"resuming from step-\d+: step (\d+)", log.read_text())]
    assert resumed == [t // 16 * 16 for t in targets]
    assert_bitwise_equal(result_checkpoint(tmp_path / "work"), reference)


def test_sigkill_on_instruction_data_resumes_bitwise_exact(tmp_path):
    """The loss mask is data beside the tokens, read through the same window order: a
    part of instruction data resumes exactly too, and reports a response-only val_loss."""
    data = make_instruction_dir(tmp_path / "data", parts=1, windows=480, val_windows=40)
    ref = write_spec(tmp_path / "ref.json", data, "part-000", tmp_path / "ref")
    assert run_worker(ref, tmp_path / "ref.log") == EXIT_DONE, (tmp_path / "ref.log").read_text()[-2000:]
    reference = result_checkpoint(tmp_path / "ref")
    spec = write_spec(tmp_path / "spec.json", data, "part-000", tmp_path / "work")
    log, holds = tmp_path / "worker.log", tmp_path / "holds"
    proc = start_worker(spec, log, extra_env={**EVERY_16, **holding(holds, "step@21")})  # of 60 steps
    wait_held(holds, "step@21")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert run_worker(spec, log, extra_env=EVERY_16) == EXIT_DONE, log.read_text()[-2000:]
    assert "resuming from step-00000016: step 16" in log.read_text()  # five steps lost, and trained again
    assert_bitwise_equal(result_checkpoint(tmp_path / "work"), reference)
    val_loss = read_json(tmp_path / "work" / "result.json")["val_loss"]
    assert val_loss == read_json(tmp_path / "ref" / "result.json")["val_loss"]


@pytest.mark.parametrize("point", ["checkpoint.files-written@2", "checkpoint.manifest.before-rename@3"])
def test_killed_inside_a_save_resumes_bitwise_exact(data, reference, tmp_path, point):
    spec = write_spec(tmp_path / "spec.json", data, "part-000", tmp_path / "work")
    log = tmp_path / "worker.log"
    rc = run_worker(spec, log, extra_env={**EVERY_16, "ORCHESTRATOR_FAULT": point})
    assert rc == -signal.SIGKILL
    assert run_worker(spec, log, extra_env=EVERY_16) == EXIT_DONE, log.read_text()[-2000:]
    assert_bitwise_equal(result_checkpoint(tmp_path / "work"), reference)
    assert not list((tmp_path / "work" / "ckpt").glob(".step-*")), "temporary folders left behind"


def test_sigterm_checkpoints_then_exits_75_and_resume_is_exact(data, reference, tmp_path):
    work = tmp_path / "work"
    spec = write_spec(tmp_path / "spec.json", data, "part-000", work)  # no periodic checkpoint
    log, holds = tmp_path / "worker.log", tmp_path / "holds"
    proc = start_worker(spec, log, extra_env=holding(holds, "step@100"))
    wait_held(holds, "step@100")
    proc.send_signal(signal.SIGTERM)  # ends the hold; the worker saves step 100 and exits
    assert proc.wait(timeout=120) == EXIT_STOPPED
    saved = step_dirs(work / "ckpt")
    assert len(saved) == 1 and saved[0][0] == 100 and verify(saved[0][1]).ok
    assert run_worker(spec, log) == EXIT_DONE
    assert_bitwise_equal(result_checkpoint(work), reference)


def test_memory_plan_lowers_the_micro_batch_and_a_resume_keeps_the_checkpoints(tmp_path):
    """A budget that holds 4 windows but not 8: the worker trains 4 x grad_accum 2 (the same
    8 windows a step). Stopped, then resumed where the budget would allow 8, it keeps the
    checkpoint's 4 and ends bitwise equal to an uninterrupted run at 4."""
    from trainer.memory import MARGIN, need_bytes

    small = make_token_dir(tmp_path / "data", parts=1, tokens=3000)
    fits_four = need_bytes(TINY_MODEL, 4 * 2, "fp32", False).total / MARGIN / 2**30 * 0.999
    assert need_bytes(TINY_MODEL, 4, "fp32", False).total / MARGIN / 2**30 < fits_four
    tight = {"micro_batch": 8, "grad_accum": 1, "memory_gb": fits_four}
    ref = write_spec(tmp_path / "ref.json", small, "part-000", tmp_path / "ref", train=tight)
    assert run_worker(ref, tmp_path / "ref.log") == EXIT_DONE
    assert "memory: micro_batch 8 does not fit; micro_batch 4 x grad_accum 2" in (tmp_path / "ref.log").read_text()
    meta = read_json(result_checkpoint(tmp_path / "ref") / "meta.json")
    assert (meta["micro_batch"], meta["grad_accum"]) == (4, 2)

    work = tmp_path / "work"
    spec = write_spec(tmp_path / "spec.json", small, "part-000", work, train=tight)
    log = tmp_path / "worker.log"
    holds = tmp_path / "holds"
    proc = start_worker(spec, log, extra_env=holding(holds, "step@5"))  # 23 steps: held after the fifth
    wait_held(holds, "step@5")
    proc.send_signal(signal.SIGTERM)  # ends the hold: the worker stops warmly before step 6
    assert proc.wait(timeout=120) == EXIT_STOPPED
    assert read_json(work / "heartbeat.json")["step"] == 5
    roomy = write_spec(tmp_path / "spec.json", small, "part-000", work, train={"micro_batch": 8, "grad_accum": 1})
    assert run_worker(roomy, log) == EXIT_DONE
    assert_bitwise_equal(result_checkpoint(work), result_checkpoint(tmp_path / "ref"))


def test_compile_on_a_cpu_without_a_cpp_compiler_trains_eager_and_says_so(tmp_path):
    small = make_token_dir(tmp_path / "data", parts=1, tokens=600)
    spec = write_spec(tmp_path / "spec.json", small, "part-000", tmp_path / "work", train={"compile": True})
    log = tmp_path / "worker.log"
    assert run_worker(spec, log, extra_env={"CXX": "no-such-compiler-here"}) == EXIT_DONE, log.read_text()[-2000:]
    assert "torch.compile on CPU needs a C++ compiler (no-such-compiler-here not found): eager" in log.read_text()


def test_damaged_newest_checkpoint_is_quarantined_and_older_one_used(data, reference, tmp_path):
    work = tmp_path / "work"
    spec = write_spec(tmp_path / "spec.json", data, "part-000", work)
    log, holds = tmp_path / "worker.log", tmp_path / "holds"
    proc = start_worker(spec, log, extra_env={**EVERY_16, **holding(holds, "step@40")})
    wait_held(holds, "step@40")  # checkpoints at steps 16 and 32
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert [s for s, _ in step_dirs(work / "ckpt")] == [32, 16]
    newest = step_dirs(work / "ckpt")[0][1]
    with open(newest / "model.pt", "r+b") as f:  # flip one byte in the middle
        f.seek(f.seek(0, os.SEEK_END) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    assert run_worker(spec, log) == EXIT_DONE
    assert f"skipping checkpoint {newest.name}: model.pt fails its sha256 checksum" in log.read_text()
    assert any(p.name.endswith(newest.name) for p in (work / "quarantine").iterdir())
    assert_bitwise_equal(result_checkpoint(work), reference)


def test_pause_stops_steps_and_resume_continues(data, tmp_path):
    work = tmp_path / "work"
    spec = write_spec(tmp_path / "spec.json", data, "part-000", work)
    holds = tmp_path / "holds"
    proc = start_worker(spec, tmp_path / "worker.log", extra_env=holding(holds, "step@20"))
    held = wait_held(holds, "step@20")
    atomic_write_json(work / "control.json", {"seq": 1, "pause": True, "reason": "test", "checkpoint": 1})
    release(held)  # the worker reads the pause before its next step
    hb = wait_for(lambda: (hb := heartbeat(work)) and hb.phase == "paused" and hb.control_seq == 1 and hb, what="pause")
    paused_step = hb.step
    assert paused_step == 20
    assert hb.paused_reason == "test"
    assert hb.last_checkpoint_step == paused_step  # checkpoint requested with the pause
    # Still paused after several heartbeats: the step counter does not move.
    later = wait_for(lambda: (h := heartbeat(work)) and h.time > hb.time + 1.0 and h, what="heartbeats while paused")
    assert later.phase == "paused" and later.step == paused_step
    atomic_write_json(work / "control.json", {"seq": 2, "pause": False, "checkpoint": 1})
    wait_for(lambda: (h := heartbeat(work)) and h.step > paused_step, what="resume")
    assert proc.wait(timeout=120) == EXIT_DONE
    assert read_json(work / "result.json")["paused_seconds"] >= 1.0


def test_continues_from_a_starting_checkpoint(data, reference, tmp_path):
    work = tmp_path / "work"
    offset = read_json(reference / "meta.json")["global_tokens"]
    spec = write_spec(
        tmp_path / "spec.json", data, "part-001", work, init_checkpoint=str(reference), token_offset=offset
    )
    assert run_worker(spec, tmp_path / "worker.log") == EXIT_DONE
    result = read_json(work / "result.json")
    assert result["global_tokens"] == offset + result["part_tokens"]
    assert adamw_steps(reference) + result["step"] == adamw_steps(result_checkpoint(work))  # optimizer state carried


def adamw_steps(folder: Path) -> int:
    """The step count of AdamW's moments in a checkpoint (under Muon: the embeddings')."""
    state = torch.load(folder / "optim.pt", weights_only=True)["optimizer"]["state"]
    return int(next(s["step"] for s in state.values() if "step" in s))


def make_old(folder: Path) -> None:
    """Turn a gpt2-family checkpoint into one the previous release wrote: no family in its
    meta.model, no optimizer kind, param groups without peak_lr and role; new checksums."""
    meta = read_json(folder / "meta.json")
    del meta["model"]["family"]
    (folder / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    optim = torch.load(folder / "optim.pt", weights_only=True)
    del optim["kind"]
    for group in optim["optimizer"]["param_groups"]:
        del group["peak_lr"], group["role"]
    torch.save(optim, folder / "optim.pt")
    files = {
        name: (sha256_file(folder / name), (folder / name).stat().st_size)
        for name in ("model.pt", "optim.pt", "rng.pt", "meta.json")
    }
    write_manifest(folder, meta["step"], files)


def test_a_checkpoint_of_the_previous_release_continues_in_the_gpt2_family_with_its_adamw_state(tmp_path):
    small = make_token_dir(tmp_path / "data", parts=2, tokens=1200)
    first = write_spec(tmp_path / "a.json", small, "part-000", tmp_path / "a", model=dict(TINY_GPT2))
    assert run_worker(first, tmp_path / "a.log") == EXIT_DONE, (tmp_path / "a.log").read_text()[-2000:]
    old = result_checkpoint(tmp_path / "a")
    make_old(old)
    assert verify(old).ok and "family" not in read_json(old / "meta.json")["model"]
    offset = read_json(old / "meta.json")["global_tokens"]
    spec = write_spec(
        tmp_path / "b.json",
        small,
        "part-001",
        tmp_path / "b",
        model=dict(TINY_GPT2),
        init_checkpoint=str(old),
        token_offset=offset,
    )
    log = tmp_path / "b.log"
    assert run_worker(spec, log) == EXIT_DONE, log.read_text()[-2000:]
    assert "another optimizer" not in log.read_text()
    new = result_checkpoint(tmp_path / "b")
    assert adamw_steps(old) + read_json(tmp_path / "b" / "result.json")["step"] == adamw_steps(new)
    assert read_json(new / "meta.json")["model"]["family"] == "gpt2"
    # The same old checkpoint is no start for the llama family.
    spec = write_spec(
        tmp_path / "c.json",
        small,
        "part-001",
        tmp_path / "c",
        model=dict(TINY_MODEL),
        init_checkpoint=str(old),
        token_offset=offset,
    )
    rc, out = _bad_run(tmp_path, spec)
    assert rc == EXIT_ERROR and "made for a different model (the gpt2 family, the spec's is llama)" in out


def test_nonfinite_loss_exits_91_naming_the_window(data, tmp_path):
    work = tmp_path / "work"
    spec = write_spec(
        tmp_path / "spec.json", data, "part-000", work, train={"lr": 1e6, "grad_clip": 0, "warmup_tokens": 0}
    )
    assert run_worker(spec, tmp_path / "worker.log") == EXIT_NONFINITE
    report = read_json(work / "error.json")
    assert report["kind"] == "nonfinite"
    start, end = report["window_range"]
    assert end - start == 8  # one optimizer step: micro_batch 4 x grad_accum 2


# -- bad input: one clear message, exit 1, nothing damaged ---------------------------------


def _bad_run(tmp_path, spec) -> tuple[int, str]:
    log = tmp_path / "worker.log"
    rc = run_worker(spec, log)
    return rc, log.read_text()


def test_missing_and_truncated_token_files(data, tmp_path):
    folder = tmp_path / "data"
    manifest = make_token_dir(folder, parts=1, tokens=2000)
    spec = write_spec(tmp_path / "spec.json", manifest, "part-000", tmp_path / "work")
    with open(folder / "part-000.bin", "r+b") as f:
        f.truncate(1000)
    rc, out = _bad_run(tmp_path, spec)
    assert rc == EXIT_ERROR
    assert f"{folder / 'part-000.bin'}: truncated: 1000 bytes, expected 4000" in out
    assert "Traceback" not in out
    assert read_json(tmp_path / "work" / "error.json")["retryable"] is False
    (folder / "part-000.bin").unlink()
    rc, out = _bad_run(tmp_path, spec)
    assert rc == EXIT_ERROR and "part-000.bin: missing" in out


def test_tokenizer_mismatch_and_unknown_spec_key(data, tmp_path):
    spec = write_spec(tmp_path / "spec.json", data, "part-000", tmp_path / "work", tokenizer_sha256="f" * 64)
    rc, out = _bad_run(tmp_path, spec)
    assert rc == EXIT_ERROR and "made with a different tokenizer" in out and str(data) in out
    spec = write_spec(tmp_path / "spec2.json", data, "part-000", tmp_path / "work", train={"micro_btach": 2})
    rc, out = _bad_run(tmp_path, spec)
    assert (
        rc == EXIT_ERROR
        and "train.micro_btach: unknown field (did you mean 'micro_batch'?)" in out
        and "spec2.json" in out
    )


def test_checkpoint_of_another_model_shape_is_refused(data, reference, tmp_path):
    work = tmp_path / "work"
    spec = write_spec(
        tmp_path / "spec.json",
        data,
        "part-001",
        work,
        init_checkpoint=str(reference),
        model={**TINY_MODEL, "n_layer": 3},
    )
    before = sorted(p.name for p in reference.iterdir())
    rc, out = _bad_run(tmp_path, spec)
    assert rc == EXIT_ERROR
    assert "made for a different model (n_layer: checkpoint 2 vs spec 3)" in out
    assert sorted(p.name for p in reference.iterdir()) == before and verify(reference).ok
    assert not step_dirs(work / "ckpt")


# -- on a real GPU (skipped without one) ---------------------------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("compile_", [False, True])
def test_a_part_trains_and_resumes_on_cuda(data, tmp_path, compile_):
    work = tmp_path / "work"
    spec = write_spec(tmp_path / "spec.json", data, "part-000", work, train={"device": "cuda", "compile": compile_})
    log, holds = tmp_path / "worker.log", tmp_path / "holds"
    proc = start_worker(spec, log, extra_env={**EVERY_16, **holding(holds, "step@50")})
    wait_held(holds, "step@50", timeout=600)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert run_worker(spec, log, timeout=600, extra_env=EVERY_16) == EXIT_DONE, log.read_text()[-3000:]
    text = log.read_text()
    assert "resuming from step-00000048" in text and ("compiled" in text) == compile_
    major = torch.cuda.get_device_capability()[0]
    assert heartbeat(work).precision == ("bf16" if major >= 8 else "fp16" if major == 7 else "fp32")
    metrics = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["loss"] < metrics[0]["loss"] - 1.0
