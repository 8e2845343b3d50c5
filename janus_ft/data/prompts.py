"""Prompts for reinforcement learning (`janus-ft grpo`) and reward evaluation: records with a
question and no target, in janus_ft's record shapes or TRL's GRPO dataset shapes.

    {"query": "a red fox in the snow", "task": "generation"}
    {"query": "<image>How many squares?", "images": ["s.png"], "solution": "3"}
    {"messages": [{"role": "user", "content": "Say hi"}], "format": "^hi$"}
    {"prompt": "What is 2 + 2?", "solution": "4"}                                   # TRL standard
    {"prompt": [{"role": "user", "content": "What is 2 + 2?"}], "solution": "4"}    # TRL conversational
    {"prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many?"}]}],
     "image": "s.png", "solution": "3"}                                             # TRL multimodal

The question is read as a training record's last turn is (`query` / `history` / `system`, or
`messages` ending with a user message, `images` with the usual `<image>` placement), so it is
rendered and tokenized exactly as training and inference render it. A generation prompt says
`"task": "generation"` and carries no image. Every other field (`solution`, a target colour, ...)
is kept as it is and reaches the reward functions. A `response`, if present, is such a field too
(SFT data reused as prompts keeps its reference answer for the rewards to compare with).

TRL's shapes (https://huggingface.co/docs/trl/dataset_formats, prompt-only): `prompt` is a string
(standard) or a list of messages ending with a user message (conversational), whose content is a
string or TRL's list of parts (`{"type": "text", "text": ...}`, `{"type": "image"}`, an image part
marking where an image goes, as `<image>` does); images come from `image` (one) or `images`. As
TRL does, every column but `prompt` reaches the rewards as the record holds it (`image` and `task`
included); `"task": "generation"` also
makes a string `prompt` a caption to draw. The rewards get the prompt as the record gives it, and
conversational completions (`[{"role": "assistant", "content": ...}]`) for a conversational prompt.
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
    prompt: object = None                         # what rewards get as `prompts` (None: the last query)

    def __post_init__(self):
        if self.prompt is None:
            self.prompt = self.record.caption if self.task == "generation" else self.record.turns[-1][0]

    @property
    def conversational(self) -> bool:
        """A TRL conversational prompt: its completions reach the rewards as messages."""
        return isinstance(self.prompt, list)

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
    if "prompt" in obj and not {"query", "messages"} & set(obj):
        return trl_prompt(obj, path, line)
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


def trl_prompt(obj: dict, path: Path, line: int | str) -> Prompt:
    """A prompt in TRL's shape: `prompt` (a string or messages), `image` / `images`, columns."""
    prompt, images = obj["prompt"], _trl_images(obj, path, line)
    columns = {k: v for k, v in obj.items() if k != "prompt"}   # as TRL: every column but the prompt
    if obj.get("task") == "generation":
        if not isinstance(prompt, str):
            raise BadRecord(path, line, "prompt", "a generation prompt is a caption: a string")
        caption = {"query": prompt} | ({"images": images} if images else {})
        return Prompt(_generation(caption, path, line), columns, prompt)
    if isinstance(prompt, str):
        question = {"query": prompt, "response": "."}
    elif isinstance(prompt, list) and prompt and all(isinstance(m, dict) for m in prompt):
        if prompt[-1].get("role") != "user":
            raise BadRecord(path, line, "prompt", "a conversational prompt ends with the user message to answer")
        messages = [{**m, "content": _content(m.get("content"), path, line, i)} for i, m in enumerate(prompt)]
        question = {"messages": [*messages, {"role": "assistant", "content": "."}]}
    else:
        raise BadRecord(path, line, "prompt", "expected a string or a list of messages ({role, content})")
    record = parse_record(question | {"images": images}, path, line)
    record.turns[-1] = (record.turns[-1][0], "")
    return Prompt(record, columns, prompt)


def _trl_images(obj: dict, path: Path, line: int | str) -> list:
    if "image" in obj and "images" in obj:
        raise BadRecord(path, line, "image", "give the prompt's images as 'image' or 'images', not both")
    images = obj.get("image", obj.get("images"))
    return [] if images is None else images if isinstance(images, list) else [images]


def _content(content, path: Path, line: int | str, i: int) -> str:
    """A message's content as janus_ft text: a string as it is; TRL's parts joined, an image part
    becoming `<image>` (which renders as the chat template renders an image part)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise BadRecord(path, line, f"prompt[{i}].content", "expected a string or a list of parts")
    text = ""
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            text += part["text"]
        elif kind == "image":
            text += IMAGE_TAG
        else:
            raise BadRecord(path, line, f"prompt[{i}].content[{j}]", "expected {type: text, text: ...} or {type: image}")
    return text


def load_prompts(sources, seed: int) -> list[Prompt]:
    """The prompts of a recipe's sources (`DataSource`s), the first bad record raising."""
    from .sources import read_source

    prompts = [p for src in sources for p in read_source(src, seed, parse=parse_prompt, every_column=True)]
    # As a `datasets.Dataset` holds them for TRL: every prompt has every column (None where it lacks
    # one), so a reward sees the same keywords whichever prompts a batch draws.
    keys = list(dict.fromkeys(k for p in prompts for k in p.fields))
    for p in prompts:
        p.fields = {k: p.fields.get(k) for k in keys}
    return prompts
