"""The network and its config, in process: config errors name the field, parameter counts,
initialisation, KV-cache generation, seeded sampling."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from model.config import ConfigError, GPTConfig, config_from_dict
from model.gpt import GPT, generate
from tests.helpers import REPO, env

SMALL = GPTConfig(vocab_size=96, block_size=24, n_layer=2, n_head=2, n_embd=32)

def test_config_from_json_names_the_field_and_needs_no_torch():
    code = ("import sys; from model.config import config_from_dict; "
            "c = config_from_dict({'preset': 'gpt2'}); assert 'torch' not in sys.modules; print(c.n_params())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env(), cwd=REPO, check=True)
    assert 124_000_000 < int(out.stdout) < 125_000_000
    with pytest.raises(ConfigError, match=r"model\.n_layr: unknown field"):
        config_from_dict({"n_layr": 2})
    with pytest.raises(ConfigError, match=r"model\.n_head: 5 heads do not divide n_embd=64"):
        config_from_dict({"n_embd": 64, "n_head": 5})
    with pytest.raises(ConfigError, match=r"model\.block_size: expected int"):
        config_from_dict({"block_size": "256"})


def test_param_count_matches_the_torch_free_estimate():
    for cfg in (SMALL, GPTConfig(vocab_size=100, block_size=8, n_layer=1, n_head=1, n_embd=16, bias=True)):
        assert sum(p.numel() for p in GPT(cfg).parameters()) == cfg.n_params()


def test_gpt2_init_scales_residual_projections():
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=64, block_size=8, n_layer=8, n_head=4, n_embd=256)
    model = GPT(cfg)
    proj = model.blocks[0].attn.c_proj.weight.std().item()
    fc = model.blocks[0].mlp.c_fc.weight.std().item()
    assert fc == pytest.approx(0.02, rel=0.05)
    assert proj == pytest.approx(0.02 / (2 * cfg.n_layer) ** 0.5, rel=0.05)
    assert model.lm_head.weight is model.wte.weight


def test_kv_cache_generation_equals_full_recomputation():
    torch.manual_seed(1)
    model = GPT(SMALL).eval()
    prompt = torch.randint(0, SMALL.vocab_size, (2, 5))
    # 40 new tokens run past block_size 24: the window slides and still matches
    cached = torch.cat(list(generate(model, prompt, 40, temperature=0)), dim=1)
    full = torch.cat(list(generate(model, prompt, 40, temperature=0, use_cache=False)), dim=1)
    assert torch.equal(cached, full)


def test_sampling_is_deterministic_with_a_seeded_generator():
    model = GPT(SMALL).eval()
    prompt = torch.zeros((1, 1), dtype=torch.long)
    runs = [torch.cat(list(generate(model, prompt, 20, temperature=1.0, top_k=10,
                                    generator=torch.Generator().manual_seed(3))), 1) for _ in range(2)]
    assert torch.equal(*runs)

