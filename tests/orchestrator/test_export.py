"""`orchestrator export` on a checkpoint a real worker trained on Turkish text: each format
loads where it should and names its checkpoint; a user's mistake gets one paragraph and exit 1."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.helpers import REPO, cli, run_worker, write_spec

CORPUS = REPO / "tests" / "data" / "tr-ataturk-speeches-excerpt.txt.gz"
TEXT = "Türk milleti, istiklal ve hürriyetine kavuşmak için yegâne hedefine 1923'te ulaştı."


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("export")
    tok = root / "tok" / "t.model"
    made = cli(
        "tokenizer", "train", "-i", str(CORPUS), "--vocab-size", "1000", "--out", str(tok), "-q", "--workers", "0"
    )
    assert made.returncode == 0, made.stderr
    out = cli(
        "prepare",
        "-i",
        str(CORPUS),
        "--tokenizer",
        str(tok),
        "--out",
        str(root / "data"),
        "--parts",
        "8",
        "--block-size",
        "64",
        "--val-fraction",
        "0.1",
        "-q",
        "--workers",
        "0",
    )
    assert out.returncode == 0, out.stderr
    manifest = root / "data" / "manifest.json"
    sha = json.loads(manifest.read_text())["tokenizer"]["sha256"]
    spec = write_spec(
        root / "spec.json",
        manifest,
        "part-000",
        root / "work",
        tokenizer_sha256=sha,
        model={"vocab_size": 1024, "block_size": 64, "n_layer": 2, "n_head": 2, "n_embd": 64},
        train={"micro_batch": 16, "grad_accum": 1, "eval_windows": 4},
    )
    assert run_worker(spec, root / "worker.log") == 0, (root / "worker.log").read_text()[-2000:]
    return root / "work" / json.loads((root / "work" / "result.json").read_text())["checkpoint"], tok


@pytest.fixture(scope="module")
def trained_llama(trained, tmp_path_factory) -> Path:
    """The same data, the default family of new chains (Llama/Qwen3-shaped, with QK-norm): a
    checkpoint a real worker trained, as the daemon would have it train."""
    root = tmp_path_factory.mktemp("export-llama")
    manifest = trained[0].parents[2] / "data" / "manifest.json"
    sha = json.loads(manifest.read_text())["tokenizer"]["sha256"]
    spec = write_spec(
        root / "spec.json",
        manifest,
        "part-000",
        root / "work",
        tokenizer_sha256=sha,
        model={"family": "llama", "vocab_size": 1024, "block_size": 64, "n_layer": 2, "n_head": 2, "n_embd": 64},
        train={"micro_batch": 16, "grad_accum": 1, "eval_windows": 4},
    )
    assert run_worker(spec, root / "worker.log") == 0, (root / "worker.log").read_text()[-2000:]
    return root / "work" / json.loads((root / "work" / "result.json").read_text())["checkpoint"]


def test_the_llama_family_runs_in_transformers_as_hf_and_as_gguf(trained, trained_llama, tmp_path):
    transformers = pytest.importorskip("transformers")

    _, tok = trained
    model, meta = ours(trained_llama)
    out = cli("export", "--checkpoint", str(trained_llama), "--tokenizer", str(tok), "--out", str(tmp_path / "hf"))
    assert out.returncode == 0, out.stderr
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"][0] in ("LlamaForCausalLM", "Qwen3ForCausalLM")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ids = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")(TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        assert (theirs(ids).logits - model(ids)[0]).abs().max().item() < 1e-4
        greedy = theirs.generate(ids, max_new_tokens=32, do_sample=False, repetition_penalty=1.0)[0, ids.shape[1] :]
    from model.generate import generate

    with torch.no_grad():
        mine = torch.cat(list(generate(model, ids, 32, temperature=0)), dim=1)[0]
    assert greedy.tolist() == mine[: len(greedy)].tolist()

    out = cli(
        "export",
        "--checkpoint",
        str(trained_llama),
        "--tokenizer",
        str(tok),
        "--out",
        str(tmp_path / "g"),
        "--format",
        "gguf",
        "--name",
        "tr-llama",
    )
    assert out.returncode == 0, out.stderr
    gguf = next((tmp_path / "g").glob("*.gguf"))
    back = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "g", gguf_file=gguf.name, config=transformers.AutoConfig.from_pretrained(tmp_path / "hf")
    ).eval()
    with torch.no_grad():
        assert (back(ids).logits - model(ids)[0]).abs().max().item() < 1e-3
    assert meta.part_id in (tmp_path / "g" / "README.md").read_text()


def ours(checkpoint: Path):
    from trainer.inference import load_model

    torch.set_num_threads(1)
    return load_model(checkpoint, torch.device("cpu"))


def test_hf_is_the_default_and_transformers_runs_it_as_ours(trained, tmp_path):
    transformers = pytest.importorskip("transformers")
    import sentencepiece as spm

    checkpoint, tok = trained
    out = cli("export", "--checkpoint", str(checkpoint), "--tokenizer", str(tok), "--out", str(tmp_path / "tr-gpt"))
    assert out.returncode == 0, out.stderr
    folder = tmp_path / "tr-gpt"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [
            "config.json",
            "model.safetensors",
            "generation_config.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "special_tokens_map.json",
            "README.md",
        ]
    )
    assert not list(tmp_path.glob(".tr-gpt.tmp-*"))  # the staging folder became the export
    model, meta = ours(checkpoint)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(folder)
    sp = spm.SentencePieceProcessor(model_file=str(tok))
    ids = hf_tok(TEXT, return_tensors="pt").input_ids
    assert ids[0].tolist() == [sp.eos_id(), *sp.encode(TEXT)]
    with torch.no_grad():
        assert (theirs(ids).logits - model(ids)[0]).abs().max().item() < 1e-4
    card = (folder / "README.md").read_text()
    assert meta.part_id in card and f"{meta.global_tokens:,}" in card and f"{meta.val_loss:.4f}" in card
    assert str(checkpoint) in card


def test_gguf_is_one_file_with_a_modelfile_and_names_its_checkpoint(trained, tmp_path):
    from gguf import GGUFReader

    checkpoint, tok = trained
    out = cli(
        "export",
        "--checkpoint",
        str(checkpoint),
        "--tokenizer",
        str(tok),
        "--out",
        str(tmp_path / "g"),
        "--format",
        "gguf",
        "--dtype",
        "q8_0",
        "--name",
        "tr-gpt",
    )
    assert out.returncode == 0, out.stderr
    folder = tmp_path / "g"
    assert sorted(p.name for p in folder.iterdir()) == ["Modelfile", "README.md", "tr-gpt-q8_0.gguf"]
    reader = GGUFReader(folder / "tr-gpt-q8_0.gguf")
    _, meta = ours(checkpoint)
    assert reader.get_field("general.name").contents() == "tr-gpt"
    assert meta.part_id in reader.get_field("general.description").contents()
    assert {t.tensor_type.name for t in reader.tensors} == {"Q8_0", "F32"}  # matrices quantized, vectors not
    modelfile = (folder / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./tr-gpt-q8_0.gguf\n") and "PARAMETER repeat_penalty 1.1" in modelfile
    assert meta.part_id in (folder / "README.md").read_text()


def test_pt_keeps_the_projects_own_files(trained, tmp_path):
    from model.config import config_from_dict
    from model.gpt import GPT

    checkpoint, tok = trained
    out = cli(
        "export",
        "--checkpoint",
        str(checkpoint),
        "--tokenizer",
        str(tok),
        "--out",
        str(tmp_path / "pt"),
        "--format",
        "pt",
    )
    assert out.returncode == 0, out.stderr
    config = json.loads((tmp_path / "pt" / "config.json").read_text())
    GPT(config_from_dict(config["model"])).load_state_dict(torch.load(tmp_path / "pt" / "model.pt", weights_only=True))
    assert (tmp_path / "pt" / "tokenizer.model").read_bytes() == tok.read_bytes()
    assert config["part"] in (tmp_path / "pt" / "README.md").read_text()


def test_a_users_mistake_gets_one_paragraph_and_exit_1(trained, tmp_path):
    checkpoint, tok = trained
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "something").write_text("x")
    damaged = tmp_path / "lone" / "checkpoints" / checkpoint.name
    shutil.copytree(checkpoint, damaged)
    lone = tmp_path / "lone2" / "checkpoints" / checkpoint.name
    shutil.copytree(checkpoint, lone)
    with open(damaged / "model.pt", "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    other_tok = tmp_path / "other.model"
    other_tok.write_bytes(tok.read_bytes() + b"\0")
    base = ("export", "--checkpoint", str(checkpoint), "--tokenizer", str(tok))
    cases = [
        ((*base, "--out", str(taken)), "exists and is not an empty folder"),
        (
            ("export", "--checkpoint", str(damaged), "--tokenizer", str(tok), "--out", str(tmp_path / "a")),
            "model.pt fails its sha256 checksum",
        ),
        (("export", "--checkpoint", str(lone), "--out", str(tmp_path / "b")), "cannot find the tokenizer"),
        (
            ("export", "--checkpoint", str(checkpoint), "--tokenizer", str(other_tok), "--out", str(tmp_path / "c")),
            "not the tokenizer",
        ),
        ((*base, "--out", str(tmp_path / "d"), "--format", "onnx"), "--format onnx: unknown format"),
        ((*base, "--out", str(tmp_path / "e"), "--format", "hf", "--dtype", "q8_0"), "does not go with --format hf"),
        (
            (
                "export",
                "--checkpoint",
                str(checkpoint),
                "--no-tokenizer",
                "--out",
                str(tmp_path / "f"),
                "--format",
                "gguf",
            ),
            "a GGUF file carries its tokenizer",
        ),
        (
            (
                "export",
                "--checkpoint",
                str(tmp_path / "nowhere"),
                "--tokenizer",
                str(tok),
                "--out",
                str(tmp_path / "g"),
            ),
            "not a usable checkpoint",
        ),
    ]
    for args, message in cases:
        out = cli(*args)
        assert out.returncode == 1, (args, out.stderr)
        assert message in out.stderr and "Traceback" not in out.stderr, (args, out.stderr)
        assert out.stderr.startswith("error: ") and out.stderr.count("\n") == 1, out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lone", "lone2", "other.model", "taken"]  # nothing left


@pytest.mark.llama_cpp
def test_llama_cpp_runs_the_exported_llama_checkpoint(trained, trained_llama, tmp_path):
    """Where llama-cpp-python is installed (docs/evaluation.md): the trained llama-family
    checkpoint's GGUF gives our logits and our greedy continuation in llama.cpp."""
    import numpy as np

    from tests.model.test_export import llama_cpp_logits, llama_cpp_model

    _, tok = trained
    out = cli(
        "export",
        "--checkpoint",
        str(trained_llama),
        "--tokenizer",
        str(tok),
        "--out",
        str(tmp_path / "g"),
        "--format",
        "gguf",
        "--dtype",
        "f32",
    )
    assert out.returncode == 0, out.stderr
    llm = llama_cpp_model(next((tmp_path / "g").glob("*.gguf")))
    model, _ = ours(trained_llama)
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tok))
    ids = [sp.eos_id(), *sp.encode(TEXT)]
    with torch.no_grad():
        mine = model(torch.tensor([ids]))[0][0].numpy()
    assert np.abs(llama_cpp_logits(llm, ids) - mine).max() < 1e-2
    greedy = [t for _, t in zip(range(32), llm.generate(ids, temp=0.0, repeat_penalty=1.0))]
    from model.generate import generate

    with torch.no_grad():
        expected = torch.cat(list(generate(model, torch.tensor([ids]), 32, temperature=0)), dim=1)[0].tolist()
    assert greedy == expected


