"""Domain refinement data: instruction examples (chat markers, masked loss, packing and
sliding windows) and small corpora (validation by sections), with a real tokenizer, the
real CLI and the trainer's own reader."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm

from dataprep.cleaning import clean_text
from dataprep.valsplit import MIN_SECTIONS, choose, held_out, section_cuts
from orchestrator.cli import main
from runtime.chat import ChatIds, chat_ids, render
from runtime.tokens import FORMAT_MASKED, load_manifest
from tests.helpers import REPO
from trainer.errors import BadInput
from trainer.tokenfile import check_windows, open_part

DATA = REPO / "tests" / "data"
QA = REPO / "orchestrator" / "demo_corpus" / "jargon-qa.jsonl"  # derived by bench/jargon_qa.py, see its LICENSES.md
JARGON = REPO / "orchestrator" / "demo_corpus" / "en-jargon-file-excerpt.txt.gz"
BLOCK = 256


def cli(*argv) -> int:
    return main([str(a) for a in argv])


def turkish(chars: int, skip: int = 0) -> str:
    return gzip.open(DATA / "tr-ataturk-speeches-excerpt.txt.gz", "rt", encoding="utf-8").read(skip + chars)[skip:]


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tok")
    tr = folder / "tr.txt"
    tr.write_text(turkish(100_000), encoding="utf-8")
    model = folder / "t.model"
    assert cli("tokenizer", "train", "-i", JARGON, "-i", tr, "--vocab-size", 800, "--out", model, "-q") == 0
    return model


@pytest.fixture(scope="module")
def sp(tok):
    return spm.SentencePieceProcessor(model_file=str(tok))


def conversations() -> list[dict]:
    """The derived Q&A pairs, three multi-turn conversations made of them (with a system
    message), and one example longer than a window."""
    rows = [json.loads(line) for line in QA.read_text(encoding="utf-8").splitlines()]
    multi = []
    for a, b in zip(rows[0:6:2], rows[1:6:2]):
        turns = [
            ("system", "Answer from the Jargon File."),
            ("user", a["prompt"]),
            ("assistant", a["response"]),
            ("user", b["prompt"]),
            ("assistant", b["response"]),
        ]
        multi.append({"messages": [{"role": role, "content": content} for role, content in turns]})
    long_answer = " ".join(r["response"] for r in rows[10:22])
    return rows + multi + [{"prompt": "Summarise these entries.", "response": long_answer}]


def messages_of(row: dict) -> list[tuple[str, str]]:
    if "messages" in row:
        return [(m["role"], clean_text(m["content"])) for m in row["messages"]]
    return [("user", clean_text(row["prompt"])), ("assistant", clean_text(row["response"]))]


def fitting(sp) -> list[dict]:
    """The examples that fit a window whole (with the leading eos): these are packed, the rest slide."""
    ids = chat_ids(sp)
    return [r for r in conversations() if len(render(messages_of(r), sp.encode, ids)[0]) <= BLOCK]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def prepared(tok, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("qa")
    source = write_jsonl(folder / "qa.jsonl", conversations())
    out = folder / "data"
    assert (
        cli(
            "prepare",
            "-i",
            source,
            "--tokenizer",
            tok,
            "--out",
            out,
            "--parts",
            2,
            "--block-size",
            BLOCK,
            "--val-fraction",
            0.1,
            "-q",
        )
        == 0
    )
    return out


def windows(out: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    part = open_part(out / "manifest.json", name)  # verifies sizes, checksums, a target in every window
    return np.asarray(part.tokens).reshape(-1, BLOCK + 1), np.asarray(part.mask).reshape(-1, BLOCK + 1)


def all_windows(out: Path) -> tuple[np.ndarray, np.ndarray]:
    manifest = load_manifest(out / "manifest.json")
    pairs = [windows(out, p.name) for p in [*manifest.parts, manifest.val]]
    return np.concatenate([t for t, _ in pairs]), np.concatenate([m for _, m in pairs])


def packed(row) -> bool:
    """A window of whole examples: an eos, a conversation's first marker, ..., an end of turn or padding."""
    return row[0] == 1 and row[1] in (4, 6) and row[-1] in (1, 2)


