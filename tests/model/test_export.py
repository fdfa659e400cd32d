"""Export conversions, in process: a model trained here on real Turkish text, written as a
Hugging Face folder and as GGUF, loaded back by transformers (and llama.cpp where
llama-cpp-python is installed) and compared with our own forward pass and tokenizer."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from model.config import GPTConfig
from model.export import families, gguf, hf, tokenizer
from model.export import spm as spm_file
from model.export.spm import BYTE, CONTROL, NORMAL, UNKNOWN, USER_DEFINED
from model.generate import generate
from model.gpt import GPT
from tests.helpers import REPO, cli

transformers = pytest.importorskip("transformers")

CORPUS = REPO / "tests" / "data" / "tr-ataturk-speeches-excerpt.txt.gz"
SAMPLING = {"temperature": 0.8, "top_k": 50, "top_p": 0.95, "repetition_penalty": 1.1, "max_new_tokens": 100}
# Text the corpus lacks: circumflex vowels, digits, URLs, e-mail, chat markers, runs of
# spaces, tabs and newlines, and characters outside the vocabulary (byte fallback).
EXTRA = [
    "Yegâne hedefimiz hâkimiyet-i milliyedir; kâğıt, kâr, Hâlâ ümitsiz değiliz. Âdet, İstanbul'da.",
    "29 Ekim 1923'te saat 20.30'da 1.250.000 kişi; %12,5 artış, 3/4 oranında, 0 ile 9876543210 arası.",
    "Kaynak: https://tr.wikipedia.org/wiki/Mustafa_Kemal_Atat%C3%BCrk?oldid=12345#Hayat%C4%B1 ve "
    "http://www.tbmm.gov.tr/ (e-posta: bilgi@ornek.com.tr)",
    "<|system|>Sen yardımcı bir asistansın.\n<|user|>Vergi nedir?\n<|assistant|>Vergi, devletin gelir kaynağıdır.",
    "  iki  boşluk   ve\tsekme\n\nyeni paragraf \n",
    "Emoji 😀, matematik ∑ ½ ≠, 中文, Ελληνικά, русский: hepsi bayt olarak.",
    "",
    " ",
    "\n",
    "a",
    "<|user|>",
]


def corpus_lines() -> list[str]:
    return [line for line in gzip.open(CORPUS, "rt", encoding="utf-8").read().split("\n") if line.strip()]


@pytest.fixture(scope="module")
def tok_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tok")
    found = {}
    for kind in ("bpe", "unigram"):
        out = root / f"{kind}.model"
        # unigram trains ten times slower: a sample of the corpus does for the comparison
        sample = ["--sample-sentences", "1000"] if kind == "unigram" else []
        made = cli(
            "tokenizer",
            "train",
            "-i",
            str(CORPUS),
            "--vocab-size",
            "1000",
            "--out",
            str(out),
            "-q",
            "--workers",
            "0",
            "--model-type",
            kind,
            *sample,
        )
        assert made.returncode == 0, made.stderr
        found[kind] = out
    return found


@pytest.fixture(scope="module")
def trained(tok_models) -> tuple[GPT, Path]:
    """A GPT-2-family model trained a hundred-odd steps on the corpus (real weights, not
    the initialisation), small enough to train in seconds on one thread."""
    import sentencepiece as spm

    torch.set_num_threads(1)
    torch.manual_seed(0)
    sp = spm.SentencePieceProcessor(model_file=str(tok_models["bpe"]))
    ids = torch.tensor([i for line in corpus_lines() for i in [sp.eos_id(), *sp.encode(line)]])
    cfg = GPTConfig(vocab_size=1024, block_size=64, n_layer=2, n_head=2, n_embd=64)
    model = GPT(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(120):
        starts = torch.randint(0, len(ids) - cfg.block_size - 1, (8,), generator=g)
        x = torch.stack([ids[s : s + cfg.block_size] for s in starts])
        y = torch.stack([ids[s + 1 : s + cfg.block_size + 1] for s in starts])
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 6.2  # it learned something (uniform guessing: ln 1000 = 6.9)
    return model.eval(), tok_models["bpe"]


def hf_export(model: GPT, tok: Path, folder: Path, dtype: str = "f32") -> tuple[dict, dict]:
    sp = spm_file.read(tok)
    family = families.FAMILIES["gpt2"]
    special = families.Special(tokenizer.start_id(sp), sp.eos_id, sp.pad_id)
    config = family.hf_config(model.config.to_dict(), special)
    tensors = family.hf_tensors(model.state_dict(), model.config.to_dict())
    folder.mkdir(parents=True, exist_ok=True)
    hf.write(folder, hf_config=config, tensors=tensors, spm=sp, dtype=dtype, sampling=SAMPLING)
    return config, tensors


def prompt_ids(tok: Path, text: str) -> list[int]:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tok))
    return [sp.eos_id(), *sp.encode(text)]


# -- the tokenizer ---------------------------------------------------------------------


def test_the_model_file_reads_as_sentencepiece_sees_it(tok_models):
    import sentencepiece as spm

    for path in tok_models.values():
        sp = spm.SentencePieceProcessor(model_file=str(path))
        model = spm_file.read(path)
        assert [p.text for p in model.pieces] == [sp.id_to_piece(i) for i in range(sp.vocab_size())]
        assert all(p.score == pytest.approx(sp.get_score(i)) for i, p in enumerate(model.pieces))
        assert model.ids_of(UNKNOWN) == [0] and model.ids_of(CONTROL) == [1, 2]
        assert model.ids_of(USER_DEFINED) == [3, 4, 5, 6]  # "\n" and the chat markers
        assert model.ids_of(BYTE) == [i for i in range(sp.vocab_size()) if sp.is_byte(i)]
        assert (model.eos_id, model.pad_id, model.bos_id) == (1, 2, -1)
        assert model.byte_fallback and model.normalizer == "identity" and not model.add_dummy_prefix
    assert spm_file.read(tok_models["bpe"]).model_type == "bpe"
    assert spm_file.read(tok_models["unigram"]).model_type == "unigram"
    with pytest.raises(spm_file.SpmError):
        spm_file.parse(b"\x08\x96\x01")  # a protobuf message without pieces


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_the_hf_tokenizer_gives_sentencepiece_ids_and_text(kind, tok_models, tmp_path):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tok_models[kind]))
    model = spm_file.read(tok_models[kind])
    for name, content in (
        ("tokenizer.json", tokenizer.tokenizer_json(model)),
        ("tokenizer_config.json", tokenizer.tokenizer_config(model, 128)),
        ("special_tokens_map.json", tokenizer.special_tokens(model)),
    ):
        hf._json(tmp_path / name, content)
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    texts = corpus_lines() + EXTRA
    differ = [t for t in texts if tok(t, add_special_tokens=False).input_ids != sp.encode(t)]
    assert differ == [], f"{len(differ)} of {len(texts)} texts tokenize differently, e.g. {differ[0]!r}"
    for t in texts:
        ids = sp.encode(t)
        assert tok.decode(ids) == sp.decode(ids) == t
        assert tok(t).input_ids == [sp.eos_id(), *ids]  # a prompt starts after a document end
    assert tok.decode(sp.encode(EXTRA[3]), skip_special_tokens=True) == EXTRA[3].replace("<|system|>", "").replace(
        "<|user|>", ""
    ).replace("<|assistant|>", "")  # chat markers are special, "\n" is not
    assert (tok.eos_token_id, tok.bos_token_id, tok.pad_token_id, tok.unk_token_id) == (1, 1, 2, 0)


def test_bpe_merges_rank_by_the_merged_pieces_score(tok_models):
    model = spm_file.read(tok_models["bpe"])
    score = {p.text: p.score for p in model.pieces if p.type == NORMAL}
    ranked = [score[a + b] for a, b in tokenizer.merges(model)]
    assert ranked == sorted(ranked, reverse=True) and len(ranked) >= len(score) - 300


# -- Hugging Face ----------------------------------------------------------------------


def test_transformers_runs_the_export_as_gpt2_with_our_logits_and_greedy_text(trained, tmp_path):
    model, tok = trained
    hf_export(model, tok, tmp_path / "hf")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert type(theirs).__name__ == "GPT2LMHeadModel"
    text = corpus_lines()[5][:300]
    ids = torch.tensor([prompt_ids(tok, text)[:64]])
    with torch.no_grad():
        ours, _ = model(ids)
        diff = (theirs(ids).logits - ours).abs().max().item()
    assert diff < 1e-4, diff

    prompt = torch.tensor([prompt_ids(tok, "Türk milleti")])
    mine = torch.cat(list(generate(model, prompt, 32, temperature=0.0)), dim=1)[0].tolist()
    with torch.no_grad():
        out = theirs.generate(
            prompt, max_new_tokens=32, do_sample=False, repetition_penalty=1.0, attention_mask=torch.ones_like(prompt)
        )[0, prompt.size(1) :].tolist()
    eos = 1
    assert out == (mine[: mine.index(eos) + 1] if eos in mine else mine)  # HF stops at the document end
    assert len(out) == 32

    config = transformers.AutoConfig.from_pretrained(tmp_path / "hf")
    assert (config.n_positions, config.vocab_size, config.tie_word_embeddings) == (64, 1024, True)
    generation = transformers.GenerationConfig.from_pretrained(tmp_path / "hf")
    assert (generation.eos_token_id, generation.repetition_penalty, generation.top_k) == (1, 1.1, 50)


def test_a_model_with_biases_exports_them(tmp_path, tok_models):
    torch.manual_seed(1)
    model = GPT(GPTConfig(vocab_size=1024, block_size=32, n_layer=1, n_head=2, n_embd=32, bias=True)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    hf_export(model, tok_models["bpe"], tmp_path / "hf")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ids = torch.tensor([prompt_ids(tok_models["bpe"], "Ordular, ilk hedefiniz Akdeniz'dir")])
    with torch.no_grad():
        assert (theirs(ids).logits - model(ids)[0]).abs().max().item() < 1e-4


# -- GGUF ------------------------------------------------------------------------------


def gguf_export(config: dict, tensors: dict, tok: Path, path: Path, dtype: str, kind: str = "gpt2") -> Path:
    gguf.write(
        path,
        arch=families.GGUF_ARCHS[kind],
        hf_config=config,
        tensors=tensors,
        spm=spm_file.read(tok),
        dtype=dtype,
        name="test",
        description="from a test",
    )
    return path


def test_gguf_carries_the_vocabulary_metadata_and_weights(trained, tmp_path):
    from gguf import GGUFReader

    model, tok = trained
    config, tensors = hf_export(model, tok, tmp_path / "hf")
    reader = GGUFReader(gguf_export(config, tensors, tok, tmp_path / "m.gguf", "f32"))

    def field(key):
        return reader.get_field(key).contents()

    sp = spm_file.read(tok)
    assert field("general.architecture") == "gpt2" and field("tokenizer.ggml.model") == "llama"
    assert field("tokenizer.ggml.tokens")[: len(sp.pieces)] == [p.text for p in sp.pieces]
    assert len(field("tokenizer.ggml.tokens")) == 1024  # padded to the embedding rows
    assert field("tokenizer.ggml.token_type")[:8] == [UNKNOWN, CONTROL, CONTROL] + [USER_DEFINED] * 4 + [BYTE]
    assert field("tokenizer.ggml.token_type")[1000:] == [5] * 24  # unused padding
    assert (
        field("tokenizer.ggml.bos_token_id"),
        field("tokenizer.ggml.eos_token_id"),
        field("tokenizer.ggml.padding_token_id"),
        field("tokenizer.ggml.add_bos_token"),
    ) == (1, 1, 2, True)
    assert (field("gpt2.context_length"), field("gpt2.block_count"), field("gpt2.embedding_length")) == (64, 2, 64)
    weights = {t.name: np.array(t.data) for t in reader.tensors}
    state = model.state_dict()
    assert np.array_equal(weights["token_embd.weight"], state["wte.weight"].numpy())
    assert np.array_equal(weights["blk.1.attn_qkv.weight"], state["blocks.1.attn.c_attn.weight"].numpy())
    assert np.array_equal(weights["blk.0.ffn_down.weight"], state["blocks.0.mlp.c_proj.weight"].numpy())
    assert not weights["blk.0.attn_qkv.bias"].any()  # no biases in our model: zeros


@pytest.mark.parametrize("dtype, tolerance", [("f32", 1e-4), ("f16", 2e-2), ("q8_0", 1e-1)])
def test_transformers_reads_the_gguf_back_with_our_logits(trained, tmp_path, dtype, tolerance):
    model, tok = trained
    config, tensors = hf_export(model, tok, tmp_path)
    path = gguf_export(config, tensors, tok, tmp_path / f"m-{dtype}.gguf", dtype)
    # transformers' GGUF config mapping reads gpt2's context length into n_ctx, not
    # n_positions (the position table's size): give it the config
    theirs = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, gguf_file=path.name, config=transformers.AutoConfig.from_pretrained(tmp_path)
    ).eval()
    ids = torch.tensor([prompt_ids(tok, corpus_lines()[7][:300])[:64]])
    with torch.no_grad():
        diff = (theirs(ids).logits - model(ids)[0]).abs().max().item()
    assert diff < tolerance, diff


def random_hf_model(kind: str):
    """A random LlamaForCausalLM or Qwen3ForCausalLM (grouped KV heads; Qwen3 with its own
    head size and QK-norm, tied embeddings), every weight drawn so a mix-up shows."""
    torch.manual_seed(0)
    common = dict(
        vocab_size=1024,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rms_norm_eps=1e-6,
        bos_token_id=1,
        eos_token_id=1,
        pad_token_id=2,
    )
    if kind == "llama":
        config = transformers.LlamaConfig(**common, tie_word_embeddings=False)
        model = transformers.LlamaForCausalLM(config)
    else:
        config = transformers.Qwen3Config(**common, head_dim=32, tie_word_embeddings=True)
        model = transformers.Qwen3ForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    tensors = dict(model.state_dict())
    if config.tie_word_embeddings:
        tensors.pop("lm_head.weight")
    return model.eval(), config, tensors


@pytest.mark.parametrize("kind", ["llama", "qwen3"])
def test_llama_and_qwen3_gguf_round_trip_through_transformers(kind, tok_models, tmp_path):
    model, config, tensors = random_hf_model(kind)
    path = gguf_export(config.to_dict(), tensors, tok_models["bpe"], tmp_path / f"{kind}.gguf", "f32", kind)
    # transformers' qwen3 GGUF mapping ignores attention.key_length (head_dim): give the config
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, config=config).eval()
    ids = torch.randint(0, 1000, (1, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (theirs(ids).logits - model(ids).logits).abs().max().item() < 1e-4


@pytest.mark.parametrize("kind", ["llama", "qwen3"])
def test_the_llama_family_exports_as_llama_or_qwen3(kind, tok_models, tmp_path):
    """The llama family's config (as model.config.GPTConfig resolves it) and state dict
    (Hugging Face's names: the family is built with them) become an HF folder that
    transformers runs with the reference model's logits. Unusual eps and theta values, so
    a setting lost on the way shows in the logits."""
    qwen3 = kind == "qwen3"
    ours = {
        "family": "llama",
        "vocab_size": 1024,
        "block_size": 128,
        "n_layer": 2,
        "n_head": 4,
        "n_embd": 64,
        "dropout": 0.0,
        "bias": False,
        "n_kv_head": 2,
        "intermediate_size": 160,
        "rope_theta": 500.0,
        "norm_eps": 0.01,
        "qk_norm": qwen3,
        "tie_embeddings": qwen3,
    }
    common = dict(
        vocab_size=1024,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rms_norm_eps=0.01,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0},
        tie_word_embeddings=qwen3,
    )
    torch.manual_seed(0)
    reference = (
        transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**common, head_dim=16))
        if qwen3
        else transformers.LlamaForCausalLM(transformers.LlamaConfig(**common))
    ).eval()
    with torch.no_grad():
        for p in reference.parameters():
            p.normal_(0, 0.1)
    sp = spm_file.read(tok_models["bpe"])
    family = families.FAMILIES[families.family_of(ours)]
    config = family.hf_config(ours, families.Special(1, 1, 2))
    tensors = family.hf_tensors(reference.state_dict(), ours)
    assert ("lm_head.weight" in tensors) != qwen3  # a tied head is written once
    hf.write(tmp_path, hf_config=config, tensors=tensors, spm=sp, dtype="f32", sampling=SAMPLING)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(theirs).__name__ == ("Qwen3ForCausalLM" if qwen3 else "LlamaForCausalLM")
    ids = torch.tensor([prompt_ids(tok_models["bpe"], corpus_lines()[2][:200])[:100]])
    with torch.no_grad():
        assert (theirs(ids).logits - reference(ids).logits).abs().max().item() < 1e-5


def test_interleaving_rope_rows_pairs_each_heads_halves():
    w = torch.arange(8).repeat_interleave(2).view(8, 2).float()  # one head of 8 rows: 0..3 first half, 4..7 second
    assert families.interleave_rope_rows(w, 1)[:, 0].tolist() == [0, 4, 1, 5, 2, 6, 3, 7]


# -- llama.cpp (where llama-cpp-python is installed; see docs/evaluation.md) -------------


def llama_cpp_model(path: Path, n_ctx: int = 128):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (docs/evaluation.md)")
    return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, logits_all=True, n_threads=1, verbose=False)


def llama_cpp_logits(llm, ids: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)])


@pytest.mark.llama_cpp
def test_llama_cpp_runs_the_gguf_with_our_tokens_logits_and_greedy_text(trained, tmp_path):
    import sentencepiece as spm

    model, tok = trained
    config, tensors = hf_export(model, tok, tmp_path)
    llm = llama_cpp_model(gguf_export(config, tensors, tok, tmp_path / "m.gguf", "f32"), n_ctx=64)
    sp = spm.SentencePieceProcessor(model_file=str(tok))
    texts = corpus_lines() + [t for t in EXTRA if t]
    differ = [t for t in texts if llm.tokenize(t.encode(), add_bos=False, special=False) != sp.encode(t)]
    assert differ == [], f"{len(differ)} of {len(texts)} texts tokenize differently, e.g. {differ[0]!r}"
    assert llm.tokenize(b"Merhaba") == [1, *sp.encode("Merhaba")]  # the document start first

    ids = prompt_ids(tok, corpus_lines()[5][:300])[:64]
    with torch.no_grad():
        ours = model(torch.tensor([ids]))[0][0].numpy()
    assert np.abs(llama_cpp_logits(llm, ids) - ours).max() < 1e-2

    prompt = prompt_ids(tok, "Türk milleti")
    mine = torch.cat(list(generate(model, torch.tensor([prompt]), 32, temperature=0.0)), dim=1)[0].tolist()
    llm.reset()
    llm.eval(prompt)
    theirs = []
    for _ in range(32):
        theirs.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval([theirs[-1]])
    assert theirs == mine


@pytest.mark.llama_cpp
@pytest.mark.parametrize("kind", ["llama", "qwen3"])
def test_llama_cpp_runs_llama_and_qwen3_gguf_like_transformers(kind, tok_models, tmp_path):
    model, config, tensors = random_hf_model(kind)
    llm = llama_cpp_model(gguf_export(config.to_dict(), tensors, tok_models["bpe"], tmp_path / "m.gguf", "f32", kind))
    ids = torch.randint(0, 1000, (40,), generator=torch.Generator().manual_seed(0)).tolist()
    with torch.no_grad():
        ours = model(torch.tensor([ids])).logits[0].numpy()
    assert np.abs(llama_cpp_logits(llm, ids) - ours).max() < 1e-3
