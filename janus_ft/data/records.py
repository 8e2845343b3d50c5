"""Records: JSONL lines (or rows of other sources, see `sources`) -> validated `Record`s.

Accepted shapes (README, data_templates/examples): `query`/`response`/`images`/`history`/`system`, or
`messages` (+ `images`); an edit may name its images `source_images` / `target_image` instead. The
task is inferred (no images -> text; images in user turns -> understanding; a response that is
exactly `<image>` -> generation, or edit when the query holds images too: the query's images are
the sources, the last image the target) and may be stated with `task`.
Every problem is a `BadRecord` naming file, line and field, so `janus-ft data check` can list them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BadRecord
from ..janus import IMAGE_TAG, IMAGE_TOKENS, TASKS

BOM = "\ufeff"
# A lone surrogate: JSON's "\ud800" escapes decode to one, and tokenizers (and UTF-8) reject it.
_SURROGATE = re.compile("[\ud800-\udfff]")
_ROLES = ("system", "user", "assistant")


@dataclass
class Record:
    """One training example, independent of the conversation format it will be rendered in."""

    task: str
    turns: list[tuple[str, str]]          # (user, assistant); `<image>` tags mark image positions
    images: list[Path] = field(default_factory=list)
    system: str | None = None             # None: the default system prompt; "": none
    source: str = ""
    line: int | str = 0                   # a JSONL line (from 1), or "row N" of a `datasets` source (dataset[N])

    @property
    def caption(self) -> str:
        """The prompt of a generation record (an edit record's instruction, `<image>` tags included)."""
        return self.turns[0][0]

    @property
    def sources(self) -> list[Path]:
        """An edit record's source images (every image but the last, the target)."""
        return self.images[:-1] if self.task == "edit" else []


def read_records(path: str | Path) -> Iterator[Record]:
    """Yield every record of a JSONL file; raise `BadRecord` at the first bad one."""
    for number, text in read_lines(path):
        yield parse_line(text, Path(path), number)


def read_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of every non-blank line; a file that cannot be read is a `BadRecord`.

    Lines are split as Python's text files split them, never with `str.splitlines()`: that also
    splits at U+2028, U+0085 and friends, which `json.dumps(..., ensure_ascii=False)` leaves raw
    inside strings. Bytes that are not UTF-8 are kept (as surrogate escapes) so `parse_line` can
    name the line they are on instead of the whole file failing.
    """
    path = Path(path)
    try:
        is_file = path.is_file()
    except OSError:  # a name too long for the file system
        is_file = False
    if not is_file:
        raise BadRecord(path, None, None, "file not found")
    found = False
    try:
        with path.open(encoding="utf-8", errors="surrogateescape") as f:
            for number, text in enumerate(f, start=1):
                # Windows editors start a file with a BOM; `cat`-ed files carry one mid-file too.
                text = text.removeprefix(BOM)
                if text.strip():
                    found = True
                    yield number, text
    except OSError as err:
        raise BadRecord(path, None, None, f"cannot read: {err.strerror or err}") from None
    if not found:   # nothing to train on is a mistake (a wrong path, an unfinished export), not a no-op
        raise BadRecord(path, None, None, "no records: the file is empty or holds only blank lines")


def parse_line(text: str, path: Path, line: int) -> Record:
    return parse_record(decode_line(text, path, line), path, line)


def decode_line(text: str, path: Path, line: int):
    """The JSON value on one line, or a `BadRecord` naming the line (and column) that is not JSON."""
    _require_utf8(text, path, line)
    try:
        # Without its line break, so a line cut short is reported where it ends (`column 21`), not
        # at `column 1` of the "next line" that json sees after the newline.
        obj = json.loads(text.rstrip("\r\n"))
    except json.JSONDecodeError as err:
        raise BadRecord(path, line, None, f"malformed JSON ({err.msg} at column {err.colno})") from None
    except RecursionError:
        raise BadRecord(path, line, None, "malformed JSON (nested too deeply)") from None
    except ValueError as err:  # e.g. an integer over Python's 4300-digit conversion limit
        raise BadRecord(path, line, None, f"malformed JSON ({brief(str(err))})") from None
    return obj


def _require_utf8(text: str, path: Path, line: int) -> None:
    """Undecodable bytes arrive from `read_lines` as surrogate escapes (U+DC80..U+DCFF)."""
    found = _SURROGATE.search(text)
    if found:
        char = found.group()
        byte = f" (byte 0x{ord(char) - 0xDC00:02x})" if "\udc80" <= char <= "\udcff" else ""
        raise BadRecord(path, line, None,
                        f"not valid UTF-8{byte} at column {found.start() + 1}; save the file as UTF-8")


def parse_record(obj, path: Path, line: int | str) -> Record:
    """Validate one decoded JSON value and turn it into a `Record`."""
    def bad(fld, problem):
        return BadRecord(path, line, fld, problem)

    if not isinstance(obj, dict):
        raise bad(None, f"expected a JSON object, got {type(obj).__name__}")
    if "source_images" in obj or "target_image" in obj:
        obj = _edit_fields(obj, bad)
    if "messages" in obj:
        turns, system = _turns_from_messages(obj["messages"], bad)
    elif "query" in obj or "response" in obj:
        turns, system = _turns_from_query(obj, bad)
    else:
        raise bad(None, "expected 'query' and 'response', or 'messages'")
    if "system" in obj and "messages" not in obj:
        system = _string(obj, "system", bad)
    images = image_paths(obj, path, bad)
    turns = _place_images(turns, len(images), bad)
    task = _infer_task(obj, turns, images, bad)
    if task in ("generation", "edit"):
        system = ""  # generation prompts never carry a system prompt (docs/janus.md, conversation format)
    return Record(task=task, turns=turns, images=images, system=system, source=str(path), line=line)


def _string(obj: dict, key: str, bad, allow_empty: bool = True) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise bad(key, f"expected a string, got {_kind(value)}")
    _check_text(value, key, bad)
    if not allow_empty and not value.strip():
        raise bad(key, "is empty")
    return value


def _check_text(text: str, fld: str, bad, reserved: bool = True) -> None:
    if _SURROGATE.search(text):
        raise bad(fld, "contains a lone UTF-16 surrogate (an unpaired \\ud800-\\udfff escape), not valid text")
    for token in IMAGE_TOKENS if reserved else ():
        if token in text:
            raise bad(fld, f"contains {token}, a token Janus reserves for image data; mark an image's "
                      f"position with {IMAGE_TAG}")


def _kind(value) -> str:
    return "nothing" if value is None else type(value).__name__


def brief(text: str, limit: int = 80) -> str:
    """`text`, cut to `limit` characters: a 10 MB field must not become a 10 MB error message."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _turns_from_query(obj: dict, bad) -> tuple[list[tuple[str, str]], str | None]:
    query = _string(obj, "query", bad)
    response = _string(obj, "response", bad, allow_empty=False)
    history = obj.get("history") or []
    if not isinstance(history, list):
        raise bad("history", f"expected a list of [query, response] pairs, got {_kind(history)}")
    turns = []
    for i, pair in enumerate(history):
        if (not isinstance(pair, (list, tuple)) or len(pair) != 2
                or not all(isinstance(x, str) for x in pair)):
            raise bad(f"history[{i}]", "expected a [query, response] pair of strings")
        for text in pair:
            _check_text(text, f"history[{i}]", bad)
        if not pair[1].strip():
            raise bad(f"history[{i}]", "response is empty")
        turns.append((pair[0], pair[1]))
    turns.append((query, response))
    return turns, None


def _turns_from_messages(messages, bad) -> tuple[list[tuple[str, str]], str | None]:
    if not isinstance(messages, list) or not messages:
        raise bad("messages", f"expected a non-empty list of messages, got {_kind(messages)}")
    system, turns, pending = None, [], None
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise bad(where, f"expected an object with 'role' and 'content', got {_kind(msg)}")
        role, content = msg.get("role"), msg.get("content")
        if role not in _ROLES:
            raise bad(f"{where}.role", f"unknown role {brief(repr(role))} (expected one of {', '.join(_ROLES)})")
        if not isinstance(content, str):
            raise bad(f"{where}.content", f"expected a string, got {_kind(content)}")
        _check_text(content, f"{where}.content", bad)
        if role == "system":
            if i != 0:
                raise bad(f"{where}.role", "a system message may only come first")
            system = content
        elif role == "user":
            if pending is not None:
                raise bad(f"{where}.role", "two user messages in a row (expected user/assistant turns)")
            pending = content
        else:
            if pending is None:
                raise bad(f"{where}.role", "assistant message without a user message before it")
            if not content.strip():
                raise bad(f"{where}.content", "assistant message is empty")
            turns.append((pending, content))
            pending = None
    if pending is not None or not turns:
        raise bad("messages", "must end with an assistant message")
    return turns, system


def _edit_fields(obj: dict, bad) -> dict:
    """`source_images` (a path or a list) and `target_image` (a path) -> `images` and a response of
    `<image>`; sources without `<image>` tags in the query go at its start. This is how a dataset
    with a source column, an instruction column and a target column maps onto an edit record."""
    for key in ("source_images", "target_image"):
        if key not in obj:
            raise bad(key, "missing: an edit record names both source_images and target_image")
    if "images" in obj:
        raise bad("images", "source_images / target_image and images both give the images: pick one")
    sources, target = obj["source_images"], obj["target_image"]
    sources = [sources] if isinstance(sources, str) else sources
    target = target[0] if isinstance(target, list) and len(target) == 1 else target
    if not isinstance(sources, list) or not sources or not all(isinstance(x, str) and x for x in sources):
        raise bad("source_images", "expected an image path or a non-empty list of image paths")
    if not isinstance(target, str) or not target:
        raise bad("target_image", "expected one image path")
    out = {k: v for k, v in obj.items() if k not in ("source_images", "target_image")}
    out.setdefault("response", IMAGE_TAG)
    query = out.get("query")
    if isinstance(query, str) and IMAGE_TAG not in query:
        out["query"] = IMAGE_TAG * len(sources) + query
    return out | {"images": [*sources, target]}


def image_paths(obj: dict, path: Path, bad) -> list[Path]:
    """`obj["images"]` (a path or a list of paths) as paths resolved against the file's directory."""
    images = obj.get("images", [])
    if images is None:
        images = []
    if isinstance(images, str):
        images = [images]
    if not isinstance(images, list) or not all(isinstance(x, str) and x for x in images):
        raise bad("images", "expected a list of image paths (strings)")
    for i, x in enumerate(images):
        _check_text(x, f"images[{i}]", bad, reserved=False)
    # Paths are relative to the JSONL file's directory, so a dataset folder can move as a whole.
    return [Path(x) if Path(x).is_absolute() else path.parent / x for x in images]


def _place_images(turns, n_images: int, bad) -> list[tuple[str, str]]:
    in_users = sum(u.count(IMAGE_TAG) for u, _ in turns)
    in_responses = sum(a.count(IMAGE_TAG) for _, a in turns)
    if n_images and not in_users and not in_responses:
        # Images without tags go at the start of the first query (ms-swift's convention too).
        first_user, first_answer = turns[0]
        return [(IMAGE_TAG * n_images + first_user, first_answer)] + list(turns[1:])
    if in_users + in_responses != n_images:
        raise bad("images", f"{n_images} image(s) given but {in_users + in_responses} <image> tag(s) in the text")
    return list(turns)


def _infer_task(obj: dict, turns, images, bad) -> str:
    responses_are_images = any(IMAGE_TAG in a for _, a in turns)
    if responses_are_images and any(IMAGE_TAG in u for u, _ in turns):
        if len(turns) != 1 or turns[0][1].strip() != IMAGE_TAG:
            raise bad("response", "an edit record has one turn: source images and an instruction in the query, "
                      "a response that is exactly <image> (the target, the last image)")
        if not turns[0][0].replace(IMAGE_TAG, "").strip():
            raise bad("query", "an edit record needs an instruction besides its source images")
        inferred = "edit"
    elif responses_are_images:
        if len(turns) != 1 or turns[0][1].strip() != IMAGE_TAG or len(images) != 1:
            raise bad("response", "a generation record has one turn whose response is exactly <image> "
                      "and exactly one image")
        if not turns[0][0].strip():
            raise bad("query", "a generation record needs a caption")
        inferred = "generation"
    else:
        inferred = "understanding" if images else "text"
    stated = obj.get("task", inferred)
    if stated not in TASKS:
        raise bad("task", f"unknown task {brief(repr(stated))} (expected one of {', '.join(TASKS)})")
    if stated != inferred:
        raise bad("task", f"says {stated!r} but the record's images make it {inferred!r}")
    return inferred