def runs(mask_row: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each run of counted positions."""
    edges = np.flatnonzero(np.diff(np.concatenate(([0], mask_row.astype(np.int8), [0]))))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


# --- the chat format ---------------------------------------------------------------------------


def test_chat_markers_are_single_ids_and_render_marks_the_responses(sp):
    ids = chat_ids(sp)
    assert ids == ChatIds(user=4, assistant=5, system=6, end_of_turn=sp.eos_id())
    for marker, i in (("<|user|>", 4), ("<|assistant|>", 5), ("<|system|>", 6)):
        assert sp.encode(marker) == [i] and sp.encode(f"a{marker}b") == [*sp.encode("a"), i, *sp.encode("b")]
    tokens, mask = render(
        [("system", "Be brief."), ("user", "Hi there"), ("assistant", "Hello.")], lambda texts: sp.encode(texts), ids
    )
    assert tokens == [6, *sp.encode("Be brief."), 4, *sp.encode("Hi there"), 5, *sp.encode("Hello."), sp.eos_id()]
    assert [t for t, m in zip(tokens, mask) if m] == [*sp.encode("Hello."), sp.eos_id()]


# --- prepare on instruction data ----------------------------------------------------------------


def test_instruction_manifest_masks_and_the_trainer_reader(prepared):
    manifest = load_manifest(prepared / "manifest.json")
    assert manifest.format == FORMAT_MASKED and manifest.instruction
    assert (manifest.chat.user_id, manifest.chat.assistant_id, manifest.chat.system_id) == (4, 5, 6)
    assert manifest.chat.end_of_turn_id == manifest.tokenizer.eos_id == 1 and manifest.chat.pad_id == 2
    assert manifest.source["arguments"]["overlap"] == BLOCK // 4  # the default context of a sliding window
    for info in [*manifest.parts, manifest.val]:
        tokens, mask = windows(prepared, info.name)
        assert (prepared / info.mask).stat().st_size == info.tokens == tokens.size
        assert info.targets == int(mask.sum()) and info.windows == len(tokens)
        assert np.all(mask[:, 0] == 0) and np.all(mask[:, 1:].sum(axis=1) > 0)
        assert np.all(mask[tokens == 2] == 0)  # padding never counts
    part = open_part(prepared / "manifest.json", "part-000")
    check_windows(part, BLOCK)
    with pytest.raises(BadInput, match="instruction data prepared for block_size 256"):
        check_windows(part, 128)  # a smaller model would drop the counted ends of windows


def test_masked_spans_decode_to_the_responses_and_the_rest_is_the_prompt(prepared, sp):
    tokens, mask = all_windows(prepared)
    rows = fitting(sp)  # the others slide; the next test but one looks at the longest
    assert len(rows) > 80
    responses = Counter(c for row in rows for role, c in messages_of(row) if role == "assistant")
    prompts = Counter(c for row in rows for role, c in messages_of(row) if role != "assistant")
    found, context = Counter(), Counter()
    for row_t, row_m in zip(tokens, mask):
        if not packed(row_t):
            continue  # a sliding window of the long example
        for a, b in runs(row_m):
            assert row_t[b - 1] == 1 and row_t[a - 1] == 5  # a response: after the marker, through the end of turn
            found[sp.decode(row_t[a : b - 1].tolist())] += 1
        pieces = np.split(row_t, np.flatnonzero(np.isin(row_t, [4, 5, 6, 1, 2])))
        context.update(sp.decode(p[1:].tolist()) for p in pieces if len(p) > 1 and p[0] in (4, 6))
    assert found == responses  # every response counted once, nothing else counted
    assert context == prompts  # the user and system turns are there, uncounted


def test_examples_that_fit_are_packed_whole_and_in_order(prepared, sp):
    ids = chat_ids(sp)
    rendered = [render(messages_of(r), lambda texts: sp.encode(texts), ids)[0] for r in fitting(sp)]
    manifest = load_manifest(prepared / "manifest.json")
    seen = Counter()
    for info in [*manifest.parts, manifest.val]:
        tokens, _ = windows(prepared, info.name)
        previous_pad = None
        for row in tokens.tolist():
            if not packed(row):
                previous_pad = None
                continue
            body = row[1 : row.index(2)] if 2 in row else row[1:]
            examples, start = [], 0
            for i, t in enumerate(body):  # whole examples end with the end of turn before a new conversation
                if t == 1 and (i + 1 == len(body) or body[i + 1] in (4, 6)):
                    examples.append(tuple(body[start : i + 1]))
                    start = i + 1
            assert start == len(body)  # nothing cut off at the end of a window
            seen.update(examples)
            if previous_pad is not None:
                assert len(examples[0]) > previous_pad  # greedy: it did not fit in the window before
            previous_pad = len(row) - 1 - len(body)
    assert seen == Counter(tuple(r) for r in rendered)  # each example exactly once, whole


def test_a_long_example_slides_and_counts_each_response_token_once(prepared, sp):
    ids = chat_ids(sp)
    long_tokens, long_mask = render(messages_of(conversations()[-1]), lambda texts: sp.encode(texts), ids)
    seq, seq_mask = [1, *long_tokens], [0, *long_mask]
    assert len(seq) > 3 * (BLOCK + 1)
    tokens, mask = all_windows(prepared)
    counted = Counter()
    starts = []
    for row_t, row_m in zip(tokens.tolist(), mask):
        matches = [s for s in range(len(seq) - BLOCK) if seq[s : s + BLOCK + 1] == row_t]
        if not matches:
            continue
        (s,) = matches
        starts.append(s)
        positions = (np.flatnonzero(row_m) + s).tolist()
        counted.update(positions)
        if len(starts) > 1:  # a continuation keeps the default context (a quarter block) before what it counts
            assert min(positions) - s >= BLOCK // 4
    assert len(starts) >= 4 and starts[0] == 0 and starts[-1] == len(seq) - (BLOCK + 1)
    assert counted == Counter(p for p, m in enumerate(seq_mask) if m)  # each response token a target once


def test_loss_on_all_counts_prompts_in_training_and_validation_stays_response_only(prepared, tok, tmp_path):
    out = tmp_path / "all"
    source = write_jsonl(tmp_path / "qa.jsonl", conversations())
    assert (
        cli(
            "prepare",
            "-i",
            source,
            "--tokenizer",
            tok,
            "--out",
            out,
            "--parts",
            2,
            "--block-size",
            BLOCK,
            "--val-fraction",
            0.1,
            "--loss-on",
            "all",
            "-q",
        )
        == 0
    )
    response_only, everything = load_manifest(prepared / "manifest.json"), load_manifest(out / "manifest.json")
    assert everything.chat.loss_on == "all"
    assert sum(p.targets for p in everything.parts) > 1.1 * sum(p.targets for p in response_only.parts)
    assert everything.val.mask_sha256 == response_only.val.mask_sha256
    tokens, mask = windows(out, "part-000")
    assert np.all(mask[tokens == 4] == 1) and np.all(mask[tokens == 2] == 0) and np.all(mask[:, 0] == 0)


LINE_ERRORS = [
    ('{"prompt": "Hi"}', '"response" must be a string'),
    ('{"messages": [{"role": "user", "content": "Hi"}, {"role": "bot", "content": "Yo"}]}', "unknown role 'bot'"),
    ('{"prompt": "Hi", "response": "   "}', "message 2 (assistant): empty content"),
    ('{"messages": [{"role": "user", "content": "Hi"}]}', "must end with the assistant's answer"),
    ('{"messages": [{"role": "assistant", "content": "Hi"}]}', "expected a user message"),
    ('{"prompt": "<|assistant|> Hi", "response": "Yo"}', "holds the chat marker <|assistant|>"),
    ('{"text": "a document"}', "put documents and instruction examples in separate files"),
    ('{"prompt": "Hi", "answer": "Yo"}', "unknown field 'answer'"),
    ("not json", "not valid JSON"),
]


@pytest.mark.parametrize("line, message", LINE_ERRORS)
def test_a_bad_instruction_line_names_the_file_and_line(tok, tmp_path, capsys, line, message):
    source = tmp_path / "qa.jsonl"
    source.write_text(
        '{"prompt": "What is a hacker?", "response": "A person who enjoys programming."}\n' + line + "\n",
        encoding="utf-8",
    )
    assert (
        cli(
            "prepare",
            "-i",
            source,
            "--tokenizer",
            tok,
            "--out",
            tmp_path / "out",
            "--parts",
            1,
            "--block-size",
            BLOCK,
            "-q",
        )
        == 1
    )
    err = capsys.readouterr().err
    assert f"{source}: line 2" in err and message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_instruction_and_text_inputs_are_not_mixed(tok, tmp_path, capsys):
    text = tmp_path / "law.txt"
    text.write_text(turkish(5000), encoding="utf-8")
    assert (
        cli(
            "prepare",
            "-i",
            QA,
            "-i",
            text,
            "--tokenizer",
            tok,
            "--out",
            tmp_path / "out",
            "--parts",
            1,
            "--block-size",
            BLOCK,
            "-q",
        )
        == 1
    )
    assert "holds instruction examples but" in capsys.readouterr().err
    assert (
        cli(
            "prepare",
            "-i",
            text,
            "--tokenizer",
            tok,
            "--out",
            tmp_path / "out",
            "--parts",
            1,
            "--block-size",
            BLOCK,
            "--loss-on",
            "all",
            "-q",
        )
        == 1
    )
    assert "--loss-on applies to instruction data" in capsys.readouterr().err


# --- small domain corpora: validation by sections ------------------------------------------------


def test_auto_split_choice_and_sections():
    assert choose("auto", 106, 0.05) == "documents" and choose("auto", 20, 0.05) == "sections"
    assert choose("auto", 5, 0.01) == "sections" and choose("documents", 5, 0.01) == "documents"
    assert held_out(MIN_SECTIONS - 1, 0.05) == []  # a short document trains whole
    assert held_out(100, 0.01) == [50] and held_out(100, 0.05) == [10, 30, 50, 70, 90]  # spread through it
    sents = np.arange(0, 1000, 10)
    cuts = section_cuts(1000, sents, np.array([0, 105, 400, 990]), 100)
    assert cuts == [0, 105, 210, 400, 500, 600, 700, 800]  # paragraph starts when near, else sentence starts
    assert 1000 - cuts[-1] >= 100  # a short tail stays with the section before it


def test_five_long_documents_hold_out_sections_not_documents(tok, sp, tmp_path, capsys):
    laws = tmp_path / "laws"
    laws.mkdir()
    originals = []
    for i in range(5):  # five "laws", one file each: paragraphs of real Turkish text
        text = turkish(14_000, skip=i * 14_000)
        text = "\n\n".join(text.split("\n")[1:-1])
        (laws / f"law{i}.txt").write_text(text + "\n", encoding="utf-8")
        originals.append(sp.encode(clean_text(text.replace("\n\n", "\n"))) + [1])
    out = tmp_path / "data"
    assert (
        cli(
            "prepare",
            "-i",
            laws,
            "--text-unit",
            "file",
            "--tokenizer",
            tok,
            "--out",
            out,
            "--parts",
            2,
            "--block-size",
            128,
        )
        == 0
    )  # the default --val-fraction 0.01
    assert "validation by sections: held out 5 of the" in capsys.readouterr().out
    manifest = load_manifest(out / "manifest.json")
    split = manifest.source["val_split"]
    assert split["by"] == "sections" and split["long_documents"] == 5 and split["held_out_sections"] == 5
    train = np.concatenate([np.asarray(open_part(out / "manifest.json", p.name).tokens) for p in manifest.parts])
    val = np.asarray(open_part(out / "manifest.json", "val").tokens)
    assert len(train) + len(val) == sum(map(len, originals))  # nothing lost, nothing repeated
    assert len(val) >= 5 * 129
    # the val split is one stretch of each law, in order, a section long or more, absent from training
    train_text = sp.decode(train.tolist())
    rest = val.tolist()
    for doc in originals:
        start = next(i for i in range(len(doc)) if doc[i : i + 16] == rest[:16])
        n = next((k for k in range(len(rest)) if start + k >= len(doc) or rest[k] != doc[start + k]), len(rest))
        assert n >= 129
        assert sp.decode(rest[:n])[:80] not in train_text
        rest = rest[n:]
    assert rest == []
    # the document split would have been empty: asking for it gives the old, clear error
    assert (
        cli(
            "prepare",
            "-i",
            laws,
            "--text-unit",
            "file",
            "--tokenizer",
            tok,
            "--out",
            tmp_path / "docs",
            "--parts",
            2,
            "--block-size",
            128,
            "--val-split",
            "documents",
        )
        == 1
    )
    assert "the validation split holds 0 tokens" in capsys.readouterr().err
