"""Prompts for reinforcement learning (`janus-ft grpo`): records with a question and no target.

    {"query": "a red fox in the snow", "task": "generation"}
    {"query": "<image>How many squares?", "images": ["s.png"], "solution": "3"}
    {"messages": [{"role": "user", "content": "Say hi"}], "format": "^hi$"}

The question is read as a training record's last turn is (`query` / `history` / `system`, or
`messages` ending with a user message, `images` with the usual `<image>` placement), so it is
rendered and tokenized exactly as training and inference render it. A generation prompt says
`"task": "generation"` and carries no image. Every other field (`solution`, a target colour, ...)
is kept as it is and reaches the reward functions. A `response`, if present, is such a field too
(SFT data reused as prompts keeps its reference answer for the rewards to compare with).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BadRecord
from ..janus import IMAGE_TAG
from .records import Record, parse_record

# Fields that make up the question; everything else in a prompt record goes to the rewards.
QUESTION_FIELDS = ("query", "history", "system", "messages", "images", "task")


@dataclass
class Prompt:
    record: Record                                # the question as a record whose last answer is empty
    fields: dict = field(default_factory=dict)    # the record's other fields, for the rewards

    @property
    def task(self) -> str:
        return self.record.task

    @property
    def where(self) -> str:
        """`file:line` (or `source:row N`): how errors name the prompt."""
        return f"{self.record.source}:{self.record.line}"


def parse_prompt(obj, path: Path, line: int | str) -> Prompt:
    """Validate one decoded JSON value as a prompt; `BadRecord` naming file, line and field otherwise."""
    if not isinstance(obj, dict):
        raise BadRecord(path, line, None, f"expected a JSON object, got {type(obj).__name__}")
    extra = {k: v for k, v in obj.items() if k not in QUESTION_FIELDS}
    question = {k: v for k, v in obj.items() if k in QUESTION_FIELDS}
    if question.get("task") == "generation":
        return Prompt(_generation(question, path, line), extra)
    if "messages" in question:
        messages = question["messages"]
        if not (isinstance(messages, list) and messages and isinstance(messages[-1], dict)
                and messages[-1].get("role") == "user"):
            raise BadRecord(path, line, "messages", "a prompt's messages end with the user message to answer")
        # A placeholder answer lets the record parser check the conversation; it is removed below.
        question["messages"] = [*messages, {"role": "assistant", "content": "."}]
    elif "query" in question:
        question["response"] = "."
    else:
        raise BadRecord(path, line, None, "expected 'query' (or 'messages' ending with a user message)")
    record = parse_record(question, path, line)
    record.turns[-1] = (record.turns[-1][0], "")
    return Prompt(record, extra)


def _generation(question: dict, path: Path, line: int | str) -> Record:
    caption = question.get("query")
    if not isinstance(caption, str) or not caption.strip():
        raise BadRecord(path, line, "query", "a generation prompt needs a caption (a non-empty string)")
    if IMAGE_TAG in caption or question.get("images"):
        raise BadRecord(path, line, "images", "a generation prompt has no image: the model draws it")
    unknown = set(question) - {"query", "task"}
    if unknown:
        raise BadRecord(path, line, sorted(unknown)[0], "a generation prompt is a caption alone (no history, "
                        "system or messages)")
    return Record(task="generation", turns=[(caption, IMAGE_TAG)], system="", source=str(path), line=line)


def load_prompts(sources, seed: int) -> list[Prompt]:
    """The prompts of a recipe's sources (`DataSource`s), the first bad record raising."""
    from .sources import read_source

    return [p for src in sources for p in read_source(src, seed, parse=parse_prompt, every_column=True)]
