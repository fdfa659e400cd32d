"""`orchestrator tokenizer train` and `orchestrator prepare` end to end: real corpora,
the real CLI (in process, and as subprocesses where exit codes and SIGKILL matter), and
the trainer's own reader (trainer.tokenfile) on the output."""

from __future__ import annotations

import bz2
import gzip
import json
import re
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import psutil
import pytest
import sentencepiece as spm

from dataprep.cleaning import clean_text, split_key
from dataprep.docwork import Problems, clean_document, encode_documents
from dataprep.sentences import segments
from dataprep.tokenizer import TokenizerFacts, boundary_tables
from dataprep.wikidump import read_dump
from orchestrator.cli import main
from runtime.checkpoint import sha256_file
from runtime.errors import UserError
from runtime.tokens import load_manifest
from tests.helpers import REPO, env, wait_for
from trainer.tokenfile import check_windows, open_part

DATA = REPO / "tests" / "data"  # copies of real corpora, see LICENSES.md there
ENWIKI = DATA / "enwiki-sample-pages-articles.xml.bz2"
DEMO_WIKI = REPO / "orchestrator" / "demo_corpus" / "enwiki-excerpt-pages-articles.xml.bz2"
DEMO_JARGON = REPO / "orchestrator" / "demo_corpus" / "en-jargon-file-excerpt.txt.gz"
RARE = "zqxjvk"  # appears only inside one very long line of the tokenizer corpus
SENTENCE_END = (".", "!", "?", "…", '"', "'", ")", "”", "’", "»", "]")


def cli(*argv) -> int:
    return main([str(a) for a in argv])


def run_cli(*argv, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *map(str, argv)],
        capture_output=True,
        text=True,
        env=env(),
        cwd=REPO,
        timeout=120,
        **kwargs,
    )


def turkish_excerpt(folder: Path, chars: int) -> Path:
    """The first `chars` characters of the Turkish speeches, as a plain-text file."""
    text = gzip.open(DATA / "tr-ataturk-speeches-excerpt.txt.gz", "rt", encoding="utf-8").read(chars)
    path = folder / "tr.txt"
    path.write_text(text[: text.rindex("\n\n")] + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> tuple[Path, str]:
    folder = tmp_path_factory.mktemp("tok")
    long_line = folder / "long.txt"
    long_line.write_text(" ".join([RARE, "and", "more"] * 700) + "\n")  # ~11 KB, no sentence end
    model = folder / "tok.model"
    out = folder / "stdout.txt"
    with open(out, "w") as f:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "orchestrator",
                "tokenizer",
                "train",
                "--input",
                DEMO_WIKI,
                "--input",
                turkish_excerpt(folder, 300_000),
                "--input",
                long_line,
                "--vocab-size",
                "1500",
                "--out",
                model,
                "--quiet",
            ],
            stdout=f,
            stderr=subprocess.PIPE,
            text=True,
            env=env(),
            cwd=REPO,
            timeout=120,
        )
    assert proc.returncode == 0, proc.stderr
    return model, out.read_text()


# --- tokenizer ------------------------------------------------------------------------------


def test_tokenizer_reports_and_registers_special_tokens(tokenizer):
    model, report = tokenizer
    assert "vocab size 1,500 = 3 control + 4 user-defined + 256 byte-fallback + 1,237 learned pieces" in report
    assert "held-out sentences: character coverage 9" in report and "tokens per word" in report
    sp = spm.SentencePieceProcessor(model_file=str(model))
    assert sp.eos_id() == 1 and sp.id_to_piece(1) == "<|endoftext|>"
    for piece, i in (("\n", 3), ("<|user|>", 4), ("<|assistant|>", 5), ("<|system|>", 6)):
        assert sp.piece_to_id(piece) == i
    assert sp.encode("<|user|>Merhaba\n<|assistant|>Selam") == [4, *sp.encode("Merhaba"), 3, 5, *sp.encode("Selam")]
    assert sp.encode("<|endoftext|>") != [1]  # the document end cannot be forged by text


def test_tokenizer_round_trips_turkish_exactly(tokenizer):
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer[0]))
    text = "Kâr ve kar aynı değil.\nİstanbul'da ışık; ŞĞÇÖÜ şğçöü âîû ÂÎÛ.  İki  boşluk 😀 ǅ"
    ids = sp.encode(text)
    assert sp.decode(ids) == text
    assert sp.unk_id() not in ids  # byte fallback: nothing is unknown


