"""What an export says about itself: the model card (README.md) naming the checkpoint it
came from, and an Ollama Modelfile beside a .gguf file."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.checkpoint import CheckpointMeta


@dataclass(frozen=True)
class Provenance:
    """Where an exported model comes from."""

    checkpoint: str
    """The checkpoint folder, as given."""
    part: str
    stage: str
    step: int
    global_tokens: int
    """Tokens trained in the whole chain up to this checkpoint."""
    loss: float | None
    """Training loss of the checkpoint's last step."""
    val_loss: float | None
    """Validation loss on the part's own stage."""
    created: str
    tokenizer_sha256: str | None
    evals: dict[str, float] = field(default_factory=dict)
    """The latest evaluation's loss on every validation set (evals.jsonl), where one exists."""
    bpb: dict[str, float] = field(default_factory=dict)
    """Its bits per byte on those sets, where it recorded them (evaluations of an earlier
    release did not)."""

    @classmethod
    def of(
        cls,
        folder: Path,
        meta: CheckpointMeta,
        evals: dict[str, float] | None = None,
        bpb: dict[str, float] | None = None,
    ) -> "Provenance":
        return cls(
            str(folder),
            meta.part_id,
            meta.stage,
            meta.step,
            meta.global_tokens,
            meta.loss,
            meta.val_loss,
            meta.created,
            meta.tokenizer_sha256,
            dict(evals or {}),
            dict(bpb or {}),
        )

    def summary(self) -> str:
        """One line, for GGUF's general.description."""
        losses = f", validation loss {self.val_loss:.4f}" if self.val_loss is not None else ""
        return f"gpt-orchestrator checkpoint {self.part} (step {self.step}, {self.global_tokens:,} tokens{losses})"


def _loss(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def model_card(
    *,
    name: str,
    fmt: str,
    family: str,
    architecture: str,
    model: dict[str, Any],
    n_params: int,
    source: Provenance,
    files: list[str],
    dtype: str,
    gguf_file: str | None = None,
) -> str:
    """README.md of an export: what the model is, where it comes from, how to run it."""
    shape = ", ".join(
        f"{k} {model[k]}" for k in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size") if k in model
    )
    front = {
        "hf": "---\nlibrary_name: transformers\ntags: [gpt-orchestrator, text-generation]\n---\n\n",
        "gguf": "---\ntags: [gpt-orchestrator, gguf, text-generation]\n---\n\n",
    }.get(fmt, "")
    lines = [
        f"# {name}",
        "",
        f"A {family}-family language model ({n_params / 1e6:.1f}M parameters; {shape}) trained from scratch "
        f"with gpt-orchestrator, exported as {architecture} ({dtype}).",
        "",
        "## Where it comes from",
        "",
        "| | |",
        "|---|---|",
        f"| checkpoint | `{source.checkpoint}` |",
        f"| part | `{source.part}` (stage `{source.stage}`, step {source.step}) |",
        f"| tokens trained (whole chain) | {source.global_tokens:,} |",
        f"| training loss (last step) | {_loss(source.loss)} |",
        f"| validation loss (own stage) | {_loss(source.val_loss)} |",
    ]
    lines += [f"| validation loss, `{s}` | {_loss(v)} |" for s, v in source.evals.items()]
    lines += [f"| bits per byte, `{s}` | {_loss(v)} |" for s, v in source.bpb.items()]
    lines += [
        f"| checkpoint written | {source.created} |",
        f"| tokenizer sha256 | `{source.tokenizer_sha256 or '-'}` |",
        f"| exported | {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')} |",
        "",
        "## Files",
        "",
        *[f"- `{f}`" for f in files],
        "",
        "## Use it",
        "",
        "A prompt is read as the start of a document: the tokenizer puts the document-end token "
        "`<|endoftext|>` before it (as in training), and generation stops at the next one."
        if fmt != "pt"
        else "Encode a prompt after the document-end id (`sp.eos_id()` of tokenizer.model), as a document starts "
        "in training and as `orchestrator sample` does.",
        "",
    ]
    if fmt == "hf":
        lines += [
            "```python",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            f'tok = AutoTokenizer.from_pretrained("{name}")',
            f'model = AutoModelForCausalLM.from_pretrained("{name}")',
            'ids = tok("Bugün", return_tensors="pt").input_ids',
            "out = model.generate(ids, max_new_tokens=50)  # sampling settings: generation_config.json",
            "print(tok.decode(out[0], skip_special_tokens=True))",
            "```",
        ]
    elif fmt == "pt":
        lines += [
            "With gpt-orchestrator installed:",
            "",
            "```python",
            "import json, torch",
            "from model.config import config_from_dict",
            "from model.gpt import GPT",
            'config = json.load(open("config.json"))',
            'model = GPT(config_from_dict(config["model"]))',
            'model.load_state_dict(torch.load("model.pt", weights_only=True))',
            "```",
        ]
    else:
        lines += [
            "```sh",
            f"llama-cli -m {gguf_file} -p 'Bugün' -n 50 --repeat-penalty 1.1",
            f"ollama create {name.lower()} -f Modelfile && ollama run {name.lower()} 'Bugün'",
            "```",
        ]
    return front + "\n".join(lines) + "\n"


def chat_template_go(eos: str) -> str:
    """Our chat format (runtime.chat) as an Ollama TEMPLATE (Go template syntax). Ollama
    renders it once per turn, cutting the last turn at {{ .Response }}, and the tokenizer puts
    the document-end token before the whole (add_bos_token), as `sample --chat` does:

        <eos> [<|system|>system] <|user|>prompt <|assistant|>response <eos> <|user|>... <|assistant|>
    """
    from runtime.chat import MARKERS

    return (
        f"{{{{ if .System }}}}{MARKERS['system']}{{{{ .System }}}}{{{{ end }}}}"
        f"{{{{ if .Prompt }}}}{MARKERS['user']}{{{{ .Prompt }}}}{{{{ end }}}}"
        f"{MARKERS['assistant']}{{{{ .Response }}}}{eos}"
    )


def modelfile(gguf_file: str, sampling: dict[str, Any], stop: str, chat: bool = False) -> str:
    """An Ollama Modelfile: the weights, a template, and the sampling `orchestrator sample` uses.
    The template of a model that trained on instruction data (`chat`) is our chat format, with
    the end of turn and the role markers as stops; a base model's is the prompt as raw text
    (no chat template). `stop` is the document-end piece's text (<|endoftext|>)."""
    params = {
        "temperature": sampling.get("temperature"),
        "top_k": sampling.get("top_k"),
        "top_p": sampling.get("top_p"),
        "repeat_penalty": sampling.get("repetition_penalty"),
    }
    template = chat_template_go(stop) if chat else "{{ .Prompt }}"
    lines = [f"FROM ./{gguf_file}", f'TEMPLATE """{template}"""']
    lines += [f"PARAMETER {k} {v}" for k, v in params.items() if v is not None]
    stops = [stop]
    if chat:
        from runtime.chat import MARKERS

        stops += [MARKERS[r] for r in ("user", "assistant", "system")]
    lines += [f'PARAMETER stop "{s}"' for s in stops]
    return "\n".join(lines) + "\n"
