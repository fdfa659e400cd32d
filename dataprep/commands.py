"""Registers `tokenizer train` and `prepare` with the orchestrator CLI.

Only argparse, pathlib and runtime.args here: the CLI builds its whole parser for every command,
`orchestrator status` included, so the work itself is named as "module:function" and
imported only when the command runs.
"""

import argparse
from pathlib import Path

from runtime.args import number

_INPUT_HELP = (
    "an input: a MediaWiki XML dump (.xml, .xml.bz2), JSONL with title/text fields (.jsonl), plain "
    "text (anything else), or a directory of such files; .gz and .bz2 are read as they stream. "
    "For prepare, JSONL of prompt/response (optional system) or messages is instruction data. "
    "Repeat for several inputs"
)


def _add_input_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", "-i", type=Path, action="append", required=True, metavar="PATH", help=_INPUT_HELP)
    p.add_argument(
        "--format",
        choices=("auto", "mediawiki", "jsonl", "text"),
        default="auto",
        help="how to read every input (default: auto, by file name, then by content)",
    )
    p.add_argument(
        "--text-unit",
        choices=("block", "line", "file"),
        default="block",
        help="what one document is in plain text: a blank-line separated block (its lines joined), "
        "one line, or a whole file (default: block)",
    )
    p.add_argument(
        "--min-chars",
        type=number("--min-chars", low=0),
        default=50,
        metavar="N",
        help="drop documents shorter than N characters after cleaning (default: 50)",
    )
    p.add_argument(
        "--workers",
        type=number("--workers", low=0),
        default=None,
        metavar="N",
        help="worker processes for parsing, cleaning and tokenizing (default: one per CPU core; "
        "0 runs everything in this process)",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")


def register(subparsers) -> None:
    """Add this package's commands to `orchestrator`'s subparsers."""
    fmt = argparse.RawDescriptionHelpFormatter

    tok = subparsers.add_parser(
        "tokenizer", help="train a SentencePiece tokenizer on your corpus", description="Tokenizer commands."
    )
    tok_sub = tok.add_subparsers(dest="tokenizer_command", required=True, metavar="COMMAND")
    p = tok_sub.add_parser(
        "train",
        formatter_class=fmt,
        help="train a SentencePiece model (BPE or unigram) on a sample of the corpus",
        description="Train a SentencePiece tokenizer on a uniform sample of the corpus's sentences.\n\n"
        "Byte fallback and full character coverage (every byte sequence encodes, no <unk>), no\n"
        "normalisation beyond the cleaning step's NFC (decode(encode(text)) == text), and these\n"
        'single-id specials: <|endoftext|> (document end, id 1), <|pad|>, "\\n", <|user|>,\n'
        "<|assistant|>, <|system|>. Prints the vocabulary size, the character coverage and the\n"
        "tokens per word on held-out sentences. See docs/data.md.",
        epilog="example: orchestrator tokenizer train --input trwiki-latest-pages-articles.xml.bz2 "
        "--vocab-size 16000 --out tokenizers/tr16k.model",
    )
    _add_input_options(p)
    p.add_argument(
        "--vocab-size", type=number("--vocab-size", low=1), required=True, metavar="N", help="pieces in the vocabulary"
    )
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="FILE.model",
        help="the model to write (FILE.vocab is written beside it)",
    )
    p.add_argument(
        "--model-type", choices=("bpe", "unigram"), default="bpe", help="SentencePiece algorithm (default: bpe)"
    )
    p.add_argument(
        "--sample-sentences",
        type=number("--sample-sentences", low=1),
        default=1_000_000,
        metavar="N",
        help="train on a uniform sample of at most N sentences; this bounds memory (default: 1000000)",
    )
    p.add_argument(
        "--heldout-sentences",
        type=number("--heldout-sentences", low=0),
        default=2000,
        metavar="N",
        help="sentences held out (never trained on) to measure the result (default: 2000)",
    )
    p.add_argument(
        "--max-sentence-bytes",
        type=number("--max-sentence-bytes", low=1),
        default=4096,
        metavar="N",
        help="split longer sentences at spaces rather than let SentencePiece skip them (default: 4096)",
    )
    p.add_argument(
        "--special",
        action="append",
        default=[],
        metavar="TOKEN",
        help="another user-defined token to keep as one id (repeatable), e.g. <|tool|>",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the sentence sample (default: 0)")
    p.set_defaults(handler="dataprep.train_tokenizer:cmd_train")

    p = subparsers.add_parser(
        "prepare",
        formatter_class=fmt,
        help="corpus -> token parts, a validation split and manifest.json",
        description="Tokenize a corpus into parts of near-equal token counts for a training chain.\n\n"
        "Writes part-000.bin/.idx ... (tokens, and the token-safe window starts: document or\n"
        "sentence starts), val.bin/.idx (documents held out by a stable hash of their title, or\n"
        "sections of each long document when documents are few) and manifest.json, all at once\n"
        "at the end: an interrupted run leaves no part that looks complete, and running the same\n"
        "command again finishes the job.\n\n"
        'Instruction data (JSONL lines {"prompt", "response", "system"?} or {"messages":\n'
        '[{"role", "content"}, ...]}) is rendered with the chat markers, packed whole into\n'
        "windows, and gets part-000.mask beside each part: only the responses are loss targets.\n"
        "See docs/data.md.",
        epilog="example: orchestrator prepare --input trwiki-latest-pages-articles.xml.bz2 --tokenizer "
        "tokenizers/tr16k.model --out data/trwiki --parts 120 --block-size 256",
    )
    _add_input_options(p)
    p.add_argument(
        "--tokenizer",
        type=Path,
        required=True,
        metavar="FILE.model",
        help="the SentencePiece model (from `orchestrator tokenizer train`)",
    )
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="DIR",
        help="the directory to write: new, empty, or an unfinished run of the same command",
    )
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument(
        "--parts", type=number("--parts", low=1), metavar="N", help="cut the training tokens into N parts"
    )
    size.add_argument(
        "--part-tokens",
        type=number("--part-tokens", low=1),
        metavar="N",
        help="cut into as few near-equal parts as keep each at most about N tokens",
    )
    p.add_argument(
        "--block-size",
        type=number("--block-size", low=1),
        required=True,
        metavar="N",
        help="the model's block_size: windows of N + 1 tokens are laid out for it (a model with a "
        "smaller one would leave the end of every window unused)",
    )
    p.add_argument(
        "--val-fraction",
        type=number("--val-fraction", float, low=0, high=1),
        default=0.01,
        metavar="X",
        help="share of documents held out for validation, by a stable hash of their title (or file "
        "name) (default: 0.01)",
    )
    p.add_argument(
        "--val-split",
        choices=("auto", "documents", "sections"),
        default="auto",
        help="hold out whole documents, or a share of each long document's sections; auto: sections "
        "when the documents are too few to hold out 5 of them on average (default: auto)",
    )
    p.add_argument(
        "--overlap",
        type=number("--overlap", low=0),
        default=None,
        metavar="N",
        help="tokens shared by consecutive windows inside a long document (default: 0); instruction "
        "data: tokens of context before the first counted token of a long example's next window "
        "(default: a quarter of --block-size)",
    )
    p.add_argument(
        "--loss-on",
        choices=("response", "all"),
        default="response",
        help="instruction data: the loss targets of the training parts, the responses (default) or "
        "every token but padding; the validation split always counts the responses only",
    )
    p.add_argument(
        "--dtype",
        choices=("auto", "uint16", "uint32"),
        default="auto",
        help="token dtype (default: uint16 when the vocabulary fits, else uint32)",
    )
    p.set_defaults(handler="dataprep.prepare:cmd_prepare")
