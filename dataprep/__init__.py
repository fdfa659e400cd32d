"""Corpus preparation: `orchestrator tokenizer train` and `orchestrator prepare`.

Never imports torch. The pieces, in the order data flows through them:

    commands         the two commands' arguments (argparse only, imported by the CLI)
    inputs           finding input files, opening them (bz2/gzip), read errors
    readers          input -> raw documents: JSONL, plain text (wikidump for dumps);
                     instruction examples (JSONL of prompt/response or messages)
    wikidump         MediaWiki XML dumps, streamed page by page
    wikitext         wikitext -> prose, with mwparserfromhell's tokenizer
    cleaning         NFC, control characters, whitespace; duplicate and split hashes
    sentences        sentence segmentation (token-safe window starts)
    corpus           every input as one stream of chunks, drop counts, duplicates
    parallel         the bounded, ordered process pool
    docwork          what the worker processes do with a chunk
    tokenizer        the tokenizer's conventions (special ids, dtype, word starts)
    sampling         bounded sentence samples for tokenizer training
    train_tokenizer  `tokenizer train`
    streams          the intermediate token streams of `prepare`
    valsplit         the validation split by sections, when documents are few
    layout           part cuts and window starts
    packing          instruction data: examples packed whole into windows, long ones slid
    writer           part files, streamed and hashed
    outdir           the output directory: staging, resume, atomic publish
    prepare          `prepare`
    progress         progress bars

The format written is runtime.tokens (read by trainer.tokenfile); instruction examples
are rendered by runtime.chat; docs/data.md describes it all for users.
"""
