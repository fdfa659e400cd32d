"""`orchestrator tokenizer train`: a SentencePiece model from the user's corpus.

The inputs go through the same readers, cleaning and sentence segmentation as
`prepare` (in worker processes), duplicates are dropped, sentences longer than
--max-sentence-bytes are split at spaces (SentencePiece would silently skip them), and
a uniform sample of --sample-sentences sentences is kept in memory (dataprep.sampling):
that sample, not the corpus, is what SentencePiece trains on, so memory is bounded
whatever the corpus size. The conventions (special tokens, byte fallback, full
character coverage, no normalisation) are dataprep.tokenizer's. The model is written
under a temporary name and renamed into place.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from dataprep.corpus import Corpus, describe_drops
from dataprep.docwork import WorkOptions, clean_chunk, init_worker
from dataprep.inputs import expand_inputs
from dataprep.parallel import default_workers, ordered_map
from dataprep.progress import InputProgress
from dataprep.sampling import SentenceSample
from dataprep.tokenizer import EOS, USER_SYMBOLS, WORD_MARK, load_processor, trainer_options
from runtime.atomic import fsync_dir, temp_path_for
from runtime.errors import UserError

MIN_VOCAB = 512


def cmd_train(args: argparse.Namespace) -> int:
    _check_arguments(args)
    specs = expand_inputs(args.input, args.format)
    workers = default_workers() if args.workers is None else args.workers
    started = time.monotonic()
    corpus = Corpus(specs, args.text_unit)
    sample, split_lines = _sample(corpus, args, workers)
    if not sample.train.items:
        raise UserError(
            f"no text left to train on after cleaning (read {corpus.documents_read:,} documents; "
            f"dropped: {describe_drops(corpus.dropped)})"
        )
    heldout = bool(sample.heldout.items)
    measure_on = sample.heldout.items or sample.train.items[: args.heldout_sentences]
    trained_on = len(sample.train.items)
    _train(sample.train.items, args, workers)
    sp = load_processor(args.out)
    quality = evaluate(sp, measure_on)
    _print_report(args, sp, corpus, sample, trained_on, split_lines, quality, heldout, time.monotonic() - started)
    return 0


def _check_arguments(args: argparse.Namespace) -> None:
    if args.vocab_size < MIN_VOCAB:
        raise UserError(
            f"--vocab-size {args.vocab_size} is too small: the byte-fallback pieces and special tokens "
            f"alone take {3 + len(USER_SYMBOLS) + 256 + len(args.special)}; use at least {MIN_VOCAB}"
        )
    if args.sample_sentences < 1 or args.heldout_sentences < 0 or args.max_sentence_bytes < 64:
        raise UserError(
            "--sample-sentences must be at least 1, --heldout-sentences not negative, --max-sentence-bytes at least 64"
        )
    if args.out.suffix != ".model":
        raise UserError(f"{args.out}: the output must end in .model (SentencePiece writes NAME.model and NAME.vocab)")
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{args.out.parent}: cannot create the folder for --out ({e.strerror})") from None


def _sample(corpus: Corpus, args, workers: int) -> tuple[SentenceSample, int]:
    sample = SentenceSample(args.sample_sentences, args.heldout_sentences, args.seed)
    options = WorkOptions(min_chars=args.min_chars, max_line_bytes=args.max_sentence_bytes)
    split_lines = 0
    with InputProgress(corpus.total_bytes, "sampling", args.quiet, tokens=False) as progress:
        for chunk, bytes_read in ordered_map(clean_chunk, corpus.chunks(), workers, init_worker, (options,)):
            corpus.absorb(chunk.problems)
            split_lines += chunk.split_lines
            pos = 0
            for n, digest in zip(chunk.doc_lines, chunk.digests):
                if not corpus.is_duplicate(digest):
                    for line in chunk.lines[pos : pos + n]:
                        sample.offer(line)
                pos += n
            progress.update(bytes_read, corpus.documents_read)
    return sample, split_lines


def _train(lines: list[str], args, workers: int) -> None:
    """SentencePiece on the sample, written to a temporary prefix, renamed into place.
    `lines` is emptied once written: SentencePiece holds its own copy while it trains."""
    import sentencepiece as spm

    out: Path = args.out
    prefix = temp_path_for(out.with_suffix(""))
    sample_file = prefix.with_name(prefix.name + ".txt")
    try:
        with open(sample_file, "w", encoding="utf-8") as f:
            for line in lines:
                f.write(line)
                f.write("\n")
        count = len(lines)
        lines.clear()
        try:
            spm.SentencePieceTrainer.train(
                input=str(sample_file),
                model_prefix=str(prefix),
                vocab_size=args.vocab_size,
                model_type=args.model_type,
                input_sentence_size=0,
                shuffle_input_sentence=False,
                max_sentence_length=max(4192, args.max_sentence_bytes + 16),
                num_threads=max(1, workers),
                minloglevel=2,
                **trainer_options(tuple(args.special)),
            )
        except (RuntimeError, OSError) as e:
            raise UserError(
                f"SentencePiece could not train a {args.model_type} model of {args.vocab_size} pieces on "
                f"{count:,} sentences: {e}; a small corpus needs a smaller --vocab-size"
            ) from None
        for made, final in ((Path(f"{prefix}.model"), out), (Path(f"{prefix}.vocab"), out.with_suffix(".vocab"))):
            with open(made, "rb") as f:  # SentencePiece does not fsync: a power cut must not leave it empty
                os.fsync(f.fileno())
            os.replace(made, final)
        fsync_dir(out.parent)
    except OSError as e:  # a full disk, a read-only directory
        raise UserError(f"{e.filename or out}: {e.strerror or e}") from None
    finally:
        for leftover in (sample_file, Path(f"{prefix}.model"), Path(f"{prefix}.vocab")):
            leftover.unlink(missing_ok=True)


def evaluate(sp, lines: list[str]) -> dict:
    """How well the vocabulary fits text: the share of (non-space) characters it covers
    without byte fallback, tokens per whitespace word, and byte-fallback tokens."""
    vocab_chars = set()
    for i in range(sp.vocab_size()):
        if not (sp.is_byte(i) or sp.is_control(i) or sp.is_unknown(i)):
            vocab_chars.update(sp.id_to_piece(i).replace(WORD_MARK, " "))
    ids = sp.encode(lines) if lines else []
    tokens = sum(len(x) for x in ids)
    byte_tokens = sum(1 for x in ids for i in x if sp.is_byte(i))
    chars = [ch for line in lines for ch in line if not ch.isspace()]
    covered = sum(ch in vocab_chars for ch in chars)
    words = sum(len(line.split()) for line in lines)
    return {
        "sentences": len(lines),
        "coverage": covered / len(chars) if chars else 1.0,
        "tokens_per_word": tokens / words if words else 0.0,
        "byte_fallback_share": byte_tokens / tokens if tokens else 0.0,
    }


def _print_report(
    args,
    sp,
    corpus: Corpus,
    sample: SentenceSample,
    trained_on: int,
    split_lines: int,
    quality: dict,
    heldout: bool,
    seconds: float,
) -> None:
    n = sp.vocab_size()
    n_control = sum(sp.is_control(i) or sp.is_unknown(i) for i in range(n))
    n_bytes = sum(sp.is_byte(i) for i in range(n))
    n_user = len(USER_SYMBOLS) + len(args.special)
    specials = " ".join(f"{sp.id_to_piece(i)!r}={i}" for i in range(n_control + n_user))
    print(
        f"wrote {args.out} ({args.model_type}): vocab size {n:,} = {n_control} control + {n_user} user-defined + "
        f"{n_bytes} byte-fallback + {n - n_control - n_user - n_bytes:,} learned pieces, in {seconds:.1f} s"
    )
    print(f"special ids: {specials}; the document end is {EOS!r} = {sp.eos_id()}")
    print(
        f"trained on {trained_on:,} sentences sampled from {sample.train.seen:,} "
        f"({corpus.kept:,} documents kept of {corpus.documents_read:,} read; dropped: "
        f"{describe_drops(corpus.dropped)}; {split_lines:,} sentence{'' if split_lines == 1 else 's'} "
        f"over {args.max_sentence_bytes} bytes split)"
    )
    where = (
        f"{quality['sentences']:,} held-out sentences"
        if heldout
        else f"{quality['sentences']:,} training sentences (the corpus is too small to hold any out)"
    )
    print(
        f"on {where}: character coverage {quality['coverage']:.4%}, {quality['tokens_per_word']:.3f} tokens per "
        f"word, byte-fallback tokens {quality['byte_fallback_share']:.3%}"
    )
