"""In-process tests of the trainer's pure pieces: param groups, LR curve, data order, precision."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from model.config import GPTConfig
from model.gpt import GPT
from runtime.spec import TrainConfig
from trainer.data import WindowOrder
from trainer.optim import param_groups

SMALL = GPTConfig(vocab_size=96, block_size=24, n_layer=2, n_head=2, n_embd=32)


def test_weight_decay_only_on_matrices():
    model = GPT(GPTConfig(vocab_size=64, block_size=8, n_layer=2, n_head=2, n_embd=32, bias=True))
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert decayed and all(
        n.endswith("weight") and "ln" not in n and "wte" not in n and "wpe" not in n for n in decayed
    )
    assert {"wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias"} <= {names[id(p)] for p in no_decay["params"]}
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_optimizer_and_learning_rates_follow_the_family():
    assert TrainConfig().optimizer_kind("llama") == "muon" and TrainConfig().optimizer_kind("gpt2") == "adamw"
    assert TrainConfig(optimizer="muon").optimizer_kind("gpt2") == "muon"
    assert TrainConfig().adamw_lr("adamw") == 6e-4 and TrainConfig().adamw_lr("muon") == 1e-2
    assert TrainConfig(lr=3e-3).adamw_lr("muon") == 3e-3


def test_window_order_is_a_deterministic_permutation_per_epoch():
    order = WindowOrder(100, epochs=2, seed=1, part_id="s/p")
    windows, cursor = order.take(0, 200)
    assert cursor == 200
    assert sorted(windows[:100]) == list(range(100)) and sorted(windows[100:]) == list(range(100))
    assert not np.array_equal(windows[:100], windows[100:])  # reshuffled each epoch
    again = WindowOrder(100, epochs=2, seed=1, part_id="s/p")
    assert np.array_equal(np.concatenate([again.take(c, 7)[0] for c in range(0, 200, 7)]), windows)
    assert not np.array_equal(WindowOrder(100, 2, 1, "s/q").take(0, 100)[0], windows[:100])


def test_window_order_steps_over_skipped_ranges():
    order = WindowOrder(50, epochs=1, seed=0, part_id="x", skip=[(10, 18)])
    full = WindowOrder(50, epochs=1, seed=0, part_id="x")
    taken, cursor = order.take(8, 4)
    assert cursor == 20
    assert np.array_equal(taken, full.take(8, 12)[0][[0, 1, 10, 11]])
    assert order.usable() == 42


def test_an_aborted_step_rewinds_the_random_generators(tmp_path):
    from pathlib import Path

    from runtime.spec import DataRef, WorkerSpec
    from tests.helpers import make_token_dir
    from trainer import optim
    from trainer.data import Batches
    from trainer.device import Placement
    from trainer.loop import Progress, Trainer
    from trainer.tokenfile import open_part

    manifest = make_token_dir(tmp_path, parts=1, tokens=4000, val_tokens=0)
    part = open_part(manifest, "part-000")
    cfg = GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.2)
    train = TrainConfig(micro_batch=4, grad_accum=4)
    spec = WorkerSpec(
        part_id="s/p",
        stage="s",
        work_dir=Path(tmp_path),
        data=DataRef(manifest=manifest, part="part-000"),
        model=cfg.to_dict(),
        train=train,
        chain_total_tokens=10_000,
    )
    placement = Placement(torch.device("cpu"), "fp32", compile=False, threads=None, why="test")
    model = GPT(cfg)
    opt = optim.build(model, train, placement.device)
    trainer = Trainer(
        spec,
        placement,
        model,
        opt,
        torch.amp.GradScaler("cpu", enabled=False),
        WindowOrder(part.n_windows, 1, 0, "s/p"),
        Batches(part, 16, placement.device),
        Progress(),
    )
    before = torch.get_rng_state()
    calls = iter(range(100))
    assert trainer.step(lambda: next(calls) >= 2) is None  # abandoned after two micro-batches (dropout drew)
    assert torch.equal(torch.get_rng_state(), before)
    assert trainer.progress.cursor == 0 and all(p.grad is None for p in model.parameters())


def test_precision_follows_the_compute_capability():
    from trainer.device import cuda_precision
    from trainer.errors import BadInput

    assert cuda_precision("auto", (9, 0), "H100") == "bf16"
    assert cuda_precision("auto", (8, 6), "RTX 3090") == "bf16"
    assert cuda_precision("auto", (7, 5), "T4") == "fp16"
    assert cuda_precision("auto", (6, 1), "GTX 1050") == "fp32"  # Pascal: not the emulated bf16
    assert cuda_precision("fp16", (6, 1), "GTX 1050") == "fp16"  # on request, for memory
    with pytest.raises(BadInput, match="bf16 is only emulated on GTX 1050"):
        cuda_precision("bf16", (6, 1), "GTX 1050")


def test_muon_groups_orthogonalized_updates_and_state_that_survives_a_round_trip():
    from model.build import build
    from model.config import config_from_dict
    from trainer import optim
    from trainer.muon import MuonAdamW, orthogonalize

    g = torch.randn(3, 48, 16)
    s = torch.linalg.svdvals(orthogonalize(g))
    assert s.min() > 0.5 and s.max() < 1.3  # the quintic's band around 1 (not exactly 1: by design)

    cfg = config_from_dict(
        {
            "family": "llama",
            "vocab_size": 64,
            "block_size": 8,
            "n_layer": 2,
            "n_head": 2,
            "n_embd": 32,
            "tie_embeddings": False,
        }
    )
    torch.manual_seed(0)
    model = build(cfg)
    train = TrainConfig(lr=1e-2, muon_lr=0.02)
    opt = optim.build(model, train, torch.device("cpu"))
    assert isinstance(opt, MuonAdamW)
    names = {id(p): n for n, p in model.named_parameters()}
    roles = {g["role"]: {names[id(p)] for p in g["params"]} for g in opt.param_groups}
    assert all(n.endswith("_proj.weight") for n in roles["matrices"]) and len(roles["matrices"]) == 2 * 7
    assert roles["embeddings"] == {"model.embed_tokens.weight"}
    assert "lm_head.weight" in roles["output and gains"] and "model.norm.weight" in roles["output and gains"]
    assert [g["peak_lr"] for g in opt.param_groups] == [0.02, 1e-2, 1e-2]

    def one_step(o):
        x = torch.randint(0, 64, (2, 8))
        model(x, x)[1].backward()
        o.step()
        o.zero_grad(set_to_none=True)

    torch.manual_seed(1)
    one_step(opt)
    state = copy.deepcopy(opt.state_dict())  # state_dict() holds the live tensors
    assert {"momentum_buffer"} <= set().union(*(s.keys() for s in state["state"].values()))
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(2)
    one_step(opt)
    after = {k: v.clone() for k, v in model.state_dict().items()}
    # Back to the saved point, through a new optimizer loaded from the state dict: the same step.
    model.load_state_dict(weights)
    again = optim.build(model, train, torch.device("cpu"))
    again.load_state_dict(state)
    optim.apply_config(again, model, train)
    torch.manual_seed(2)
    one_step(again)
    assert all(torch.equal(after[k], v) for k, v in model.state_dict().items())


def test_the_loop_scales_each_groups_own_peak_rate(tmp_path):
    from pathlib import Path

    from model.build import build
    from model.config import config_from_dict
    from runtime.spec import DataRef, WorkerSpec
    from tests.helpers import make_token_dir
    from trainer import optim
    from trainer.data import Batches
    from trainer.device import Placement
    from trainer.loop import Progress, Trainer
    from trainer.tokenfile import open_part

    manifest = make_token_dir(tmp_path, parts=1, tokens=4000, val_tokens=0)
    part = open_part(manifest, "part-000")
    cfg = config_from_dict(
        {"family": "llama", "vocab_size": 64, "block_size": 16, "n_layer": 1, "n_head": 2, "n_embd": 32}
    )
    train = TrainConfig(micro_batch=4, grad_accum=1, warmup_tokens=640, lr=1e-2, muon_lr=0.04)
    spec = WorkerSpec(
        part_id="s/p",
        stage="s",
        work_dir=Path(tmp_path),
        data=DataRef(manifest=manifest, part="part-000"),
        model=cfg.to_dict(),
        train=train,
        chain_total_tokens=100_000,
        lr_scale=0.5,
    )
    model = build(cfg)
    opt = optim.build(model, train, torch.device("cpu"))
    trainer = Trainer(
        spec,
        Placement(torch.device("cpu"), "fp32", False, None, "test"),
        model,
        opt,
        torch.amp.GradScaler("cpu", enabled=False),
        WindowOrder(part.n_windows, 1, 0, "s/p"),
        Batches(part, 16, torch.device("cpu")),
        Progress(),
    )
    r = trainer.step(lambda: False)  # 64 tokens of a 640-token warmup, halved by lr_scale
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.04 * 0.05, 1e-2 * 0.05, 1e-2 * 0.05])
    assert r.lr == pytest.approx(1e-2 * 0.05)
