"""The chat format: how a conversation becomes token ids, for training and for inference.

One definition shared by `prepare` (instruction data) and by `sample --chat` and
`compare --prompts --chat`, so a prompt at inference looks exactly like a prompt in
training. A conversation of (role, content) messages renders as

    [<|system|> system] <|user|> prompt <|assistant|> response <|endoftext|>
                        <|user|> prompt <|assistant|> response <|endoftext|> ...

- Each role marker is one id (the tokenizer reserves them as user-defined pieces, see
  dataprep.tokenizer) and the content follows it directly: no newline, no space; with
  no dummy prefix the content's first word encodes as a document's first word does.
- The end of an assistant turn is <|endoftext|>, the tokenizer's eos, the same id that
  ends a document. Not a new <|end|> piece: tokenizers that users already trained have
  no such piece, and a chain keeps its tokenizer; eos is a control piece that no text
  can forge; every generator already stops at it (ours, and llama.cpp on an exported
  model, which knows it as the eos); and a model that learned where documents end in
  pretraining already predicts it. A user turn (and the system turn) is ended by the
  next role marker, which the prompt supplies, so it needs no token of its own.
- Only the assistant's tokens and the eos that ends its turn are loss targets; the
  markers, the system text and the prompts are context.
- A conversation is preceded by an eos, as every document is in training (a packed
  window starts with one; every earlier example ends with one).

Standard library only: `encode` is any function from text to ids (a SentencePiece
processor's encode), and the ids come from ChatIds.
"""

from __future__ import annotations

from dataclasses import dataclass

ROLES = ("system", "user", "assistant")
MARKERS = {"user": "<|user|>", "assistant": "<|assistant|>", "system": "<|system|>"}


@dataclass(frozen=True)
class ChatIds:
    """The ids a conversation is rendered with."""

    user: int
    assistant: int
    system: int
    end_of_turn: int
    """The tokenizer's eos (<|endoftext|>): it ends every assistant turn."""

    def marker(self, role: str) -> int:
        return getattr(self, role)

    @property
    def stops(self) -> frozenset[int]:
        """Ids that end a generated turn: the end of turn, or a model starting another turn."""
        return frozenset((self.end_of_turn, self.user, self.assistant, self.system))


class ChatFormatError(ValueError):
    """A tokenizer without single-id chat markers, or a malformed conversation."""


def chat_ids(sp) -> ChatIds:
    """The chat ids of a SentencePiece processor; ChatFormatError if a marker is not one
    id of its own (a tokenizer not made by `orchestrator tokenizer train`)."""
    ids = {}
    for role, marker in MARKERS.items():
        i = sp.piece_to_id(marker)
        if i == sp.unk_id() or sp.id_to_piece(i) != marker or sp.encode(marker) != [i]:
            raise ChatFormatError(
                f"the tokenizer has no single-id {marker} piece; chat data needs a tokenizer made "
                "by `orchestrator tokenizer train`, which reserves <|user|>, <|assistant|> and "
                "<|system|>"
            )
        ids[role] = i
    if sp.eos_id() < 0:
        raise ChatFormatError("the tokenizer has no end-of-text (eos) piece to end a turn with")
    return ChatIds(end_of_turn=sp.eos_id(), **ids)


def check_messages(messages: list[tuple[str, str]], *, complete: bool = True) -> str | None:
    """What is wrong with a conversation, or None. The shape: an optional system message
    first, then user and assistant taking turns, starting with the user; `complete`
    conversations (training examples) end with the assistant, prompts with the user."""
    if not messages:
        return "no messages"
    for i, (role, content) in enumerate(messages):
        if role not in ROLES:
            return f"message {i + 1}: unknown role {role!r} (expected one of {', '.join(ROLES)})"
        if not content.strip():
            return f"message {i + 1} ({role}): empty content"
        for marker in MARKERS.values():
            if marker in content:
                return (
                    f"message {i + 1} ({role}): the content holds the chat marker {marker}, which would be "
                    "read as a turn boundary; remove or reword it"
                )
    turns = messages[1:] if messages[0][0] == "system" else messages
    if not turns:
        return "only a system message: add a user message" + (" and the assistant's answer" if complete else "")
    for i, (role, _) in enumerate(turns):
        want = "user" if i % 2 == 0 else "assistant"
        if role != want:
            where = i + 1 + (len(messages) - len(turns))
            return (
                f"message {where}: expected a {want} message, got {role!r} (an optional system message "
                "first, then user and assistant in turn)"
            )
    last = turns[-1][0]
    if complete and last != "assistant":
        return "the last message is the user's: a training example must end with the assistant's answer"
    if not complete and last != "user":
        return "the last message is the assistant's: a prompt must end with the user's message"
    return None


def render(messages: list[tuple[str, str]], encode, ids: ChatIds) -> tuple[list[int], list[int]]:
    """A complete conversation (checked) -> (ids, mask): mask 1 marks the loss targets,
    each assistant turn's tokens and the eos that ends it. No leading eos (see the module)."""
    tokens: list[int] = []
    mask: list[int] = []
    encoded = encode([content for _, content in messages])
    for (role, _), content_ids in zip(messages, encoded):
        tokens.append(ids.marker(role))
        mask.append(0)
        tokens.extend(content_ids)
        if role == "assistant":
            tokens.append(ids.end_of_turn)
            mask.extend([1] * (len(content_ids) + 1))
        else:
            mask.extend([0] * len(content_ids))
    return tokens, mask


def prompt_ids(messages: list[tuple[str, str]], encode, ids: ChatIds) -> list[int]:
    """A prompt (a conversation ending with the user's turn) as the model sees it before
    answering: the leading eos, the rendered turns, and the assistant's marker."""
    rendered: list[int] = [ids.end_of_turn]
    encoded = encode([content for _, content in messages])
    for (role, _), content_ids in zip(messages, encoded):
        rendered.append(ids.marker(role))
        rendered.extend(content_ids)
        if role == "assistant":
            rendered.append(ids.end_of_turn)
    rendered.append(ids.assistant)
    return rendered


def as_messages(system: str | None, prompt: str) -> list[tuple[str, str]]:
    """A one-turn prompt (with an optional system text) as messages."""
    return ([("system", system)] if system else []) + [("user", prompt)]


# The same format as a Jinja chat template, for exports (Hugging Face's tokenizer_config.json,
# GGUF's tokenizer.chat_template): apply_chat_template(..., add_generation_prompt=True) gives
# prompt_ids()'s ids, with the markers as special tokens and each content encoded alone.
JINJA_TEMPLATE = (
    "{{ eos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}<|system|>{{ message['content'] }}"
    "{% elif message['role'] == 'user' %}<|user|>{{ message['content'] }}"
    "{% elif message['role'] == 'assistant' %}<|assistant|>{{ message['content'] }}{{ eos_token }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
