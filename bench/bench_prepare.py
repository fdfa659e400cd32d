"""Speed and memory of `orchestrator prepare` on a real Wikipedia dump.

    python bench/bench_prepare.py [--copies 8] [--vocab-size 8000] [--workers N]

Prints, for the shared enwiki sample and for a larger dump made of `--copies` retitled
copies of its pages:
- end to end (read bz2, parse XML, strip wikitext, clean, tokenize, lay out, write):
  MB/s of decompressed dump XML and of the .bz2 file, and the peak RSS of the whole
  process tree (the command and its workers), sampled every 20 ms;
- tokenization alone, side by side in this process on the same cleaned text: our
  encoder (sentence segmentation + SentencePiece + boundaries) against one
  SentencePiece call on the whole documents, as a ratio, so that load from other work
  on the machine cancels out.
Targets (2-core machine): >= 3 MB/s of dump XML, peak RSS < 1 GB at any input size,
tokenization within 1.5x of SentencePiece alone. Wall-clock MB/s depends on what else
the machine runs (the load average is printed before and after); CPU seconds and MB per
CPU-second do not: on N otherwise idle cores the wall rate approaches N times the latter.
"""

from __future__ import annotations

import argparse
import bz2
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from dataprep.docwork import Problems, clean_document, encode_documents  # noqa: E402
from dataprep.wikidump import read_dump  # noqa: E402

SAMPLE = REPO / "tests" / "data" / "enwiki-sample-pages-articles.xml.bz2"


def build_larger(sample: Path, copies: int, out: Path) -> int:
    """A dump of `copies` copies of the sample's pages, each copy's titles suffixed so no
    document is an exact duplicate (which prepare would drop). Returns its XML size."""
    xml = bz2.decompress(sample.read_bytes()).decode("utf-8")
    head_end = xml.index("</siteinfo>") + len("</siteinfo>\n")
    body = xml[head_end : xml.rindex("</mediawiki>")]
    size = 0
    with bz2.open(out, "wt", encoding="utf-8", compresslevel=9) as f:
        f.write(xml[:head_end])
        size += len(xml[:head_end].encode())
        for k in range(copies):
            copy = re.sub(r"<title>(.*?)</title>", rf"<title>\1 ({k})</title>", body)
            f.write(copy)
            size += len(copy.encode())
        f.write("</mediawiki>\n")
    return size + len("</mediawiki>\n")


def run_measured(argv: list[str]) -> tuple[float, int, float]:
    """Wall seconds, peak RSS (bytes, summed over the process tree) and CPU seconds (user
    + system, the command and the workers it waited for) of a command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = psutil.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    while proc.poll() is None:
        try:
            tree = [proc, *proc.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.02)
    seconds = time.perf_counter() - started
    out, err = proc.communicate()
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {' '.join(argv)}\n{err}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return seconds, peak, cpu


def prepare_once(dump: Path, tokenizer: Path, out: Path, workers: int | None) -> tuple[float, int, float]:
    argv = [
        sys.executable,
        "-m",
        "orchestrator",
        "prepare",
        "--input",
        str(dump),
        "--tokenizer",
        str(tokenizer),
        "--out",
        str(out),
        "--part-tokens",
        "2000000",
        "--block-size",
        "512",
        "--val-fraction",
        "0.05",
        "--quiet",
    ]
    if workers is not None:
        argv += ["--workers", str(workers)]
    return run_measured(argv)


def tokenization_ratio(dump: Path, tokenizer: Path, rounds: int = 3) -> tuple[float, float, float]:
    """(ours seconds, SentencePiece seconds, MB of text): best of `rounds`, alternating."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tokenizer))
    texts = [t for doc, _ in read_dump(dump, Counter()) if (t := clean_document(doc, 50, Problems()))]
    ours, raw = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        encode_documents(sp, texts, sp.eos_id())
        t1 = time.perf_counter()
        sp.encode(texts, num_threads=1)
        t2 = time.perf_counter()
        ours.append(t1 - t0)
        raw.append(t2 - t1)
    return min(ours), min(raw), sum(len(t.encode()) for t in texts) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--copies", type=int, default=8, help="copies of the sample in the larger dump (default 8)")
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=None, help="prepare's --workers (default: one per core)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-prepare-") as tmp:
        tmp = Path(tmp)
        tokenizer = tmp / "tok.model"
        seconds, _, _ = run_measured(
            [
                sys.executable,
                "-m",
                "orchestrator",
                "tokenizer",
                "train",
                "--input",
                str(SAMPLE),
                "--vocab-size",
                str(args.vocab_size),
                "--out",
                str(tokenizer),
                "--quiet",
            ]
        )
        print(f"tokenizer: {args.vocab_size} pieces trained on the sample in {seconds:.1f} s")
        larger = tmp / f"enwiki-x{args.copies}-pages-articles.xml.bz2"
        larger_xml = build_larger(SAMPLE, args.copies, larger)
        sample_xml = len(bz2.decompress(SAMPLE.read_bytes()))

        print(f"cores: {psutil.cpu_count()}, load average before: {psutil.getloadavg()[0]:.2f}")
        print(
            f"{'input':<30}{'XML MB':>8}{'bz2 MB':>8}{'seconds':>9}{'XML MB/s':>10}{'bz2 MB/s':>10}"
            f"{'CPU s':>8}{'XML MB/CPU-s':>14}{'peak RSS MB':>13}"
        )
        for name, dump, xml_bytes in (
            ("shared enwiki sample", SAMPLE, sample_xml),
            (f"sample x{args.copies} (retitled)", larger, larger_xml),
        ):
            seconds, peak, cpu = prepare_once(dump, tokenizer, tmp / f"out-{dump.stem}", args.workers)
            bz = dump.stat().st_size
            print(
                f"{name:<30}{xml_bytes / 1e6:>8.1f}{bz / 1e6:>8.2f}{seconds:>9.2f}{xml_bytes / 1e6 / seconds:>10.2f}"
                f"{bz / 1e6 / seconds:>10.2f}{cpu:>8.1f}{xml_bytes / 1e6 / cpu:>14.2f}{peak / 2**20:>13.0f}"
            )

        ours, raw, mb = tokenization_ratio(SAMPLE, tokenizer)
        print(
            f"tokenization of the sample's {mb:.1f} MB of cleaned text, one process, best of 3: ours "
            f"{ours:.2f} s ({mb / ours:.2f} MB/s), SentencePiece alone {raw:.2f} s ({mb / raw:.2f} MB/s): "
            f"ratio {ours / raw:.2f}x"
        )
        print(f"load average after: {psutil.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
