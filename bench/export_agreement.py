"""How closely an exported model agrees with the checkpoint it came from.

    python bench/export_agreement.py --checkpoint DIR --tokenizer F.model [--text FILE] [--windows 8]
                                     [--prompts 8] [--tokens 32]

Exports the checkpoint with `orchestrator export` as a Hugging Face folder (f32) and as
GGUF (f32, f16, q8_0), then prints, side by side in one run:
- tokenizer: on every line of --text (default: the Turkish test corpus) plus a few lines of
  circumflex vowels, digits, URLs and chat markers, how many encode to exactly
  SentencePiece's ids, and decode back to the same text, in transformers and in llama.cpp;
- logits: the largest absolute difference from our own forward pass over --windows
  windows of block_size tokens, in transformers (the HF folder, and each GGUF through
  transformers' GGUF loader) and in llama.cpp;
- greedy text: of --prompts prompts (line starts), how many continue with the same
  --tokens tokens as ours (no repetition penalty), in transformers and in llama.cpp.
llama.cpp columns need llama-cpp-python (docs/evaluation.md says how to build it) and
read "-" without it. Single-threaded; seconds for a small model.
"""

from __future__ import annotations

import argparse
import gzip
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("OMP_NUM_THREADS", "1")

EXTRA = [
    "Yegâne hedefimiz hâkimiyet-i milliyedir; kâğıt, kâr, Hâlâ ümitsiz değiliz. Âdet, İstanbul'da.",
    "29 Ekim 1923'te saat 20.30'da 1.250.000 kişi; %12,5 artış, 3/4 oranında, 0 ile 9876543210 arası.",
    "Kaynak: https://tr.wikipedia.org/wiki/Mustafa_Kemal_Atat%C3%BCrk?oldid=12345#Hayat%C4%B1 (bilgi@ornek.com.tr)",
    "<|system|>Sen yardımcı bir asistansın.\n<|user|>Vergi nedir?\n<|assistant|>Vergi, devletin gelir kaynağıdır.",
    "  iki  boşluk   ve\tsekme\n\nyeni paragraf \n",
    "Emoji 😀, matematik ∑ ½ ≠, 中文, Ελληνικά, русский: hepsi bayt olarak.",
]


def read_lines(path: Path) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [line for line in f.read().split("\n") if line.strip()]


