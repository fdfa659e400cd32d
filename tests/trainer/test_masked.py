"""The loss mask of instruction data, in process: ignored targets, the step's loss as the
mean over its targets however they fall into micro-batches, and a response-only
validation loss."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model.config import GPTConfig
from model.gpt import GPT
from runtime.spec import DataRef, TrainConfig, WorkerSpec
from runtime.tokens import load_manifest
from tests.helpers import make_instruction_dir, make_token_dir
from trainer.data import IGNORE, Batches, WindowOrder
from trainer.device import Placement
from trainer.errors import BadInput
from trainer.evaluate import mean_loss
from trainer.loop import Progress, Trainer
from trainer.tokenfile import open_part

CFG = GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32)
CPU = Placement(torch.device("cpu"), "fp32", compile=False, threads=None, why="test")


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    return make_instruction_dir(tmp_path_factory.mktemp("instr"), parts=1, windows=48, val_windows=24)


def per_token_loss(model: GPT, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits, _ = model(x)
    return F.cross_entropy(
        logits.float().reshape(-1, logits.size(-1)), y.reshape(-1).clamp(min=0), reduction="none"
    ).view_as(y)


def test_batches_ignore_what_the_mask_does_not_count(manifest):
    part = open_part(manifest, "part-000")
    batches = Batches(part, 16, torch.device("cpu"))
    windows = np.array([3, 0, 7])
    x, y = batches.get(windows)
    rows = np.stack([np.asarray(part.tokens[s : s + 17]) for s in part.starts[windows].astype(np.int64)])
    counted = np.stack([np.asarray(part.mask[s + 1 : s + 17]) for s in part.starts[windows].astype(np.int64)]) == 1
    assert torch.equal(x, torch.from_numpy(rows[:, :-1].astype(np.int64)))  # inputs keep every token
    assert torch.equal(y[torch.from_numpy(counted)], torch.from_numpy(rows[:, 1:][counted].astype(np.int64)))
    assert bool((y[torch.from_numpy(~counted)] == IGNORE).all())
    assert batches.targets(windows) == int(counted.sum()) < 3 * 16
    assert (
        Batches(
            open_part(make_token_dir(manifest.parent / "text", parts=1, val_tokens=0), "part-000"),
            16,
            torch.device("cpu"),
        ).targets(windows)
        == 3 * 16
    )  # a text part counts every target


def test_the_model_averages_over_the_counted_targets_only(manifest):
    torch.manual_seed(0)
    model = GPT(CFG)
    x, y = Batches(open_part(manifest, "part-000"), 16, torch.device("cpu")).get(np.arange(6))
    _, loss = model(x, y)
    expected = per_token_loss(model, x, y)[y != IGNORE].mean()
    assert torch.allclose(loss, expected, atol=1e-6)


def _trainer(manifest: Path, micro_batch: int, grad_accum: int, model: GPT) -> Trainer:
    part = open_part(manifest, "part-000")
    train = TrainConfig(
        micro_batch=micro_batch, grad_accum=grad_accum, grad_clip=0, warmup_tokens=0, lr=1.0, lr_schedule="constant"
    )
    spec = WorkerSpec(
        part_id="s/p",
        stage="s",
        work_dir=manifest.parent,
        data=DataRef(manifest=manifest, part="part-000"),
        model=CFG.to_dict(),
        train=train,
        chain_total_tokens=10_000,
    )
    sgd = torch.optim.SGD(model.parameters(), lr=1.0)  # the update is the gradient itself
    for group in sgd.param_groups:
        group["peak_lr"] = 1.0  # what the loop scales by the schedule (trainer.optim's groups carry it)
    return Trainer(
        spec,
        CPU,
        model,
        sgd,
        torch.amp.GradScaler("cpu", enabled=False),
        WindowOrder(part.n_windows, 1, 0, "s/p"),
        Batches(part, 16, CPU.device),
        Progress(),
    )


def test_a_steps_loss_and_gradient_are_the_mean_over_all_its_targets(manifest):
    torch.manual_seed(1)
    start = GPT(CFG)
    split, whole = copy.deepcopy(start), copy.deepcopy(start)
    a = _trainer(manifest, micro_batch=2, grad_accum=4, model=split).step(lambda: False)
    b = _trainer(manifest, micro_batch=8, grad_accum=1, model=whole).step(lambda: False)
    # the same 8 windows: one micro-batch of 8, or four of 2 with different target counts
    windows, _ = WindowOrder(48, 1, 0, "s/p").take(0, 8)
    x, y = Batches(open_part(manifest, "part-000"), 16, CPU.device).get(windows)
    expected = per_token_loss(start, x, y)[y != IGNORE].mean().item()
    assert a.loss == pytest.approx(expected, abs=1e-5) and b.loss == pytest.approx(expected, abs=1e-5)
    for p, q in zip(split.parameters(), whole.parameters()):
        assert torch.allclose(p, q, atol=1e-6)
    # the plain mean of the micro-batches' means would be a different loss
    plain = np.mean(
        [
            per_token_loss(start, x[i : i + 2], y[i : i + 2])[y[i : i + 2] != IGNORE].mean().item()
            for i in range(0, 8, 2)
        ]
    )
    assert abs(plain - expected) > 1e-3


def test_validation_loss_is_the_response_loss(manifest):
    torch.manual_seed(2)
    model = GPT(CFG)
    val = open_part(manifest, "val")
    batches = Batches(val, 16, CPU.device)
    windows = np.arange(val.n_windows)
    x, y = batches.get(windows)
    expected = per_token_loss(model, x, y)[y != IGNORE].mean().item()
    assert mean_loss(model, CPU, batches, windows, micro_batch=5) == pytest.approx(expected, abs=1e-5)


def test_a_window_without_a_target_is_refused(tmp_path):
    from dataprep.writer import write_part
    from runtime.tokens import write_manifest

    manifest_path = make_instruction_dir(tmp_path, parts=1, windows=8, val_windows=0)
    manifest = load_manifest(manifest_path)
    tokens = np.fromfile(tmp_path / "part-000.bin", dtype="<u2")
    mask = np.fromfile(tmp_path / "part-000.mask", dtype=np.uint8)
    mask[17 * 3 + 1 : 17 * 4] = 0  # window 3 counts nothing (its first token is never a target anyway)
    info = write_part(tmp_path, "part-000", tokens, np.arange(8, dtype=np.uint64) * 17, 8, "uint16", mask)
    write_manifest(tmp_path, manifest.model_copy(update={"parts": [info]}))
    with pytest.raises(BadInput, match=r"window 3 \(of 8\) has no loss target"):
        open_part(manifest_path, "part-000")