def test_long_lines_are_split_not_skipped(tokenizer):
    model, report = tokenizer
    sp = spm.SentencePieceProcessor(model_file=str(model))
    assert int(re.search(r"([\d,]+) sentences? over 4096 bytes split", report)[1].replace(",", "")) >= 1
    assert sp.piece_to_id(f"\u2581{RARE}") != sp.unk_id()  # learned: the 11 KB line reached the trainer


def test_unigram_and_sample_size(tmp_path, capsys):
    model = tmp_path / "uni.model"
    assert (
        cli(
            "tokenizer",
            "train",
            "--input",
            turkish_excerpt(tmp_path, 200_000),
            "--vocab-size",
            800,
            "--model-type",
            "unigram",
            "--sample-sentences",
            500,
            "--out",
            model,
            "--quiet",
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "(unigram)" in out and "trained on 500 sentences sampled from" in out
    assert spm.SentencePieceProcessor(model_file=str(model)).vocab_size() == 800


def test_tokenizer_user_errors(tmp_path, capsys):
    text = turkish_excerpt(tmp_path, 5000)
    assert cli("tokenizer", "train", "--input", text, "--vocab-size", 100, "--out", tmp_path / "t.model") == 1
    assert "--vocab-size 100 is too small" in capsys.readouterr().err
    assert cli("tokenizer", "train", "--input", text, "--vocab-size", 800, "--out", tmp_path / "t.bin") == 1
    assert "must end in .model" in capsys.readouterr().err


def test_sentence_by_sentence_encoding_is_whole_document_encoding(tokenizer):
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer[0]))
    texts = [clean_document(doc, 0, Problems()) for doc, _ in read_dump(DEMO_WIKI, Counter())]
    texts.append(
        clean_text(gzip.open(DATA / "tr-ataturk-speeches-excerpt.txt.gz", "rt", encoding="utf-8").read(20_000))
    )
    tokens, doc_tokens, seg_starts, doc_segs = encode_documents(sp, texts, sp.eos_id())
    assert tokens.tolist() == [t for text in texts for t in [*sp.encode(text), sp.eos_id()]]
    assert doc_tokens.tolist() == [len(sp.encode(text)) + 1 for text in texts]
    first_doc = sp.decode(tokens[: doc_tokens[0]].tolist())
    first_starts = seg_starts[: doc_segs[0]].tolist()
    sentences = [sp.decode(tokens[a:b].tolist()) for a, b in zip(first_starts, [*first_starts[1:], doc_tokens[0] - 1])]
    assert sentences == segments(texts[0]) and "".join(sentences) == first_doc


# --- prepare --------------------------------------------------------------------------------


def prepare(tokenizer_model: Path, out: Path, *inputs, parts=3, block=128, extra=()) -> int:
    args = ["prepare", "--tokenizer", tokenizer_model, "--out", out, "--parts", parts, "--block-size", block, "--quiet"]
    for path in inputs:
        args += ["--input", path]
    return cli(*args, *extra)


def documents(tokens: np.ndarray, sp, eos: int) -> list[str]:
    """Decoded documents of a token array (a partial first/last document included)."""
    ends = np.flatnonzero(tokens == eos)
    cuts = [0, *(ends + 1).tolist()]
    return [sp.decode(tokens[a:b].tolist()).rstrip() for a, b in zip(cuts, [*ends.tolist(), len(tokens)]) if b > a]


def unsafe_starts(tokens: np.ndarray, starts: np.ndarray, sp) -> tuple[int, int]:
    """(windows starting mid-word, windows starting at a word inside a sentence)."""
    starts_word, breaks_after = boundary_tables(sp)
    mid_word = mid_sentence = 0
    for s in starts[1:].tolist():
        prev, here = int(tokens[s - 1]), int(tokens[s])
        if not (breaks_after[prev] or starts_word[here]):
            mid_word += 1
        elif not (breaks_after[prev] or here == 3 or sp.id_to_piece(prev).endswith(SENTENCE_END)):
            mid_sentence += 1
    return mid_word, mid_sentence


def titles(manifest_path: Path, sp, split: str = "train") -> set[str]:
    """First lines of the documents that start in the train parts (or in val): a part
    begins mid-document unless the part before it ended with the document end."""
    manifest = load_manifest(manifest_path)
    found, at_doc_start = set(), True
    for info in manifest.parts if split == "train" else [manifest.val]:
        tokens = np.asarray(open_part(manifest_path, info.name).tokens)
        docs = documents(tokens, sp, 1)
        found |= {d.split("\n", 1)[0] for d in (docs if at_doc_start else docs[1:])}
        at_doc_start = tokens[-1] == 1
    return found