def test_a_chain_with_an_instruction_stage_exports_its_chat_template(trained, tmp_path):
    """The HF tokenizer's apply_chat_template gives exactly the ids our chat format gives
    (runtime.chat), and the template is written only for a model that trained on chat data."""
    transformers = pytest.importorskip("transformers")
    import sentencepiece as spm

    from orchestrator.commands.export import chat_trained
    from runtime import chat
    from runtime.checkpoint import read_meta

    checkpoint, tok = trained
    assert not chat_trained(checkpoint, read_meta(checkpoint))  # trained on plain text: no template
    from model.export import spm as spm_file
    from model.export.hf import write_tokenizer

    folder = tmp_path / "tok"
    folder.mkdir()
    write_tokenizer(folder, spm_file.read(tok), 64, chat_template=chat.JINJA_TEMPLATE)
    hf_tok = transformers.AutoTokenizer.from_pretrained(folder)
    sp = spm.SentencePieceProcessor(model_file=str(tok))
    conversation = [
        ("system", "Kısa cevap ver."),
        ("user", "Vergi nedir?"),
        ("assistant", "Devletin aldığı pay."),
        ("user", "Kâr payı 1923'te %10 mu idi?"),
    ]
    ours_ids = chat.prompt_ids(conversation, sp.encode, chat.chat_ids(sp))
    theirs = hf_tok.apply_chat_template(
        [{"role": r, "content": c} for r, c in conversation], add_generation_prompt=True, tokenize=True
    )
    theirs = theirs["input_ids"] if isinstance(theirs, dict) or hasattr(theirs, "keys") else theirs
    assert list(theirs) == ours_ids

    from tests.helpers import make_instruction_dir  # a run whose later part trained on chat data

    run = tmp_path / "run"
    chat_manifest = make_instruction_dir(tmp_path / "qa", parts=1)
    (run / "checkpoints" / "0002-qa-part-000").mkdir(parents=True)
    (run / "state.json").write_text(
        json.dumps(
            {
                "parts": [
                    {
                        "id": "wiki/part-000",
                        "status": "done",
                        "seq": 1,
                        "file": str(checkpoint),
                        "checkpoint": "checkpoints/0001",
                    },
                    {
                        "id": "qa/part-000",
                        "status": "done",
                        "seq": 2,
                        "file": str(chat_manifest.parent / "part-000.bin"),
                        "checkpoint": "checkpoints/0002-qa-part-000",
                    },
                ]
            }
        )
    )
    meta = read_meta(checkpoint).model_copy(update={"part_id": "qa/part-000"})
    assert chat_trained(run / "checkpoints" / "0002-qa-part-000", meta)


