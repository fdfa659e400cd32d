"""`orchestrator sample` on a checkpoint trained on real text with a real tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import REPO, cli, run_worker, write_spec

CORPUS = REPO / "orchestrator" / "demo_corpus" / "enwiki-excerpt-pages-articles.xml.bz2"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("sample")
    tok = root / "tok" / "t.model"
    assert cli("tokenizer", "train", "-i", str(CORPUS), "--vocab-size", "600", "--out", str(tok), "-q").returncode == 0
    out = cli(
        "prepare",
        "-i",
        str(CORPUS),
        "--tokenizer",
        str(tok),
        "--out",
        str(root / "data"),
        "--parts",
        "4",
        "--block-size",
        "32",
        "--val-fraction",
        "0.1",
        "-q",
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
        model={"family": "llama", "vocab_size": 640, "block_size": 32, "n_layer": 2, "n_head": 2, "n_embd": 64},
        train={"micro_batch": 16, "grad_accum": 1, "eval_windows": 0},
    )
    assert run_worker(spec, root / "worker.log") == 0, (root / "worker.log").read_text()[-2000:]
    return root / "work" / json.loads((root / "work" / "result.json").read_text())["checkpoint"], tok


def test_greedy_sampling_is_deterministic_and_says_something(trained):
    checkpoint, tok = trained
    args = (
        "sample",
        "--checkpoint",
        str(checkpoint),
        "--tokenizer",
        str(tok),
        "--prompt",
        "The history of",
        "--temperature",
        "0",
        "--max-tokens",
        "30",
    )
    first, second = cli(*args), cli(*args)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout
    assert first.stdout.startswith("The history of") and len(first.stdout.strip()) > len("The history of") + 10


def test_seeded_sampling_repeats_and_a_wrong_tokenizer_is_refused(trained, tmp_path):
    checkpoint, tok = trained
    args = ("sample", "--checkpoint", str(checkpoint), "--tokenizer", str(tok), "--prompt", "A", "--seed", "3")
    assert cli(*args).stdout == cli(*args).stdout
    other = tmp_path / "other.model"
    other.write_bytes(tok.read_bytes() + b"\0")
    out = cli("sample", "--checkpoint", str(checkpoint), "--tokenizer", str(other), "--prompt", "A")
    assert out.returncode == 1 and "not the tokenizer" in out.stderr and "Traceback" not in out.stderr


ANSWER = "I do not know."


@pytest.fixture(scope="module")
def chat_trained(trained, tmp_path_factory) -> tuple[Path, Path]:
    """A model taught, on real questions (derived from the Jargon File), always to give
    one short answer: what it says after a chat prompt, and where it stops, are then known."""
    _, tok = trained
    root = tmp_path_factory.mktemp("chat")
    lines = (REPO / "orchestrator" / "demo_corpus" / "jargon-qa.jsonl").read_text().splitlines()
    questions = [json.loads(line)["prompt"] for line in lines]
    source = root / "qa.jsonl"
    rows = [
        {"prompt": q, "response": ANSWER, **({"system": "Brief."} if i % 3 == 0 else {})}
        for i, q in enumerate(questions)
    ]
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = cli(
        "prepare",
        "-i",
        str(source),
        "--tokenizer",
        str(tok),
        "--out",
        str(root / "data"),
        "--parts",
        "1",
        "--block-size",
        "64",
        "--val-fraction",
        "0",
        "-q",
    )  # every example fits a window whole
    assert out.returncode == 0, out.stderr
    manifest = root / "data" / "manifest.json"
    assert json.loads(manifest.read_text())["source"]["windows"]["long_examples"] == 0
    sha = json.loads(manifest.read_text())["tokenizer"]["sha256"]
    spec = write_spec(
        root / "spec.json",
        manifest,
        "part-000",
        root / "work",
        tokenizer_sha256=sha,
        epochs=12,
        val=None,
        model={"vocab_size": 640, "block_size": 64, "n_layer": 2, "n_head": 2, "n_embd": 64},
        train={"micro_batch": 16, "grad_accum": 1, "eval_windows": 0, "lr": 1e-2, "warmup_tokens": 0},
    )
    assert run_worker(spec, root / "worker.log") == 0, (root / "worker.log").read_text()[-2000:]
    return root / "work" / json.loads((root / "work" / "result.json").read_text())["checkpoint"], tok


def test_sample_chat_formats_the_prompt_and_stops_at_the_end_of_the_turn(chat_trained):
    checkpoint, tok = chat_trained
    base = (
        "sample",
        "--checkpoint",
        str(checkpoint),
        "--tokenizer",
        str(tok),
        "--temperature",
        "0",
        "--repetition-penalty",
        "1",
        "--max-tokens",
        "40",
    )
    out = cli(*base, "--chat", "--prompt", 'What does "daemon" mean in hacker jargon?')
    assert out.returncode == 0, out.stderr
    assert out.stdout == ANSWER + "\n"  # the answer only, ended by the end of turn, not by --max-tokens
    refused = cli(*base, "--system", "Brief.", "--prompt", "What is a kluge?")  # a system text needs the chat format
    assert refused.returncode == 1 and "add --chat" in refused.stderr and "Traceback" not in refused.stderr


def test_compare_prompts_chat_scores_the_answer_with_its_end_of_turn(chat_trained, tmp_path):
    """A line's system text comes before the user's turn (the compare path covers --system)."""
    checkpoint, tok = chat_trained
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        json.dumps({"prompt": "What is a hack?", "expected": ANSWER})
        + "\n"
        + json.dumps({"prompt": "What is cruft?", "system": "Brief.", "expected": ANSWER})
        + "\n"
    )
    base = (
        "compare",
        "--run-dir",
        str(tmp_path),
        "--prompts",
        str(prompts),
        "--checkpoint",
        str(checkpoint),
        "--tokenizer",
        str(tok),
        "--json",
    )
    (tmp_path / "state.json").write_text("{}")  # compare reads a run directory; the checkpoint is named
    chat = cli(*base, "--chat")
    assert chat.returncode == 0, chat.stderr
    (result,) = json.loads(chat.stdout)
    assert [a["completion"] for a in result["answers"]] == [ANSWER, ANSWER] and result["matches"] == 2
    assert result["mean_expected_loss"] < 0.5
    plain = cli(*base)
    assert plain.returncode == 1 and "add --chat" in plain.stderr  # a "system" needs the chat format