@pytest.fixture(scope="module")
def enwiki(tokenizer, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("enwiki") / "data"
    assert prepare(tokenizer[0], out, ENWIKI, parts=4, extra=["--val-fraction", "0.05"]) == 0
    return out


def test_manifest_describes_the_preparation(enwiki, tokenizer):
    manifest = load_manifest(enwiki / "manifest.json")
    assert manifest.dtype == "uint16" and manifest.block_size == 128
    assert manifest.tokenizer.sha256 == sha256_file(tokenizer[0])
    assert (manifest.tokenizer.vocab_size, manifest.tokenizer.eos_id) == (1500, 1)
    sizes = [p.tokens for p in manifest.parts]
    assert [p.name for p in manifest.parts] == ["part-000", "part-001", "part-002", "part-003"]
    assert max(sizes) / min(sizes) < 1.02  # near-equal
    src = manifest.source
    assert src["inputs"] == [
        {"path": str(ENWIKI), "format": "mediawiki", "bytes": ENWIKI.stat().st_size, "documents": 106}
    ]
    assert src["dropped"] == {"not_article": 1, "redirect": 99}
    assert src["train"]["documents"] + src["val"]["documents"] == 106
    assert src["arguments"]["block_size"] == 128 and src["arguments"]["val_fraction"] == 0.05
    assert sorted(p.name for p in enwiki.iterdir()) == sorted(
        ["manifest.json", "val.bin", "val.idx"] + [f"part-00{i}.{x}" for i in range(4) for x in ("bin", "idx")]
    )


def test_trainer_reads_the_parts_and_windows_are_token_safe(enwiki, tokenizer):
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer[0]))
    manifest = load_manifest(enwiki / "manifest.json")
    mid_sentence = 0
    for name in ["part-000", "part-001", "part-002", "part-003", "val"]:
        part = open_part(enwiki / "manifest.json", name)  # verifies sizes and sha256
        check_windows(part, 128)
        tokens, starts = np.asarray(part.tokens), np.asarray(part.starts).astype(np.int64)
        assert np.all(np.diff(starts) > 0) and np.diff(starts).max() <= 128
        mid_word, inside = unsafe_starts(tokens, starts, sp)
        assert mid_word == 0, f"{name}: windows start mid-word"
        mid_sentence += inside
        eos_count = int(np.count_nonzero(tokens == 1))
        assert part.info.documents == eos_count + (tokens[-1] != 1)
        text = "\n".join(documents(tokens, sp, 1))
        assert "{{" not in text and "[[" not in text and "<ref" not in text
    # windows start inside a sentence only where one is longer than the step, and say so
    assert mid_sentence <= manifest.source["windows"]["mid_sentence"]
    assert manifest.source["windows"]["mid_sentence"] < 0.1 * manifest.source["windows"]["windows"]


def test_val_split_by_title_hash(enwiki, tokenizer):
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer[0]))
    val_titles = titles(enwiki / "manifest.json", sp, "val")
    assert val_titles and all(split_key(t, "") < 0.05 for t in val_titles)
    train_titles = titles(enwiki / "manifest.json", sp)
    assert all(split_key(t, "") >= 0.05 for t in train_titles)
    assert len(val_titles | train_titles) == 106
    assert {"Anarchism", "Autism"} <= train_titles | val_titles


def test_more_input_does_not_move_documents_between_train_and_val(tokenizer, tmp_path):
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer[0]))
    extra = tmp_path / "more.jsonl"
    with open(extra, "w") as f:
        for i in range(40):
            f.write(json.dumps({"title": f"Extra {i}", "text": f"Extra document number {i}. " * 40}) + "\n")

    def split_titles(out: Path) -> tuple[set, set]:
        return titles(out / "manifest.json", sp), titles(out / "manifest.json", sp, "val")

    val = ["--val-fraction", "0.3"]
    assert prepare(tokenizer[0], tmp_path / "a", DEMO_WIKI, parts=2, extra=val) == 0
    assert prepare(tokenizer[0], tmp_path / "b", DEMO_WIKI, extra, parts=2, extra=val) == 0
    train_a, val_a = split_titles(tmp_path / "a")
    train_b, val_b = split_titles(tmp_path / "b")
    assert val_a and val_a <= val_b and train_a <= train_b
    assert any(t.startswith("Extra") for t in val_b)


