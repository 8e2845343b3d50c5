"""Rewards for `janus-ft grpo`: plain Python functions, named in the recipe.

    grpo:
      rewards:
        - {fn: "my_rewards.py:brand_colour", weight: 1.0}      # a file (relative to the recipe or cwd)
        - {fn: "my_package.scoring:judge", weight: 0.5}        # an importable module
        - {fn: exact_match}                                     # a built-in (below)
        - {fn: format, args: {pattern: "^<answer>.*</answer>$"}}

A reward is called as TRL calls its reward functions, `fn(prompts, completions, **fields)`, and
returns one float per completion: `prompts` are the prompt texts (captions for generation),
`completions` strings for text / understanding and `PIL.Image.Image`s for generation, and every
extra field of the prompt records (`solution`, ...) arrives as a list aligned with them (`None` where
a record lacks it), plus `codes` (the VQ codes) for images. A reward that raises or returns
something other than one finite number per completion stops training with exit code 2, naming the
function and the prompt record (`file:line`) it failed on.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import re
import sys
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from ..errors import RecipeError, UserError


class RewardError(UserError):
    """A reward function raised or returned something unusable (exit code 2)."""


@dataclass
class Reward:
    name: str            # as the recipe wrote it (`file.py:fn`, `module:fn`, or a built-in name)
    fn: object
    weight: float = 1.0
    args: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        """How logs name it (`rewards/<label>/mean`): the function's name as the recipe gives it."""
        return self.name.rpartition(":")[2]


# ---- built-ins ---------------------------------------------------------------------------------

def _normalise(text) -> str:
    return " ".join(str(text).strip().lower().rstrip(".").split())


def exact_match(prompts, completions, solution=None, **fields) -> list[float]:
    """1.0 where the answer equals the record's `solution` (case, surrounding space and a final dot
    ignored), else 0.0."""
    solution = solution or [None] * len(completions)
    return [float(s is not None and _normalise(c) == _normalise(s)) for c, s in zip(completions, solution)]


def accuracy(prompts, completions, solution=None, **fields) -> list[float]:
    """Like `exact_match`, but numbers compare as numbers ("3.0" equals "3") and the solution
    counts when it is the answer's last word ("the answer is 3")."""
    out = []
    for c, s in zip(completions, solution or [None] * len(completions)):
        if s is None:
            out.append(0.0)
            continue
        words = _normalise(c).split()
        last = words[-1] if words else ""
        out.append(float(_same(_normalise(c), _normalise(s)) or _same(last, _normalise(s))))
    return out


def similarity(prompts, completions, solution=None, **fields) -> list[float]:
    """1 - character error rate against `solution`, floored at 0 (a dense reward: partly right
    answers score above wrong ones, which helps a policy that rarely samples the exact answer)."""
    from ..eval.metrics import cer

    return [0.0 if s is None else max(0.0, 1.0 - cer(_normalise(c), _normalise(s)))
            for c, s in zip(completions, solution or [None] * len(completions))]


def _same(a: str, b: str) -> bool:
    try:
        return math.isclose(float(a), float(b))
    except ValueError:
        return a == b


def format_match(prompts, completions, pattern: str = r"\S.*", **fields) -> list[float]:
    """1.0 where the whole answer (surrounding space ignored) matches the regular expression
    `pattern` (the reward's `args`), else 0.0."""
    return [float(re.fullmatch(pattern, c.strip(), re.DOTALL) is not None) for c in completions]


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


def colour_match(prompts, completions, colour=None, **fields) -> list[float]:
    """Closeness of an image's mean colour to the colour the record names (`colour` field: a name
    or `#rrggbb`; else the first colour word of the caption): 1 - distance / largest distance, in
    [0, 1]."""
    import numpy as np

    out = []
    for prompt, image, named in zip(prompts, completions, colour or [None] * len(completions)):
        target = target_colour(named if named else prompt)
        if target is None:
            raise ValueError(f"no target colour: the record has no 'colour' field and the caption {prompt!r} "
                             f"names none of {', '.join(COLOURS)}")
        mean = np.asarray(image.convert("RGB"), dtype=np.float64).reshape(-1, 3).mean(0)
        out.append(float(1 - np.linalg.norm(mean - np.asarray(target)) / (255 * math.sqrt(3))))
    return out


BUILTINS = {"exact_match": exact_match, "accuracy": accuracy, "similarity": similarity, "format": format_match,
            "colour": colour_match, "color": colour_match}


# ---- loading -----------------------------------------------------------------------------------

