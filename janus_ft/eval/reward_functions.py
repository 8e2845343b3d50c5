"""The built-in rewards (`grpo.rewards: [{fn: exact_match}]`, `janus-ft eval --reward colour`), written
as TRL's reward functions are: called by keyword, one value per completion, None where the
reward does not apply (the text rewards for an image or a record without `solution`, the colour
reward for a text answer), so one recipe can mix tasks."""

from __future__ import annotations

import math
import re


def text_of(completion) -> str:
    """A text completion as a string: itself, or the content of TRL's conversational completion.

    >>> text_of("red"), text_of([{"role": "assistant", "content": "red"}])
    ('red', 'red')
    """
    return completion[0]["content"] if isinstance(completion, list) else str(completion)


def _is_text(completion) -> bool:
    return isinstance(completion, (str, list))


def _normalise(text) -> str:
    return " ".join(text_of(text).strip().lower().rstrip(".").split())


def _against_solution(completions, solution, compare) -> list[float | None]:
    return [None if s is None or not _is_text(c) else float(compare(c, s))
            for c, s in zip(completions, solution or [None] * len(completions))]


def exact_match(completions, solution=None, **kwargs) -> list[float | None]:
    """1.0 where the answer equals the record's `solution` (case, surrounding space and a final dot
    ignored), else 0.0."""
    return _against_solution(completions, solution, lambda c, s: _normalise(c) == _normalise(s))


def accuracy(completions, solution=None, **kwargs) -> list[float | None]:
    """Like `exact_match`, but numbers compare as numbers ("3.0" equals "3") and the solution
    counts when it is the answer's last word ("the answer is 3")."""
    def right(c, s):
        words = _normalise(c).split()
        return _same(_normalise(c), _normalise(s)) or _same(words[-1] if words else "", _normalise(s))

    return _against_solution(completions, solution, right)


def similarity(completions, solution=None, **kwargs) -> list[float | None]:
    """1 - character error rate against `solution`, floored at 0 (a dense reward: partly right
    answers score above wrong ones, which helps a policy that rarely samples the exact answer)."""
    from .metrics import cer

    return _against_solution(completions, solution, lambda c, s: max(0.0, 1.0 - cer(_normalise(c), _normalise(s))))


def _same(a: str, b: str) -> bool:
    try:
        return math.isclose(float(a), float(b))
    except ValueError:
        return a == b


def format_match(completions, pattern: str = r"\S.*", **kwargs) -> list[float | None]:
    """1.0 where the whole answer (surrounding space ignored) matches the regular expression
    `pattern` (the reward's `args`), else 0.0."""
    return [float(re.fullmatch(pattern, text_of(c).strip(), re.DOTALL) is not None) if _is_text(c) else None
            for c in completions]


# Named colours a prompt or a record's `colour` field may use (RGB).
COLOURS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (30, 70, 220), "yellow": (240, 210, 30),
           "orange": (245, 130, 20), "purple": (130, 40, 170), "white": (255, 255, 255), "black": (0, 0, 0),
           "gray": (128, 128, 128), "grey": (128, 128, 128)}


def target_colour(name_or_prompt: str) -> tuple[int, int, int] | None:
    """An RGB colour from `#rrggbb`, a colour name, or the first colour word in a prompt.

    >>> target_colour("#ff8000"), target_colour("a red fox"), target_colour("a fox")
    ((255, 128, 0), (220, 30, 30), None)
    """
    text = str(name_or_prompt).strip().lower()
    if re.fullmatch(r"#[0-9a-f]{6}", text):
        return tuple(int(text[i:i + 2], 16) for i in (1, 3, 5))
    for word in re.findall(r"[a-z]+", text):
        if word in COLOURS:
            return COLOURS[word]
    return None


def colour_match(prompts, completions, colour=None, **kwargs) -> list[float]:
    """Closeness of an image's mean colour to the colour the record names (`colour` field: a name
    or `#rrggbb`; else the first colour word of the caption): 1 - distance / largest distance, in
    [0, 1]."""
    import numpy as np

    out = []
    for prompt, image, named in zip(prompts, completions, colour or [None] * len(completions)):
        if _is_text(image):
            out.append(None)
            continue
        target = target_colour(named if named else prompt)
        if target is None:
            raise ValueError(f"no target colour: the record has no 'colour' field and the caption {prompt!r} "
                             f"names none of {', '.join(COLOURS)}")
        mean = np.asarray(image.convert("RGB"), dtype=np.float64).reshape(-1, 3).mean(0)
        out.append(float(1 - np.linalg.norm(mean - np.asarray(target)) / (255 * math.sqrt(3))))
    return out


BUILTINS = {"exact_match": exact_match, "accuracy": accuracy, "similarity": similarity, "format": format_match,
            "colour": colour_match, "color": colour_match}
