"""The memory planner, torch-free: estimates that grow the right way, plans that keep the
step's windows, and the presets on the cards they are meant for (bench/memory.py checks
the estimates against measured peaks)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from model.config import config_from_dict
from tests.helpers import REPO, env
from trainer.memory import CUDA_CONTEXT_BYTES, need_bytes, plan

GiB = 2**30


def test_the_planner_imports_no_torch():
    code = (
        "import sys; from trainer.memory import plan; "
        "p = plan({'preset': 'mini', 'vocab_size': 16000}, 2 * 2**30, 8, 8, 'fp32', True); "
        "assert 'torch' not in sys.modules; print(p.micro_batch)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env(), cwd=REPO)
    assert out.returncode == 0, out.stderr


def test_estimates_grow_with_the_batch_and_shrink_with_checkpointing():
    cfg = config_from_dict({"family": "llama", "preset": "small", "vocab_size": 16000})
    one, two = need_bytes(cfg, 1, "fp32", True), need_bytes(cfg, 2, "fp32", True)
    assert one.states == two.states and two.activations == 2 * one.activations
    assert one.overhead == CUDA_CONTEXT_BYTES and need_bytes(cfg, 1, "fp32", False).overhead == 0
    saved = need_bytes(cfg, 2, "fp32", True, checkpointing=True)
    assert saved.activations < two.activations / 2 and saved.states == two.states
    # Muon keeps one moment for the matrices, AdamW two for everything.
    assert need_bytes(cfg, 1, "fp32", True, "muon").states < need_bytes(cfg, 1, "fp32", True, "adamw").states
    assert need_bytes(cfg, 1, "fp16", True).states > one.states  # the half-precision weight copies


def test_plan_keeps_the_steps_windows_and_checkpoints_only_when_nothing_else_fits():
    cfg = {"family": "llama", "preset": "mini", "vocab_size": 16000}
    roomy = plan(cfg, 64 * GiB, 8, 8, "fp32", True)
    assert (roomy.micro_batch, roomy.grad_accum, roomy.checkpointing, roomy.fits) == (8, 8, False, True)
    between = need_bytes(cfg, 2, "fp32", True).total / 0.9 + 1
    tight = plan(cfg, int(between), 8, 8, "fp32", True)
    assert (tight.micro_batch, tight.grad_accum, tight.checkpointing) == (2, 32, False)
    assert plan(cfg, int(between), 6, 1, "fp32", True).micro_batch == 2  # a divisor of the 6 windows
    big = {"family": "llama", "preset": "gpt2", "vocab_size": 50304}
    just_ckpt = need_bytes(big, 1, "fp32", True, checkpointing=True).total / 0.9 + 1
    assert just_ckpt < need_bytes(big, 1, "fp32", True).total / 0.9
    forced = plan(big, int(just_ckpt), 8, 8, "fp32", True)
    assert (forced.micro_batch, forced.grad_accum, forced.checkpointing, forced.fits) == (1, 64, True, True)
    hopeless = plan(cfg, GiB // 4, 8, 8, "fp32", True)
    assert not hopeless.fits and "does NOT fit" in hopeless.describe()


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("preset,card_gb", [("mini", 2), ("small", 2), ("gpt2", 4)])
def test_presets_train_in_fp32_on_the_cards_they_are_for(family, preset, card_gb):
    """GTX 1050 (2 GB) and 1050 Ti (4 GB): fp32, 16k and GPT-2's 50k vocabularies."""
    for vocab in (16000, 50304):
        p = plan({"family": family, "preset": preset, "vocab_size": vocab}, card_gb * GiB, 8, 8, "fp32", True)
        assert p.fits and p.micro_batch * p.grad_accum == 64, p.describe()