def load_rewards(specs: list, base: Path | None = None) -> list[Reward]:
    """The recipe's `grpo.rewards` as callables, checked before any weight loads."""
    if not specs:
        raise RecipeError("grpo.rewards is empty: name at least one reward, e.g. [{fn: exact_match}] "
                          f"(built-ins: {', '.join(BUILTINS)})")
    out = []
    for i, spec in enumerate(specs):
        where = f"grpo.rewards[{i}]"
        if isinstance(spec, str):
            spec = {"fn": spec}
        if not isinstance(spec, dict) or not isinstance(spec.get("fn"), str) or not spec["fn"]:
            raise RecipeError(f"{where}: expected {{fn: FILE.py:NAME | module:NAME | built-in, weight: 1.0}}, got {spec!r}")
        unknown = set(spec) - {"fn", "weight", "args"}
        if unknown:
            raise RecipeError(f"{where}: unknown key '{sorted(unknown)[0]}' (keys: fn, weight, args)")
        weight, args = spec.get("weight", 1.0), spec.get("args") or {}
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise RecipeError(f"{where}.weight must be a number, got {weight!r}")
        if not isinstance(args, dict):
            raise RecipeError(f"{where}.args must be a mapping of keyword arguments, got {args!r}")
        fn = resolve(spec["fn"], where, base)
        out.append(Reward(spec["fn"], partial(fn, **args) if args else fn, float(weight), args))
    return out


def resolve(name: str, where: str, base: Path | None = None):
    """`FILE.py:NAME`, `module:NAME` or a built-in name -> the function."""
    if ":" not in name:
        if name not in BUILTINS:
            raise RecipeError(f"{where}.fn: {name!r} is not a built-in reward ({', '.join(BUILTINS)}); name a "
                              "function as FILE.py:NAME or module:NAME")
        return BUILTINS[name]
    target, _, attr = name.rpartition(":")
    if target.endswith(".py"):
        module = _load_file(target, where, base)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as err:
            raise RecipeError(f"{where}.fn: cannot import module {target!r} ({err})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise RecipeError(f"{where}.fn: {target} has no function {attr!r}")
    if not _takes_two(fn):
        raise RecipeError(f"{where}.fn: {name} must take (prompts, completions, **fields)")
    return fn


def _load_file(target: str, where: str, base: Path | None):
    path = Path(target)
    if not path.is_absolute() and not path.is_file() and base is not None and (base / path).is_file():
        path = base / path
    if not path.is_file():
        raise RecipeError(f"{where}.fn: no such file {target} (relative to the working directory or the recipe)")
    spec = importlib.util.spec_from_file_location(f"janus_ft_reward_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as err:   # the user's file: any error is theirs, shown with its type
        raise RecipeError(f"{where}.fn: {path} failed to import: {type(err).__name__}: {err}") from None
    return module


def _takes_two(fn) -> bool:
    """Whether `fn` can be called as fn(prompts, completions, ...): two positional parameters (or *args)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except ValueError:   # no signature (a builtin): trust it
        return True
    kinds = [p.kind for p in params]
    positional = sum(k in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD) for k in kinds)
    return positional >= 2 or inspect.Parameter.VAR_POSITIONAL in kinds


# ---- scoring -----------------------------------------------------------------------------------

def score(rewards: list[Reward], prompts: list[str], completions: list, fields: dict, where: list[str]) -> list[list[float]]:
    """Per reward, one float per completion. `fields` hold lists aligned with `completions`;
    `where[i]` names completion i's prompt record for errors."""
    table = []
    for reward in rewards:
        try:
            values = reward.fn(prompts, completions, **fields)
        except Exception as err:   # the user's code: whatever it raises is reported, not a crash
            raise RewardError(f"reward {reward.name} raised {type(err).__name__}: {err} "
                              f"(prompt record {_culprit(reward, prompts, completions, fields, where)})") from None
        table.append(_checked(reward, values, len(completions), where))
    return table


def _culprit(reward: Reward, prompts, completions, fields, where) -> str:
    """The first record the reward fails on alone, or every record of the call when none does."""
    for i in range(len(completions)):
        try:
            reward.fn(prompts[i:i + 1], completions[i:i + 1], **{k: v[i:i + 1] for k, v in fields.items()})
        except Exception:   # noqa: BLE001 -- looking for the one that raises
            return where[i]
    return ", ".join(dict.fromkeys(where))


def _checked(reward: Reward, values, n: int, where: list[str]) -> list[float]:
    try:
        values = [float(v) for v in values]
    except (TypeError, ValueError):
        raise RewardError(f"reward {reward.name} must return a list of {n} numbers, got {str(values)[:80]} "
                          f"(prompt records {', '.join(dict.fromkeys(where))})") from None
    if len(values) != n:
        raise RewardError(f"reward {reward.name} returned {len(values)} values for {n} completions "
                          f"(prompt records {', '.join(dict.fromkeys(where))})")
    for v, w in zip(values, where):
        if not math.isfinite(v):
            raise RewardError(f"reward {reward.name} returned {v} (not a finite number) for prompt record {w}")
    return values
