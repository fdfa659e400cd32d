"""`orchestrator prepare`: corpus -> token parts, a validation split and a manifest.

Two steps, both resumable through dataprep.outdir:
1. tokenize: read every input, clean, segment and encode the documents in worker
   processes, drop duplicates, and append each document to the train or the val
   stream (by a stable hash of its title) with its sentence starts; with few documents,
   re-split them by sections instead (dataprep.valsplit);
2. lay out: cut the train stream into parts of near-equal size at document or
   sentence starts, choose each part's window starts (dataprep.layout), write the part
   files, the val split and the manifest (runtime.tokens), and publish them at once.

Instruction data (JSONL of prompt/response or messages, dataprep.readers) takes the same
two steps: the examples are rendered with the chat markers (runtime.chat) and streamed
with their response masks; the layout packs them into windows (dataprep.packing), and
the parts are cut at window boundaries.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from dataprep import valsplit
from dataprep.corpus import Corpus, describe_drops
from dataprep.docwork import WorkOptions, encode_chunk, encode_examples, init_worker
from dataprep.inputs import expand_inputs
from dataprep.layout import WindowStats, part_cuts, parts_for, window_starts, word_start_finder
from dataprep.outdir import OutputDir
from dataprep.packing import PackStats, materialise, plan_windows
from dataprep.parallel import default_workers, ordered_map
from dataprep.progress import InputProgress
from dataprep.readers import CHAT, input_kind
from dataprep.streams import StreamWriter, open_stream, remove_stream
from dataprep.tokenizer import NEWLINE, TokenizerFacts, boundary_tables, describe, load_processor
from dataprep.writer import write_part
from runtime import faults
from runtime.chat import ChatFormatError, chat_ids
from runtime.errors import UserError
from runtime.tokens import FORMAT_MASKED, ChatInfo, PartInfo, TokenizerInfo, TokenManifest

PART_TOLERANCE = 0.01
"""A part may end at a document start up to this fraction of its size from its even share."""


def cmd_prepare(args: argparse.Namespace) -> int:
    specs = expand_inputs(args.input, args.format)
    chat = _is_instruction_data(specs)
    if args.overlap is None:  # instruction data: context before a long answer's continuation
        args.overlap = args.block_size // 4 if chat else 0
    _check_arguments(args, chat)
    facts = describe(args.tokenizer)
    dtype = facts.dtype(args.dtype)
    arguments = {
        "inputs": [str(s.path) for s in specs],
        "tokenizer": str(args.tokenizer),
        "block_size": args.block_size,
        "parts": args.parts,
        "part_tokens": args.part_tokens,
        "val_fraction": args.val_fraction,
        "overlap": args.overlap,
        "min_chars": args.min_chars,
        "format": args.format,
        "text_unit": args.text_unit,
        "dtype": dtype,
    }
    # Added only where they change something, so that a text preparation made before they
    # existed keeps its fingerprint (re-running its command finds it done).
    if args.val_split != "auto":
        arguments["val_split"] = args.val_split
    if chat:
        arguments["instruction"] = True
        arguments["loss_on"] = args.loss_on
        args.chat = _chat_info(facts, args.loss_on)
    else:
        args.chat = None
    fingerprint = _fingerprint(facts, specs, arguments)
    out = OutputDir(args.out, fingerprint)
    if out.open() == "done":
        print(f"{args.out}: already prepared with these inputs and arguments; nothing to do")
        return 0
    workers = default_workers() if args.workers is None else args.workers
    started = time.monotonic()
    try:
        manifest = out.pending_manifest()
        if manifest is None:
            streams = out.streams_done()
            if streams is None:
                streams = _tokenize(Corpus(specs, args.text_unit), out, facts, dtype, args, workers)
                out.mark_streams_done(streams)
                faults.point("prepare.tokenized")
            manifest = _lay_out(out, facts, dtype, args, arguments, fingerprint, streams)
        out.publish(manifest)
    except UserError:
        out.discard()
        raise
    except OSError as e:  # a full disk, a read-only directory: the staging stays for a re-run
        raise UserError(f"{e.filename or args.out}: {e.strerror or e}") from None
    _print_summary(args.out, manifest, time.monotonic() - started)
    return 0


def _is_instruction_data(specs) -> bool:
    """Instruction examples (JSONL of prompt/response or messages) or documents; a
    preparation holds one kind, so mixing them is a user error naming an input of each."""
    kinds = {spec.path: input_kind(spec) for spec in specs}
    chat = [p for p, k in kinds.items() if k == CHAT]
    text = [p for p, k in kinds.items() if k != CHAT]
    if chat and text:
        raise UserError(
            f"{chat[0]} holds instruction examples but {text[0]} holds text documents; prepare them into "
            "separate directories (a stage may list both)"
        )
    return bool(chat)


def _chat_info(facts: TokenizerFacts, loss_on: str) -> ChatInfo:
    sp = load_processor(facts.path)
    try:
        ids = chat_ids(sp)
    except ChatFormatError as e:
        raise UserError(f"{facts.path}: {e}") from None
    return ChatInfo(
        user_id=ids.user,
        assistant_id=ids.assistant,
        system_id=ids.system,
        end_of_turn_id=ids.end_of_turn,
        pad_id=sp.pad_id() if sp.pad_id() >= 0 else ids.end_of_turn,
        loss_on=loss_on,
    )


def _check_arguments(args: argparse.Namespace, chat: bool) -> None:
    problems = []
    if args.block_size < 1:
        problems.append("--block-size must be at least 1")
    if not 0 <= args.overlap < args.block_size:
        problems.append("--overlap must be at least 0 and less than --block-size")
    if not 0 <= args.val_fraction < 1:
        problems.append("--val-fraction must be in [0, 1)")
    if args.parts is not None and args.parts < 1:
        problems.append("--parts must be at least 1")
    if args.part_tokens is not None and args.part_tokens <= args.block_size:
        problems.append("--part-tokens must be larger than --block-size")
    if args.min_chars < 0 or (args.workers is not None and args.workers < 0):
        problems.append("--min-chars and --workers must not be negative")
    if chat and args.val_split != "auto":
        problems.append(
            "--val-split applies to documents; instruction examples are held out whole, by a hash of their text"
        )
    if not chat and args.loss_on != "response":
        problems.append("--loss-on applies to instruction data (JSONL of prompt/response or messages)")
    if problems:
        raise UserError("; ".join(problems))


def _fingerprint(facts: TokenizerFacts, specs, arguments: dict) -> str:
    """Same tokenizer, same inputs (path and size), same arguments: the same preparation."""
    key = {
        "tokenizer": facts.sha256,
        "inputs": [[str(s.path.resolve()), s.size, s.format] for s in specs],
        "arguments": {k: v for k, v in arguments.items() if k not in ("inputs", "tokenizer")},
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _tokenize(corpus: Corpus, out: OutputDir, facts: TokenizerFacts, dtype: str, args, workers: int) -> dict:
    """Step 1: every input -> the train and val streams. Returns what step 2 and the
    manifest need to know."""
    chat = args.chat is not None
    options = WorkOptions(min_chars=args.min_chars, tokenizer=facts.path, chat=chat)
    tokens = 0
    order = bytearray()  # per kept document, in input order: 0 train, 1 val (for a section split)
    started = time.monotonic()
    with (
        StreamWriter(out.staging, "train", dtype, masked=chat) as train,
        StreamWriter(out.staging, "val", dtype, masked=chat) as val,
        InputProgress(corpus.total_bytes, "tokenizing", args.quiet) as progress,
    ):
        encode = encode_examples if chat else encode_chunk
        for chunk, bytes_read in ordered_map(encode, corpus.chunks(), workers, init_worker, (options,)):
            corpus.absorb(chunk.problems)
            pos = seg = 0
            for n, k, digest, key in zip(
                chunk.doc_tokens.tolist(), chunk.doc_segs.tolist(), chunk.digests.tolist(), chunk.split_keys.tolist()
            ):
                if not corpus.is_duplicate(digest):
                    held = key < args.val_fraction
                    (val if held else train).append(
                        chunk.tokens[pos : pos + n],
                        chunk.seg_starts[seg : seg + k],
                        None if chunk.mask is None else chunk.mask[pos : pos + n],
                    )
                    order.append(held)
                pos, seg = pos + n, seg + k
            tokens += len(chunk.tokens)
            progress.update(bytes_read, corpus.documents_read, tokens)
    what = "examples" if chat else "documents"
    if train.documents + val.documents == 0:
        raise UserError(
            f"no {what} left for training after cleaning (read {corpus.documents_read:,}; dropped: "
            f"{describe_drops(corpus.dropped)}); check the inputs, --min-chars and --val-fraction"
        )
    split: dict = {"by": "examples" if chat else valsplit.BY_DOCUMENTS}
    if (
        not chat
        and args.val_fraction > 0
        and valsplit.choose(args.val_split, len(order), args.val_fraction) == valsplit.BY_SECTIONS
    ):
        newline = load_processor(facts.path).piece_to_id(NEWLINE)
        split = asdict(
            valsplit.split_by_sections(
                out.staging, dtype, bytes(order), args.val_fraction, args.block_size + 1, newline
            )
        )
        train_stream, val_stream = open_stream(out.staging, "train", dtype), open_stream(out.staging, "val", dtype)
        counts = {
            "train": {"documents": len(train_stream.doc_starts), "tokens": len(train_stream.tokens)},
            "val": {"documents": len(val_stream.doc_starts), "tokens": len(val_stream.tokens)},
        }
        del train_stream, val_stream
    else:
        counts = {
            "train": {"documents": train.documents, "tokens": train.tokens},
            "val": {"documents": val.documents, "tokens": val.tokens},
        }
    if counts["train"]["documents"] == 0:
        raise UserError(
            f"no {what} left for training after cleaning (read {corpus.documents_read:,}; dropped: "
            f"{describe_drops(corpus.dropped)}); check the inputs, --min-chars and --val-fraction"
        )
    return {**corpus.report(), "seconds": round(time.monotonic() - started, 2), **counts, "val_split": split}


def _lay_out(
    out: OutputDir, facts: TokenizerFacts, dtype: str, args, arguments: dict, fingerprint: str, streams: dict
) -> TokenManifest:
    """Step 2: streams -> part files in the staging folder, and their manifest."""
    out.parts_dir.mkdir(exist_ok=True)
    if args.chat is not None:
        return _lay_out_examples(out, facts, dtype, args, arguments, fingerprint, streams)
    starts_word, breaks_after = boundary_tables(load_processor(facts.path))
    layout = _PartWriter(out.parts_dir, dtype, args.block_size, args.overlap, starts_word, breaks_after)

    train = open_stream(out.staging, "train", dtype)
    total = len(train.tokens)
    n_parts = parts_for(total, args.parts, args.part_tokens)
    if total // n_parts < 2 * (args.block_size + 1):
        raise UserError(
            f"too little text for {n_parts} parts: {total:,} training tokens make parts of "
            f"{total // n_parts:,} tokens, and a part needs at least two windows of --block-size + 1 = "
            f"{args.block_size + 1}; use fewer parts, a smaller --block-size or more input"
        )
    tolerance = max(args.block_size, int(total / n_parts * PART_TOLERANCE))
    cuts = part_cuts(total, n_parts, train.doc_starts, train.sent_starts, tolerance)
    parts = [layout.write(f"part-{i:03d}", train, a, b) for i, (a, b) in enumerate(zip(cuts, cuts[1:]))]
    val_info = None
    if args.val_fraction > 0:
        val_stream = open_stream(out.staging, "val", dtype)
        if len(val_stream.tokens) < args.block_size + 1:
            by = streams.get("val_split", {}).get("by", valsplit.BY_DOCUMENTS)
            what = "pieces" if by == valsplit.BY_SECTIONS else "documents"
            raise UserError(
                f"the validation split holds {len(val_stream.tokens):,} tokens "
                f"({streams['val']['documents']} {what}, held out by {by}), less than one window of "
                f"{args.block_size + 1}; raise --val-fraction, add input, or use --val-fraction 0"
            )
        val_info = layout.write("val", val_stream, 0, len(val_stream.tokens))
    del train
    for name in ("train", "val"):
        remove_stream(out.staging, name)
    source = _source(fingerprint, arguments, streams, asdict(layout.stats))
    return TokenManifest(
        dtype=dtype,
        block_size=args.block_size,
        tokenizer=TokenizerInfo(
            sha256=facts.sha256, vocab_size=facts.vocab_size, eos_id=facts.eos_id, file=str(facts.path)
        ),
        parts=parts,
        val=val_info,
        source=source,
    )


def _source(fingerprint: str, arguments: dict, streams: dict, windows: dict) -> dict:
    return {
        "fingerprint": fingerprint,
        "tool": "orchestrator prepare",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "arguments": arguments,
        **streams,
        "windows": windows,
    }


def _lay_out_examples(
    out: OutputDir, facts: TokenizerFacts, dtype: str, args, arguments: dict, fingerprint: str, streams: dict
) -> TokenManifest:
    """Step 2 for instruction data: examples -> windows (dataprep.packing) -> parts cut at
    window boundaries, near-equal in windows, each file with its loss mask."""
    chat: ChatInfo = args.chat
    block = args.block_size
    width = block + 1
    token_dtype = np.dtype(dtype).newbyteorder("<")
    all_targets = chat.loss_on == "all"
    total = PackStats()

    def lay(name: str, stream, all_targets: bool):
        starts = np.asarray(stream.doc_starts, dtype=np.int64)
        lengths = np.diff(np.append(starts, len(stream.tokens)))
        planned_on = np.ones(len(stream.tokens), np.uint8) if all_targets else stream.mask
        return plan_windows(lengths, planned_on, starts, block, args.overlap), starts, lengths

    def write(name: str, stream, plan, starts, lengths, all_targets: bool) -> PartInfo:
        tokens, mask, stats = materialise(
            plan,
            stream.tokens,
            stream.mask,
            starts,
            lengths,
            block,
            chat.end_of_turn_id,
            chat.pad_id,
            token_dtype,
            all_targets,
        )
        if name != "val":
            total.add(stats)
        return write_part(
            out.parts_dir, name, tokens, np.arange(len(plan), dtype=np.uint64) * width, stats.examples, dtype, mask
        )

    train = open_stream(out.staging, "train", dtype)
    plan, starts, lengths = lay("train", train, all_targets)
    n_parts = parts_for(len(plan) * width, args.parts, args.part_tokens)
    if len(plan) // n_parts < 2:
        raise UserError(
            f"too little data for {n_parts} parts: {streams['train']['documents']:,} training examples "
            f"make {len(plan):,} windows of --block-size + 1 = {width} tokens, and a part needs at least "
            "two; use fewer parts, a smaller --block-size or more examples"
        )
    cuts = [round(i * len(plan) / n_parts) for i in range(n_parts + 1)]
    parts = [
        write(f"part-{i:03d}", train, plan[a:b], starts, lengths, all_targets)
        for i, (a, b) in enumerate(zip(cuts, cuts[1:]))
    ]
    val_info = None
    if args.val_fraction > 0:
        val_stream = open_stream(out.staging, "val", dtype)
        val_plan, val_starts, val_lengths = lay("val", val_stream, False)
        if len(val_plan) == 0:
            raise UserError(
                f"the validation split holds no examples ({streams['val']['documents']} of "
                f"{streams['train']['documents'] + streams['val']['documents']:,} held out by a hash of "
                "their text); raise --val-fraction, add examples, or use --val-fraction 0"
            )
        val_info = write("val", val_stream, val_plan, val_starts, val_lengths, False)
        del val_stream
    del train
    for name in ("train", "val"):
        remove_stream(out.staging, name)
    return TokenManifest(
        format=FORMAT_MASKED,
        dtype=dtype,
        block_size=block,
        tokenizer=TokenizerInfo(
            sha256=facts.sha256, vocab_size=facts.vocab_size, eos_id=facts.eos_id, file=str(facts.path)
        ),
        parts=parts,
        val=val_info,
        chat=chat,
        source=_source(fingerprint, arguments, streams, asdict(total)),
    )


class _PartWriter:
    """One part (or the val split) from a stream range: its windows and its files."""

    def __init__(
        self, folder: Path, dtype: str, block_size: int, overlap: int, starts_word: np.ndarray, breaks_after: np.ndarray
    ):
        self.folder, self.dtype, self.block_size, self.overlap = folder, dtype, block_size, overlap
        self.starts_word, self.breaks_after = starts_word, breaks_after
        self.stats = WindowStats()

    def write(self, name: str, stream, a: int, b: int) -> PartInfo:
        tokens = stream.tokens[a:b]
        sents = _within(stream.sent_starts, a, b)
        docs = _within(stream.doc_starts, a, b)
        documents = len(docs) + (0 if len(docs) and docs[0] == 0 else 1)  # a part may start mid-document
        finder = word_start_finder(tokens, self.starts_word, self.breaks_after)
        starts, stats = window_starts(b - a, self.block_size, self.overlap, sents, docs, finder)
        if len(starts) == 0:
            raise UserError(
                f"{name}: {b - a} tokens, too few for one window of --block-size + 1 = {self.block_size + 1}"
            )
        self.stats.add(stats)
        return write_part(self.folder, name, tokens, starts, documents, self.dtype)


def _within(positions: np.ndarray, a: int, b: int) -> np.ndarray:
    """The positions in [a, b), relative to a, as int64."""
    lo, hi = np.searchsorted(positions, [a, b])
    return np.asarray(positions[lo:hi], dtype=np.int64) - a


def _print_summary(out: Path, manifest: TokenManifest, seconds: float) -> None:
    src = manifest.source
    train_tokens = sum(p.tokens for p in manifest.parts)
    windows = src.get("windows", {})
    print(
        f"prepared {out}: {len(manifest.parts)} parts ({manifest.parts[0].name} .. {manifest.parts[-1].name}), "
        f"{train_tokens:,} training tokens, {manifest.val.tokens if manifest.val else 0:,} validation tokens, "
        f"{manifest.dtype}, block size {manifest.block_size}, in {seconds:.1f} s"
    )
    if manifest.instruction:
        targets = sum(p.targets or 0 for p in manifest.parts)
        print(
            f"examples: {src.get('documents_read', 0):,} read; {src['train']['documents']:,} train, "
            f"{src['val']['documents']:,} val; dropped: {describe_drops(src.get('dropped', {}))}"
        )
        print(
            f"windows: {windows.get('windows', 0):,}, examples packed whole, {windows.get('long_examples', 0):,} "
            f"longer than a window in {windows.get('slide_windows', 0):,} sliding windows; padding "
            f"{windows.get('pad_tokens', 0) / max(train_tokens, 1):.1%} of the tokens; loss targets {targets:,} "
            f"({'every token' if manifest.chat.loss_on == 'all' else 'the responses'}; validation: the responses)"
        )
        return
    split = src.get("val_split", {})
    if split.get("by") == valsplit.BY_SECTIONS:
        print(
            f"documents: {src.get('documents_read', 0):,} read; validation by sections: held out "
            f"{split['held_out_sections']:,} of the {split['sections']:,} sections of the "
            f"{split['long_documents']:,} long documents ({split['section_tokens']:,}+ tokens each), leaving "
            f"{src['train']['documents']:,} "
            f"training pieces; dropped: {describe_drops(src.get('dropped', {}))}"
        )
    else:
        print(
            f"documents: {src.get('documents_read', 0):,} read; {src['train']['documents']:,} train, "
            f"{src['val']['documents']:,} val; dropped: {describe_drops(src.get('dropped', {}))}"
        )
    print(
        f"windows: {windows.get('windows', 0):,}; starts inside a long sentence {windows.get('mid_sentence', 0):,}, "
        f"inside a word {windows.get('mid_word', 0):,}; tail tokens left out {windows.get('uncovered_tokens', 0):,}"
    )
    if src.get("damaged_example"):
        print(f"damaged pages skipped, e.g. {src['damaged_example']}")