def _chain_run(run: Path, checkpoint: Path, stage: dict, *, chat_part: Path | None = None, mixture=None) -> Path:
    """A run dir holding `checkpoint` as its promoted part wiki/part-000 (with the replay
    `mixture` recorded in its meta.json), a schedule whose stage is `stage`, and, with
    `chat_part`, a done part of instruction data before it; returns the promoted folder."""
    from runtime.checkpoint import sha256_file

    promoted = run / "checkpoints" / "0002-wiki-part-000"
    shutil.copytree(checkpoint, promoted)
    meta = json.loads((promoted / "meta.json").read_text())
    meta.update(part_id="wiki/part-000", stage="wiki")
    if mixture is not None:
        meta["mixture"] = mixture
    (promoted / "meta.json").write_text(json.dumps(meta))
    manifest = json.loads((promoted / "MANIFEST.json").read_text())  # the edited meta.json verifies
    manifest["files"]["meta.json"] = {
        "sha256": sha256_file(promoted / "meta.json"),
        "bytes": (promoted / "meta.json").stat().st_size,
    }
    (promoted / "MANIFEST.json").write_text(json.dumps(manifest))
    data = checkpoint.parents[2] / "data"
    (run / "schedule.json").write_text(json.dumps({"name": "chain", "model": {}, "stages": [stage]}))
    parts = [
        {
            "id": "wiki/part-000",
            "stage": "wiki",
            "status": "done",
            "seq": 2,
            "file": str(data / "part-000.bin"),
            "checkpoint": "checkpoints/0002-wiki-part-000",
        }
    ]
    if chat_part is not None:
        parts.insert(0, {"id": "qa/part-000", "stage": "qa", "status": "done", "seq": 1, "file": str(chat_part)})
    (run / "state.json").write_text(json.dumps({"schedule": {"path": str(run / "schedule.json")}, "parts": parts}))
    return promoted