def test_rerun_is_a_no_op_and_other_content_is_refused(enwiki, tokenizer, tmp_path, capsys):
    before = {p.name: p.stat().st_mtime_ns for p in enwiki.iterdir()}
    assert prepare(tokenizer[0], enwiki, ENWIKI, parts=4, extra=["--val-fraction", "0.05"]) == 0
    assert "already prepared" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in enwiki.iterdir()} == before

    assert prepare(tokenizer[0], enwiki, ENWIKI, parts=5, extra=["--val-fraction", "0.05"]) == 1
    assert "already holds a different preparation (4 parts, block size 128" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in enwiki.iterdir()} == before

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert prepare(tokenizer[0], foreign, DEMO_WIKI) == 1
    assert "is not empty and is not a preparation" in capsys.readouterr().err


def test_long_document_slides_with_overlap_and_round_trips(tokenizer, tmp_path):
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer[0]))
    law = turkish_excerpt(tmp_path, 60_000)  # one document (--text-unit file), ~25k tokens
    out = tmp_path / "law"
    assert (
        prepare(
            tokenizer[0],
            out,
            law,
            parts=1,
            block=128,
            extra=["--text-unit", "file", "--overlap", "48", "--val-fraction", "0", "--dtype", "uint32"],
        )
        == 0
    )
    manifest = load_manifest(out / "manifest.json")
    assert manifest.dtype == "uint32" and manifest.val is None
    part = open_part(out / "manifest.json", "part-000")
    check_windows(part, 128)
    tokens, starts = np.asarray(part.tokens), np.asarray(part.starts).astype(np.int64)
    assert part.info.documents == 1 and int(np.count_nonzero(tokens == 1)) == 1
    gaps = np.diff(starts)
    assert gaps[:-1].max() <= 128 - 48  # consecutive windows share at least 48 tokens
    mid_word, mid_sentence = unsafe_starts(tokens, starts, sp)
    assert mid_word == 0 and mid_sentence <= manifest.source["windows"]["mid_sentence"]
    # the stored text is the cleaned document, Turkish letters and all, exactly
    source = " ".join(law.read_text(encoding="utf-8").split("\n\n")[0].split())
    assert sp.decode(tokens[: len(sp.encode(source))].tolist()) == source
    assert "â" in sp.decode(tokens[:-1].tolist())


def test_output_does_not_depend_on_workers_and_small_inputs_are_refused(tokenizer, tmp_path, capsys):
    shas = []
    for workers in (0, 2):
        out = tmp_path / f"w{workers}"
        assert prepare(tokenizer[0], out, DEMO_JARGON, extra=["--workers", workers, "--overlap", "16"]) == 0
        shas.append([(p.sha256, p.index_sha256) for p in load_manifest(out / "manifest.json").parts])
    assert shas[0] == shas[1]
    assert prepare(tokenizer[0], tmp_path / "tiny", DEMO_JARGON, parts=500, block=512) == 1
    assert "too little text for 500 parts" in capsys.readouterr().err
    assert not (tmp_path / "tiny").exists()  # the run made it, the error removed it


def test_rerun_resumes_after_tokenizing_and_during_publishing(tokenizer, tmp_path):
    reference = tmp_path / "reference"
    assert prepare(tokenizer[0], reference, DEMO_JARGON) == 0
    want = [(p.sha256, p.index_sha256) for p in load_manifest(reference / "manifest.json").parts]
    out = tmp_path / "out"
    args = [
        "prepare",
        "--tokenizer",
        tokenizer[0],
        "--out",
        out,
        "--parts",
        3,
        "--block-size",
        128,
        "--quiet",
        "--input",
        DEMO_JARGON,
    ]

    def killed_at(point: str) -> subprocess.CompletedProcess:
        """A real prepare, SIGKILLed by itself at a named point (runtime.faults)."""
        return subprocess.run(
            [sys.executable, "-m", "orchestrator", *map(str, args)],
            capture_output=True,
            text=True,
            cwd=REPO,
            env={**env(), "ORCHESTRATOR_FAULT": point},
            timeout=120,
        )

    assert killed_at("prepare.tokenized").returncode == -signal.SIGKILL  # tokens streamed, no part yet
    assert (out / ".prepare" / "streams.json").exists() and not (out / "manifest.json").exists()
    assert not list(out.glob("part-*"))
    # Both armed: a re-run that tokenized again would die at the first, before publishing anything.
    assert killed_at("prepare.tokenized,prepare.publishing@2").returncode == -signal.SIGKILL
    assert (out / "part-000.bin").exists() and not (out / "manifest.json").exists()
    assert run_cli(*args).returncode == 0
    assert [(p.sha256, p.index_sha256) for p in load_manifest(out / "manifest.json").parts] == want
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in reference.iterdir())


