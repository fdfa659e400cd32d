"""The network and its config, in process: config errors name the field, parameter counts,
initialisation, KV-cache generation, seeded sampling."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from model.build import build
from model.config import ConfigError, GPTConfig, config_from_dict, normalized
from model.generate import generate
from model.gpt import GPT
from tests.helpers import REPO, env

SMALL = GPTConfig(vocab_size=96, block_size=24, n_layer=2, n_head=2, n_embd=32)


def test_config_from_json_names_the_field_and_needs_no_torch():
    code = (
        "import sys; from model.config import config_from_dict; "
        "c = config_from_dict({'preset': 'gpt2'}); assert 'torch' not in sys.modules; print(c.n_params())"
    )
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
    runs = [
        torch.cat(
            list(generate(model, prompt, 20, temperature=1.0, top_k=10, generator=torch.Generator().manual_seed(3))), 1
        )
        for _ in range(2)
    ]
    assert torch.equal(*runs)


# -- the llama family ----------------------------------------------------------------------

LLAMA = dict(family="llama", vocab_size=96, block_size=24, n_layer=2, n_head=4, n_embd=32)
QWEN3 = dict(LLAMA, qk_norm=True, tie_embeddings=False, n_kv_head=2, rope_theta=500.0, norm_eps=1e-6)


def test_a_stored_config_without_family_is_gpt2_and_family_options_stay_in_their_family():
    old = {"vocab_size": 64, "block_size": 16, "n_layer": 2, "n_head": 2, "n_embd": 32, "dropout": 0.0, "bias": False}
    assert config_from_dict(old).family == "gpt2"
    assert normalized(old) == {**old, "family": "gpt2"}
    assert config_from_dict({"n_layer": 2}, family="llama").family == "llama"
    with pytest.raises(ConfigError, match=r"model\.qk_norm: an option of the llama family"):
        config_from_dict({**old, "qk_norm": True})
    with pytest.raises(ConfigError, match=r"model\.bias: an option of the gpt2 family"):
        config_from_dict({**LLAMA, "bias": True})
    with pytest.raises(ConfigError, match=r"model\.n_kv_head: 3 must divide n_head=4"):
        config_from_dict({**LLAMA, "n_kv_head": 3})
    cfg = config_from_dict(LLAMA)
    assert cfg.n_kv_head == 4 and cfg.intermediate_size == 128  # 8/3 x 32, up to a multiple of 64
    assert normalized(cfg.to_dict()) == cfg.to_dict()  # defaults are stored resolved
    assert (cfg.hf_architecture, config_from_dict(QWEN3).hf_architecture) == ("LlamaForCausalLM", "Qwen3ForCausalLM")


@pytest.mark.parametrize("raw", [LLAMA, QWEN3], ids=["llama", "qwen3"])
def test_llama_family_param_count_cache_and_checkpointing(raw):
    cfg = config_from_dict(raw)
    torch.manual_seed(1)
    model = build(cfg)
    assert sum(p.numel() for p in model.parameters()) == cfg.n_params()
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == cfg.tie_embeddings
    assert not any("rope" in k for k in model.state_dict())
    model.eval()
    prompt = torch.randint(0, cfg.vocab_size, (2, 5))
    cached = torch.cat(list(generate(model, prompt, 40, temperature=0)), dim=1)
    full = torch.cat(list(generate(model, prompt, 40, temperature=0, use_cache=False)), dim=1)
    assert torch.equal(cached, full)
    # Activation checkpointing recomputes the same numbers: the same gradients.
    model.train()
    x, y = torch.randint(0, cfg.vocab_size, (2, 2, 24))
    grads = []
    for on in (False, True):
        model.checkpointing = on
        model.zero_grad()
        model(x, y)[1].backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))


@pytest.mark.parametrize("raw", [LLAMA, QWEN3], ids=["llama", "qwen3"])
def test_llama_family_is_hugging_faces_architecture_exactly(raw):
    """Our state dict loads into transformers' class by name, and the logits agree."""
    transformers = pytest.importorskip("transformers")
    cfg = config_from_dict(raw)
    torch.manual_seed(2)
    model = build(cfg).eval()
    for p in model.parameters():  # norm gains too: a swapped or missing gain would show
        torch.nn.init.normal_(p, std=0.3)
    common = dict(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.n_embd,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head,
        num_key_value_heads=cfg.kv_heads,
        head_dim=cfg.head_dim,
        max_position_embeddings=cfg.block_size,
        rms_norm_eps=cfg.norm_eps,
        rope_theta=cfg.rope_theta,
        tie_word_embeddings=cfg.tie_embeddings,
        attention_bias=False,
    )
    arch = cfg.hf_architecture.removesuffix("ForCausalLM")
    hf_cfg = getattr(transformers, f"{arch}Config")(**common)
    assert (
        getattr(hf_cfg, "rope_theta", None) in (None, cfg.rope_theta)
        or hf_cfg.rope_parameters["rope_theta"] == cfg.rope_theta
    )
    hf = getattr(transformers, cfg.hf_architecture)(hf_cfg).eval()
    result = hf.load_state_dict(model.state_dict(), strict=False)
    assert not result.missing_keys and not result.unexpected_keys
    idx = torch.randint(0, cfg.vocab_size, (2, cfg.block_size))
    with torch.no_grad():
        ours, _ = model(idx)
        theirs = hf(idx).logits
    assert torch.allclose(ours, theirs, atol=1e-5), (ours - theirs).abs().max()