def _instruction_data_like(data: Path, folder: Path) -> Path:
    """Instruction data with the tokenizer of the prepared corpus in `data` (a replay source
    must share the stage's tokenizer); returns its manifest."""
    from tests.helpers import make_instruction_dir

    manifest = make_instruction_dir(folder, parts=1)
    raw = json.loads(manifest.read_text())
    raw["tokenizer"] = json.loads((data / "manifest.json").read_text())["tokenizer"]
    manifest.write_text(json.dumps(raw))
    return manifest


def test_instruction_data_only_replayed_in_a_stage_gets_the_chat_template(trained, tmp_path):
    """A stage that mixes instruction data in only as a replay source (`replay: [{parts: ...}]`)
    trained the chat format as much as one whose own parts are instruction data."""
    from orchestrator.commands.export import chat_trained
    from runtime.checkpoint import read_meta

    checkpoint, _ = trained
    qa = _instruction_data_like(checkpoint.parents[2] / "data", tmp_path / "qa").parent
    stage = {"name": "wiki", "parts": [str(checkpoint.parents[2] / "data" / "part-000.bin")]}
    replayed = {**stage, "replay": [{"parts": [str(qa)], "weight": 0.2}]}
    mixture = {"weights": {"replay[0]": 0.2}, "ramp_tokens": 0, "ramp_from": None, "stage_tokens": 0}

    folder = _chain_run(tmp_path / "replay", checkpoint, replayed, mixture=mixture)
    assert chat_trained(folder, read_meta(folder))
    # the same chain without the replay (the part's meta records none): a base model
    folder = _chain_run(tmp_path / "plain", checkpoint, replayed)
    assert not chat_trained(folder, read_meta(folder))
    folder = _chain_run(tmp_path / "plain2", checkpoint, stage)
    assert not chat_trained(folder, read_meta(folder))

    # a checkpoint still in its part's scratch: the worker spec names the replayed parts
    work = tmp_path / "scratch" / "work" / "wiki" / "part-000"
    shutil.copytree(folder, work / "checkpoints" / folder.name)
    spec = json.loads((checkpoint.parents[2] / "spec.json").read_text())
    spec.update(part_id="wiki/part-000", stage="wiki")
    spec["mixture"] = {
        "sources": [
            {"name": "replay[0]", "weight": 0.2, "parts": [{"manifest": str(qa / "manifest.json"), "part": "part-000"}]}
        ]
    }
    (work / "spec.json").write_text(json.dumps(spec))
    meta = read_meta(folder).model_copy(update={"mixture": mixture})
    assert chat_trained(work / "checkpoints" / folder.name, meta)


