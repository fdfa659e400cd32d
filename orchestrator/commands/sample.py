"""`orchestrator sample`: let a checkpoint say something, streamed to the terminal.

The tokenizer is the one the chain was trained with (found through the run's schedule,
or given), checked against the checkpoint's tokenizer hash. With --chat the prompt is the
user's turn (after --system, if given), formatted as instruction data is in training
(runtime.chat), and only the assistant's answer is printed, up to the end of its turn.
"""

from __future__ import annotations

import sys

from orchestrator.records.rundir import checkpoint_folder, find_tokenizer
from runtime.errors import UserError


def cmd_sample(args) -> int:
    if args.system is not None and not args.chat:
        raise UserError("--system is the system text of a chat prompt: add --chat")
    args.checkpoint = checkpoint_folder(args.checkpoint, args.run_dir, args.schedule)
    import sentencepiece as spm

    from trainer.inference import completions, load_model, torch_device  # torch: only here

    model, meta = load_model(args.checkpoint, torch_device(args.device))
    sp = spm.SentencePieceProcessor(
        model_file=str(find_tokenizer(args.checkpoint, meta.tokenizer_sha256, args.tokenizer))
    )
    out = sys.stdout
    if not args.chat:
        out.write(args.prompt)
        out.flush()
    shown = text = ""
    for text in completions(
        model,
        sp,
        args.prompt,
        args.max_tokens,
        args.temperature,
        args.top_k,
        args.top_p,
        args.repetition_penalty,
        args.seed,
        chat=args.chat,
        system=args.system,
    ):
        if not text.endswith("\ufffd"):  # half a character: wait for the rest
            out.write(text[len(shown) :])
            out.flush()
            shown = text
    out.write(text[len(shown) :] + "\n")
    return 0