def export(checkpoint: Path, tokenizer: Path, out: Path, fmt: str, dtype: str) -> tuple[Path, float]:
    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrator",
            "export",
            "--checkpoint",
            str(checkpoint),
            "--tokenizer",
            str(tokenizer),
            "--out",
            str(out),
            "--format",
            fmt,
            "--dtype",
            dtype,
            "--name",
            "bench",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    if done.returncode:
        sys.exit(f"export {fmt} {dtype} failed: {done.stderr}")
    return out, time.monotonic() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--tokenizer", type=Path, required=True)
    ap.add_argument("--text", type=Path, default=REPO / "tests" / "data" / "tr-ataturk-speeches-excerpt.txt.gz")
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=32)
    args = ap.parse_args()

    import numpy as np
    import sentencepiece as spm
    import torch
    import transformers

    from model.generate import generate
    from trainer.inference import load_model

    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    try:
        import llama_cpp
    except ImportError:
        llama_cpp = None
    print(
        f"load average {os.getloadavg()[0]:.2f}; transformers {transformers.__version__}; "
        f"llama-cpp-python {getattr(llama_cpp, '__version__', 'not installed')}"
    )

    model, meta = load_model(args.checkpoint, torch.device("cpu"))
    block = model.config.block_size
    sp = spm.SentencePieceProcessor(model_file=str(args.tokenizer))
    lines = read_lines(args.text)
    texts = lines + EXTRA
    stream = [i for line in lines for i in (sp.eos_id(), *sp.encode(line))]
    step = max(1, (len(stream) - block) // args.windows)
    windows = [stream[k * step : k * step + block] for k in range(args.windows)]
    prompts = [[sp.eos_id(), *sp.encode(line)[:8]] for line in lines[: args.prompts]]
    with torch.no_grad():
        ours = [model(torch.tensor([w]))[0][0].numpy() for w in windows]
    greedy = [
        torch.cat(list(generate(model, torch.tensor([p]), args.tokens, temperature=0.0)), 1)[0].tolist()
        for p in prompts
    ]

    tmp = Path(tempfile.mkdtemp(prefix="export-bench-"))
    folders = {("hf", "f32"): None, ("gguf", "f32"): None, ("gguf", "f16"): None, ("gguf", "q8_0"): None}
    for fmt, dtype in folders:
        folders[(fmt, dtype)], seconds = export(args.checkpoint, args.tokenizer, tmp / f"{fmt}-{dtype}", fmt, dtype)
        size = sum(p.stat().st_size for p in folders[(fmt, dtype)].iterdir()) / 2**20
        print(f"export {fmt:4} {dtype:5} {seconds:5.1f} s  {size:7.2f} MiB")

    hf_dir = folders[("hf", "f32")]
    tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    same_ids = sum(tok(t, add_special_tokens=False).input_ids == sp.encode(t) for t in texts)
    same_text = sum(tok.decode(sp.encode(t)) == t for t in texts)
    report = (
        f"\ntokenizer on {len(texts)} texts ({sum(len(sp.encode(t)) for t in texts):,} tokens): "
        f"transformers ids identical {same_ids}/{len(texts)}, decodes back {same_text}/{len(texts)}"
    )
    rows = []
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    rows.append(("transformers, HF folder f32", hf_model))
    config = transformers.AutoConfig.from_pretrained(hf_dir)
    for dtype in ("f32", "f16", "q8_0"):
        folder = folders[("gguf", dtype)]
        gguf_file = next(folder.glob("*.gguf"))
        rows.append(
            (
                f"transformers, GGUF {dtype}",
                transformers.AutoModelForCausalLM.from_pretrained(
                    folder, gguf_file=gguf_file.name, config=config
                ).eval(),
            )
        )
    if llama_cpp is not None:
        llm = llama_cpp.Llama(
            model_path=str(next(folders[("gguf", "f32")].glob("*.gguf"))),
            n_ctx=block,
            logits_all=True,
            n_threads=1,
            verbose=False,
        )
        same = sum(llm.tokenize(t.encode(), add_bos=False, special=False) == sp.encode(t) for t in texts if t)
        same_text = sum(llm.detokenize(sp.encode(t)).decode("utf-8", "replace") == t for t in texts if t)
        report += f"; llama.cpp ids identical {same}/{len(texts)}, decodes back {same_text}/{len(texts)}"
        for dtype in ("f32", "f16", "q8_0"):
            rows.append(
                (
                    f"llama.cpp, GGUF {dtype}",
                    llama_cpp.Llama(
                        model_path=str(next(folders[("gguf", dtype)].glob("*.gguf"))),
                        n_ctx=block,
                        logits_all=True,
                        n_threads=1,
                        verbose=False,
                    ),
                )
            )
    print(report)

    print(
        f"\n{'runtime':30} {'max |logit diff|':>17} {'greedy identical':>17}   ({len(windows)} windows of "
        f"{block} tokens; {len(prompts)} prompts x {args.tokens} tokens)"
    )
    for name, runner in rows:
        if isinstance(runner, transformers.PreTrainedModel):
            with torch.no_grad():
                diff = max(
                    float((runner(torch.tensor([w])).logits[0].numpy() - o).__abs__().max())
                    for w, o in zip(windows, ours)
                )
                same = 0
                for p, mine in zip(prompts, greedy):
                    out = runner.generate(
                        torch.tensor([p]),
                        max_new_tokens=args.tokens,
                        do_sample=False,
                        repetition_penalty=1.0,
                        attention_mask=torch.ones(1, len(p), dtype=torch.long),
                    )
                    theirs = out[0, len(p) :].tolist()
                    same += theirs == (mine[: mine.index(sp.eos_id()) + 1] if sp.eos_id() in mine else mine)
        else:
            diff = 0.0
            for w, o in zip(windows, ours):
                runner.reset()
                runner.eval(w)
                diff = max(diff, float(np.abs(np.array(runner.scores[: len(w)]) - o).max()))
            same = 0
            for p, mine in zip(prompts, greedy):
                runner.reset()
                runner.eval(p)
                theirs = []
                for _ in range(args.tokens):
                    theirs.append(int(np.argmax(runner.scores[runner.n_tokens - 1])))
                    runner.eval([theirs[-1]])
                same += theirs == mine
        print(f"{name:30} {diff:17.2e} {same:>10}/{len(prompts)}")
    print(
        f"\ncheckpoint {meta.part_id}, {meta.global_tokens:,} tokens, validation loss {meta.val_loss}; "
        f"exports in {tmp}; load average {os.getloadavg()[0]:.2f}"
    )


if __name__ == "__main__":
    main()