def ollama_render(template: str, turns: list[tuple[str | None, str, str | None]]) -> str:
    """Ollama's rendering of a template without .Messages, for the subset of Go template
    syntax our Modelfiles use ({{ if .X }}...{{ end }}, {{ .X }}): once per turn (system,
    prompt, response), concatenated; the last turn, without a response, cut at {{ .Response }}."""
    import re

    out = ""
    for system, prompt, response in turns:
        values = {"System": system or "", "Prompt": prompt or "", "Response": response or ""}
        text = template if response is not None else template.split("{{ .Response }}")[0]
        text = re.sub(
            r"\{\{ if \.(\w+) \}\}(.*?)\{\{ end \}\}", lambda m: m.group(2) if values[m.group(1)] else "", text
        )
        text = re.sub(r"\{\{ \.(\w+) \}\}", lambda m: values[m.group(1)], text)
        assert "{{" not in text, text
        out += text
    return out


def test_the_modelfile_of_a_chat_trained_model_renders_our_chat_ids(trained, tmp_path):
    """The Modelfile's TEMPLATE, as Ollama renders it and llama.cpp tokenizes it (the start id
    first, special pieces matched as text, the rest encoded between them), gives exactly the
    ids `sample --chat` feeds the model; its stops end the turn. A base model's stays raw."""
    import re

    import sentencepiece as spm

    from runtime import chat
    from trainer.inference import prompt_ids

    checkpoint, tok = trained
    qa = _instruction_data_like(checkpoint.parents[2] / "data", tmp_path / "qa")
    folder = _chain_run(
        tmp_path / "run", checkpoint, {"name": "wiki", "parts": ["x"]}, chat_part=qa.parent / "part-000.bin"
    )
    out = cli(
        "export", "--checkpoint", str(folder), "--tokenizer", str(tok), "--out", str(tmp_path / "g"), "--format", "gguf"
    )
    assert out.returncode == 0, out.stderr
    modelfile = (tmp_path / "g" / "Modelfile").read_text()
    template = re.search(r'TEMPLATE """(.*?)"""', modelfile, re.S).group(1)

    sp = spm.SentencePieceProcessor(model_file=str(tok))
    specials = [*chat.MARKERS.values(), sp.id_to_piece(sp.eos_id())]

    def llama_cpp_tokens(text: str) -> list[int]:
        ids = [sp.eos_id()]  # add_bos_token: the document start (tokenizer.start_id), as in training
        for piece in re.split("(" + "|".join(map(re.escape, specials)) + ")", text):
            if piece in specials:
                ids.append(sp.piece_to_id(piece))
            elif piece:
                ids += sp.encode(piece)
        return ids

    for system in (None, "Kısa cevap ver."):
        for prompt in ("Vergi nedir?", "Kâr payı 1923'te %10 mu idi?"):
            assert llama_cpp_tokens(ollama_render(template, [(system, prompt, None)])) == prompt_ids(
                sp, prompt, True, system
            )
    conversation = [("system", "Kısa cevap ver."), ("user", "Vergi nedir?"), ("assistant", "Devletin aldığı pay.")]
    conversation.append(("user", "Kâr payı?"))
    rendered = ollama_render(
        template, [("Kısa cevap ver.", "Vergi nedir?", "Devletin aldığı pay."), (None, "Kâr payı?", None)]
    )
    assert llama_cpp_tokens(rendered) == chat.prompt_ids(conversation, sp.encode, chat.chat_ids(sp))
    stops = set(re.findall(r'PARAMETER stop "(.*?)"', modelfile))
    assert {sp.piece_to_id(s) for s in stops} == chat.chat_ids(sp).stops

    base = cli(
        "export",
        "--checkpoint",
        str(checkpoint),
        "--tokenizer",
        str(tok),
        "--out",
        str(tmp_path / "b"),
        "--format",
        "gguf",
    )
    assert base.returncode == 0, base.stderr
    assert 'TEMPLATE """{{ .Prompt }}"""' in (tmp_path / "b" / "Modelfile").read_text()