def test_dtype_must_hold_the_vocabulary():
    big = TokenizerFacts(Path("big.model"), "0" * 64, 70_000, 1)
    assert big.dtype("auto") == "uint32"
    with pytest.raises(UserError, match="70000 pieces; ids up to 69999 do not fit --dtype uint16"):
        big.dtype("uint16")
    assert TokenizerFacts(Path("s.model"), "0" * 64, 65_536, 1).dtype("auto") == "uint16"


def test_damaged_page_is_counted_not_fatal(tokenizer, tmp_path):
    xml = bz2.decompress(DEMO_WIKI.read_bytes()).decode()
    at = xml.index("<title>Anarchism</title>")
    dump = tmp_path / "damaged-pages-articles.xml"
    dump.write_text(xml[:at] + xml[at:].replace("<ns>0</ns>", "<ns>x</ns>", 1))
    assert prepare(tokenizer[0], tmp_path / "out", dump, parts=2, extra=["--val-fraction", "0.2"]) == 0
    assert load_manifest(tmp_path / "out" / "manifest.json").source["dropped"]["damaged_page"] == 1


# --- the CLI as a user runs it ------------------------------------------------------------------


def test_sigkill_mid_prepare_leaves_nothing_complete_and_rerun_finishes(enwiki, tokenizer, tmp_path):
    out = tmp_path / "data"
    args = [
        "prepare",
        "--input",
        ENWIKI,
        "--tokenizer",
        tokenizer[0],
        "--out",
        out,
        "--parts",
        4,
        "--block-size",
        128,
        "--val-fraction",
        "0.05",
        "--workers",
        1,
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", *map(str, args)],
        env=env(),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    stream = out / ".prepare" / "train.tokens"
    wait_for(
        lambda: stream.exists() and stream.stat().st_size > 0 or proc.poll() is not None,
        timeout=60,
        what="tokens being written",
    )
    helpers = psutil.Process(proc.pid).children(recursive=True)  # the pool worker, multiprocessing's tracker
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL, "prepare finished before it could be interrupted"
    _, alive = psutil.wait_procs(helpers, timeout=20)
    assert not alive, f"left behind: {[p.cmdline() for p in alive]}"
    assert sorted(p.name for p in out.iterdir()) == [".prepare"]  # no part, no manifest
    assert not (out / ".prepare" / "streams.json").exists()  # it was killed while tokenizing

    rerun = run_cli(*args)
    assert rerun.returncode == 0, rerun.stderr
    assert not (out / ".prepare").exists()
    got, want = load_manifest(out / "manifest.json"), load_manifest(enwiki / "manifest.json")
    assert [(p.sha256, p.index_sha256) for p in [*got.parts, got.val]] == [
        (p.sha256, p.index_sha256) for p in [*want.parts, want.val]
    ]


@pytest.mark.parametrize("case", ["truncated-bz2", "latin5-text", "empty"])
def test_bad_input_exits_1_with_one_message_and_no_output(tokenizer, tmp_path, case):
    if case == "truncated-bz2":
        path = tmp_path / "cut-pages-articles.xml.bz2"
        path.write_bytes(DEMO_WIKI.read_bytes()[:200_000])
        expect = f"{path}: the bz2 stream is truncated or damaged near byte"
    elif case == "latin5-text":
        path = tmp_path / "latin5.txt"
        path.write_bytes("Vergi kanunu.\n\nKâr payı dağıtımı.\n".encode("cp1254"))
        expect = f"{path}: line 3, byte offset 16 (in the decompressed text): not valid UTF-8"
    else:
        path = tmp_path / "empty.jsonl"
        path.write_text("\n\n")
        expect = f"{path}: no documents in this input"
    out = tmp_path / "out"
    proc = run_cli(
        "prepare", "--input", path, "--tokenizer", tokenizer[0], "--out", out, "--parts", 2, "--block-size", 64
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: ") and expect in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1
    assert not out.exists()


def test_help_and_light_registration():
    proc = run_cli("prepare", "--help")
    assert proc.returncode == 0 and "--part-tokens" in proc.stdout and "--overlap" in proc.stdout
    proc = run_cli("tokenizer", "train", "--help")
    assert proc.returncode == 0 and "--vocab-size" in proc.stdout and "--model-type" in proc.stdout
    code = (
        "import sys; from orchestrator.cli import build_parser; build_parser(); "
        "print(sorted(m for m in ('numpy', 'sentencepiece', 'mwparserfromhell', 'dataprep.prepare') "
        "if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env(), cwd=REPO)
    assert proc.stdout.strip() == "[]", proc.stdout + proc.stderr
