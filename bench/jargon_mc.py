"""A multiple-choice task for lm-evaluation-harness, made from the demo's question-answer pairs.

For each of the 120 pairs of orchestrator/demo_corpus/jargon-qa.jsonl ("What does "TERM"
mean in hacker jargon?" and the entry's first paragraph), four choices: the start of its
own answer and the starts of three other entries' answers (fixed offsets, so the file is
the same every time), the right one at a rotating position. A choice is the answer's first
sentence (of 6 words or more), at most 16 words, leading enumerators ("1."), parts of
speech ("n.", "vt.") and usage notes ("[common]") dropped: short enough that question and
choice fit a demo model's 128-token context.

    python bench/jargon_mc.py   # writes orchestrator/harness_tasks/jargon_qa_mc.jsonl

The task's YAML beside it (jargon_qa_mc.yaml) reads that file; `orchestrator evaluate
--harness jargon_qa_mc` runs it (docs/evaluation.md).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
QA = REPO / "orchestrator" / "demo_corpus" / "jargon-qa.jsonl"
OUT = REPO / "orchestrator" / "harness_tasks" / "jargon_qa_mc.jsonl"
OFFSETS = (31, 62, 93)  # distractors: the answers this many entries further on (mod 120)
MAX_WORDS = 16


def choice_text(answer: str) -> str:
    """The answer's first words: up to the first sentence end after at least 6 words, at most
    MAX_WORDS; leading enumerators, parts of speech ("n.", "vt.") and [usage notes] dropped."""
    text = re.sub(r"^(\d+\.|[a-z]{1,6}\.|\[[^\]]*\]|,|\s)+", "", answer.strip())
    words = text.split()[:MAX_WORDS]
    for i, word in enumerate(words[5:], start=6):
        if word.endswith((".", "!", "?", ";", ":")):
            return " ".join(words[:i]).rstrip(";:")
    return " ".join(words)


def rows(pairs: list[dict]) -> list[dict]:
    n = len(pairs)
    starts = [choice_text(p["response"]) for p in pairs]
    out = []
    for i, pair in enumerate(pairs):
        others = [starts[(i + k) % n] for k in OFFSETS]
        label = i % 4
        choices = others[:label] + [starts[i]] + others[label:]
        term = re.match(r'What does "(.*)" mean in hacker jargon\?', pair["prompt"])[1]
        out.append({"id": i, "term": term, "question": pair["prompt"], "choices": choices, "label": label})
    return out


def main() -> None:
    pairs = [json.loads(line) for line in QA.read_text(encoding="utf-8").splitlines() if line.strip()]
    made = rows(pairs)
    assert all(len(set(r["choices"])) == 4 for r in made), "two choices of one question are the same text"
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in made), encoding="utf-8")
    print(f"{OUT}: {len(made)} questions, 4 choices each")


if __name__ == "__main__":
    main()
