"""Conversation: a `Record` -> the exact Janus prompt text, split into supervised / unsupervised pieces.

The rendering follows Janus's conversation format (docs/janus.md) and lays image parts out the way
the checkpoint's chat template does, so a training prompt is the inference prompt token for token:

    [{system}\\n\\n]{R_u}: {user}\\n\\n{R_a}: {assistant}<EOS>{R_u}: ...\\n\\n{R_a}:

Only the assistant text after `{R_a}:` (with its leading space) and the EOS closing each assistant
turn are supervised.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..janus import (
    DEFAULT_SYSTEM_PROMPT,
    EOS,
    FORMATS,
    IMAGE_PLACEHOLDER,
    IMAGE_TAG,
    Format,
)
from .records import Record


@dataclass(frozen=True)
class Piece:
    """A run of the rendered conversation.

    `kind`: "prompt"; "answer" (assistant text, closed by the tokenizer's EOS at tokenization);
    "gen_image" (the generation target: `<begin_of_image>` + image tokens + `<end_of_image>`).
    """

    text: str
    supervised: bool = False
    kind: str = "prompt"


def detect_format(processor_or_tokenizer) -> str:
    """`janus-pro` if the checkpoint's chat template (or vocabulary) uses `<|User|>`, else `janus`."""
    tok = getattr(processor_or_tokenizer, "tokenizer", processor_or_tokenizer)
    template = getattr(processor_or_tokenizer, "chat_template", None) or getattr(tok, "chat_template", None) or ""
    if isinstance(template, dict):
        template = " ".join(template.values())
    if FORMATS["janus-pro"].user in template:
        return "janus-pro"
    if template:
        return "janus"
    return "janus-pro" if FORMATS["janus-pro"].user in tok.get_vocab() else "janus"


def resolve_format(processor_or_tokenizer, fmt: str | None = "auto") -> str:
    """The conversation format to render in: `fmt` as given, or detected (`detect_format`) for
    "auto" / None -- the one place a recipe's `model.format` or a `--format` flag is resolved."""
    return detect_format(processor_or_tokenizer) if fmt in (None, "auto") else fmt


def content_parts(text: str) -> list[dict]:
    """User text with `<image>` tags -> chat-template content parts (what inference passes to the
    processor), so training and inference lay a turn out from the same parts.

    Text between tags keeps its own spaces (`"Compare <image> and"` -> text `"Compare "`, image,
    text `" and"`), as a user writing content parts would give them. One newline directly next to a
    tag is taken as part of the tag, because the template itself sets an image off with a newline
    on each side: text already written in that layout (`"<image>\\nQ"`, `"A\\n<image>\\nB"`) renders
    as written instead of with doubled newlines. Whitespace-only text carries nothing and is dropped.
    """
    chunks = text.split(IMAGE_TAG)
    parts: list[dict] = []
    for i, chunk in enumerate(chunks):
        if i:
            parts.append({"type": "image"})
            chunk = chunk.removeprefix("\n")
        if i < len(chunks) - 1:
            chunk = chunk.removesuffix("\n")
        if chunk.strip():
            parts.append({"type": "text", "text": chunk})
    return parts


def user_content(text: str) -> str:
    """A user turn's content as the checkpoint's chat template renders `content_parts(text)`: an
    image is `<image_placeholder>` with a newline before it unless it is the first part and after
    it unless it is the last; the first text part is left-stripped and the last right-stripped,
    every other space is kept."""
    parts = content_parts(text)
    last = len(parts) - 1
    out = []
    for i, part in enumerate(parts):
        if part["type"] == "image":
            out.append(("\n" if i else "") + IMAGE_PLACEHOLDER + ("\n" if i < last else ""))
            continue
        chunk = part["text"].lstrip() if i == 0 else part["text"]
        out.append(chunk.rstrip() if i == last else chunk)
    return "".join(out)


def render(record: Record, fmt: str | Format, system_prompt: str | None = None,
           last_turn_only: bool = False) -> list[Piece]:
    """Render a record into pieces. `system_prompt` replaces the default for records without one."""
    fmt = FORMATS[fmt] if isinstance(fmt, str) else fmt
    if record.task == "generation":
        prompt = f"{fmt.user}: {record.caption.strip()}\n\n{fmt.assistant}:"
        return [Piece(prompt), Piece("", True, kind="gen_image")]
    if record.task == "edit":   # a generation prompt whose user turn lays its source images out as chat does
        prompt = f"{fmt.user}: {user_content(record.caption)}\n\n{fmt.assistant}:"
        return [Piece(prompt), Piece("", True, kind="gen_image")]
    system = record.system if record.system is not None else (
        DEFAULT_SYSTEM_PROMPT if system_prompt is None else system_prompt)
    pieces: list[Piece] = []
    prompt = f"{system}\n\n" if system else ""
    for i, (user, assistant) in enumerate(record.turns):
        prompt += f"{fmt.user}: {user_content(user)}\n\n{fmt.assistant}:"
        supervised = not last_turn_only or i == len(record.turns) - 1
        pieces += [Piece(prompt), Piece(f" {assistant.strip()}", supervised, kind="answer")]
        prompt = ""
    return pieces


def render_text(pieces: list[Piece]) -> str:
    """The whole rendered string (generation target shown as `<begin_of_image>...<end_of_image>`)."""
    shown = {"gen_image": lambda p: "<begin_of_image>…<end_of_image>", "answer": lambda p: p.text + EOS}
    return "".join(shown.get(p.kind, lambda p: p.text)(p) for p in pieces)
