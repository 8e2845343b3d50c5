"""Rewards: scoring functions on sampled completions, for GRPO training (`grpo.rewards`) and for
evaluation (`janus-ft eval --reward`), called exactly as TRL's `GRPOTrainer` calls its reward
functions, so a reward written for TRL runs unchanged:

    grpo:
      rewards:
        - {fn: "my_rewards.py:brand_colour", weight: 1.0}      # a file (relative to the recipe or cwd)
        - {fn: "my_package.scoring:judge", weight: 0.5}        # an importable module (trl.rewards:think_format_reward)
        - {fn: exact_match}                                     # a built-in (below)
        - {fn: format, args: {pattern: "^<answer>.*</answer>$"}}
        - {fn: "runs/my-reward-model"}                          # a sequence-classification model (dir or hub id)

From Python a reward may also be the callable itself. The call is by keyword:
`fn(prompts=..., completions=..., completion_ids=..., trainer_state=..., log_extra=..., log_metric=...,
**columns)` with one entry per completion (each prompt repeated once per completion of its group):
`prompts` are the prompts as the records give them (a string, TRL's message list for a
conversational `prompt`, the caption of a generation prompt), `completions` strings, TRL's
`[{"role": "assistant", "content": ...}]` for conversational prompts, or `PIL.Image.Image`s for
generation; `completion_ids` the sampled token ids (EOS included when emitted) or an image's VQ
codes; every other field of the prompt records arrives as a list aligned with them (None where a
record lacks it). A reward returns one number or `None` ("does not apply") per completion; as in
TRL, a `None` is left out of the weighted sum (`nansum`), the advantages and the logged means.
A reward that raises, returns the wrong count, or returns NaN / inf (a bug more often than a
meaning: `None` says "not applicable") stops with exit code 2 naming the function and the prompt
record (`file:line`).

TRL's convention: https://huggingface.co/docs/trl/grpo_trainer#using-a-custom-reward-function
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import sys
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from accelerate import PartialState
from accelerate.logging import get_logger

from ..errors import RecipeError, UserError
from .reward_functions import BUILTINS

logger = get_logger(__name__)

# Keywords every call carries besides the prompt records' columns (TRL's names).
CALL_KEYWORDS = ("prompts", "completions", "completion_ids", "trainer_state", "log_extra", "log_metric")


class RewardError(UserError):
    """A reward function raised or returned something unusable (exit code 2)."""


@dataclass
class Reward:
    name: str            # as the recipe wrote it (`file.py:fn`, `module:fn`, a built-in, a model) or the callable's name
    fn: object
    weight: float = 1.0
    args: dict = field(default_factory=dict)
    label: str = ""      # how logs name it (`rewards/<label>/mean`): the function's name, or the model's folder

    def __post_init__(self):
        self.label = self.label or callable_name(self.fn)


def callable_name(fn) -> str:
    """TRL's name for a reward: the function's (a partial's inner function's), else its class's."""
    while isinstance(fn, partial):
        fn = fn.func
    return getattr(fn, "__name__", type(fn).__name__)


# ---- loading -----------------------------------------------------------------------------------

def load_rewards(specs: list, base: Path | None = None, where: str = "grpo.rewards") -> list[Reward]:
    """Rewards as callables, checked before the policy loads: recipe entries (`{fn, weight, args}`
    or a name) and, from Python, callables (weight 1)."""
    if not specs:
        raise RecipeError(f"{where} is empty: name at least one reward, e.g. [{{fn: exact_match}}] "
                          f"(built-ins: {', '.join(BUILTINS)})")
    rewards = [_reward(spec, f"{where}[{i}]", base) for i, spec in enumerate(specs)]
    seen: dict[str, int] = {}
    for reward in rewards:   # two functions of one name (TRL's doc examples are all `reward_func`) log apart
        seen[reward.label] = seen.get(reward.label, 0) + 1
        if seen[reward.label] > 1:
            reward.label = f"{reward.label}_{seen[reward.label]}"
    return rewards


def _reward(spec, where: str, base: Path | None) -> Reward:
    if isinstance(spec, Reward):
        return spec
    if isinstance(spec, str) or callable(spec):
        spec = {"fn": spec}
    fn = spec.get("fn") if isinstance(spec, dict) else None
    if not (callable(fn) or (isinstance(fn, str) and fn)):
        raise RecipeError(f"{where}: expected {{fn: FILE.py:NAME | module:NAME | built-in | reward model, "
                          f"weight: 1.0}}, got {spec!r}")
    unknown = set(spec) - {"fn", "weight", "args"}
    if unknown:
        raise RecipeError(f"{where}: unknown key '{sorted(unknown)[0]}' (keys: fn, weight, args)")
    weight, args = spec.get("weight", 1.0), spec.get("args") or {}
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
        raise RecipeError(f"{where}.weight must be a number, got {weight!r}")
    if not isinstance(args, dict):
        raise RecipeError(f"{where}.args must be a mapping of keyword arguments, got {args!r}")
    target = fn if callable(fn) else resolve(fn, where, base)
    check_signature(target, where)
    name = fn if isinstance(fn, str) else callable_name(fn)
    # Logged as the recipe names it (`format`, `my.py:brand` -> `brand`), a model by its folder, a
    # callable by its name (TRL's `reward_func_names`).
    label = "" if callable(fn) else fn.rpartition(":")[2] if ":" in fn or fn in BUILTINS else Path(fn).name
    return Reward(name, partial(target, **args) if args else target, float(weight), args, label)


def resolve(name: str, where: str, base: Path | None = None):
    """`FILE.py:NAME`, `module:NAME`, a built-in name, or a sequence-classification model (a local
    directory or a hub id) -> the callable."""
    if ":" not in name:
        if name in BUILTINS:
            return BUILTINS[name]
        from .reward_model import RewardModel, is_reward_model

        if is_reward_model(name, base):
            return RewardModel.load(name, where, base)
        raise RecipeError(f"{where}.fn: {name!r} is not a built-in reward ({', '.join(BUILTINS)}); name a "
                          "function as FILE.py:NAME or module:NAME, or a sequence-classification model directory "
                          "or hub id")
    target, _, attr = name.rpartition(":")
    if target.endswith(".py"):
        module = _load_file(target, where, base)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as err:
            raise RecipeError(f"{where}.fn: cannot import module {target!r} ({err})") from None
    try:
        fn = getattr(module, attr, None)
    except ImportError as err:   # a lazy module (trl.rewards) whose member needs a package
        raise RecipeError(f"{where}.fn: {name} cannot be imported: {err}") from None
    if not callable(fn):
        raise RecipeError(f"{where}.fn: {target} has no function {attr!r}")
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


def check_signature(fn, where: str) -> None:
    """A reward must take TRL's keywords: `**kwargs`, or every one of `CALL_KEYWORDS` by name (the
    records' columns are checked against its required parameters when it is first called)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):   # no signature (a builtin): trust it
        return
    if any(p.kind == p.VAR_KEYWORD for p in params):
        return
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    missing = [k for k in CALL_KEYWORDS if k not in names]
    if missing:
        raise RecipeError(f"{where}.fn: {callable_name(fn)} must accept **kwargs: rewards are called as TRL calls "
                          f"them, by keyword with {', '.join(CALL_KEYWORDS)} and every column "
                          f"(it lacks {', '.join(missing)})")


# ---- scoring -----------------------------------------------------------------------------------

@dataclass
class Batch:
    """One scoring call: lists aligned with the completions, and `where[i]`, how errors name
    completion i's prompt record."""

    prompts: list
    completions: list
    completion_ids: list
    columns: dict
    where: list
    trainer_state: object = None
    log_extra: object = None     # TRL's hooks: log_extra(column, values), log_metric(name, value)
    log_metric: object = None

    def keywords(self, rows: slice = slice(None)) -> dict:
        picked = {"prompts": self.prompts[rows], "completions": self.completions[rows],
                  "completion_ids": self.completion_ids[rows], "trainer_state": self.trainer_state,
                  "log_extra": self.log_extra or _ignore, "log_metric": self.log_metric or _ignore}
        return picked | {k: v[rows] for k, v in self.columns.items()}


def _ignore(*args, **kwargs) -> None:
    return None


def score(rewards: list[Reward], batch: Batch) -> list[list[float]]:
    """Per completion, one value per reward: a float, or NaN where the reward returned None."""
    clash = sorted(set(batch.columns) & set(CALL_KEYWORDS))
    if clash:
        raise RewardError(f"the prompt records have a field named {clash[0]!r}, a name the reward call uses itself "
                          f"({', '.join(CALL_KEYWORDS)}): rename it")
    table = [_call(reward, batch) for reward in rewards]
    rows = [list(values) for values in zip(*table)]
    for i, values in enumerate(rows):
        if rows and all(math.isnan(v) for v in values):
            PartialState()   # the process's state (training's launcher sets it up first) for a rank-aware log
            logger.warning(f"every reward returned None for a completion of prompt record {batch.where[i]} "
                           f"(completion {str(batch.completions[i])[:80]!r}): it is left out of the means and gets "
                           "advantage 0; make at least one reward apply to every prompt")
            break
    return rows


def _call(reward: Reward, batch: Batch) -> list[float]:
    _check_columns(reward, batch)
    try:
        values = _run(reward.fn(**batch.keywords()))
    except Exception as err:   # the user's code: whatever it raises is reported, not a crash
        raise RewardError(f"reward {reward.name} raised {type(err).__name__}: {err} "
                          f"(prompt record {_culprit(reward, batch)})") from None
    return _checked(reward, values, len(batch.completions), batch.where)


def _run(values):
    """An `async def` reward's result awaited (TRL accepts those; here they run one after another)."""
    if inspect.isawaitable(values):
        import asyncio

        return asyncio.run(values)
    return values


def _check_columns(reward: Reward, batch: Batch) -> None:
    """A required parameter no column supplies fails here with the columns there are, not as a
    TypeError on every record."""
    try:
        params = inspect.signature(reward.fn).parameters.values()
    except (TypeError, ValueError):
        return
    have = set(CALL_KEYWORDS) | set(batch.columns)
    for p in params:
        if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in have:
            raise RewardError(f"reward {reward.name} needs a column {p.name!r}, which the prompt records do not have "
                              f"(columns: {', '.join(batch.columns) or 'none'}; prompt records "
                              f"{', '.join(dict.fromkeys(batch.where))})")


def _culprit(reward: Reward, batch: Batch) -> str:
    """The first record the reward fails on alone, or every record of the call when none does."""
    for i in range(len(batch.completions)):
        try:
            _run(reward.fn(**batch.keywords(slice(i, i + 1))))
        except Exception:   # noqa: BLE001 -- looking for the one that raises
            return batch.where[i]
    return ", ".join(dict.fromkeys(batch.where))


def _checked(reward: Reward, values, n: int, where: list[str]) -> list[float]:
    records = ", ".join(dict.fromkeys(where))
    try:
        values = list(values)
    except TypeError:
        raise RewardError(f"reward {reward.name} must return a list of {n} numbers (or None), got "
                          f"{str(values)[:80]} (prompt records {records})") from None
    if len(values) != n:
        raise RewardError(f"reward {reward.name} returned {len(values)} values for {n} completions "
                          f"(prompt records {records})")
    out = []
    for v, w in zip(values, where):
        try:
            number = math.nan if v is None else float(v)
        except (TypeError, ValueError):
            raise RewardError(f"reward {reward.name} must return numbers (or None), got {str(v)[:80]} for prompt "
                              f"record {w}") from None
        if v is not None and not math.isfinite(number):
            raise RewardError(f"reward {reward.name} returned {number} (not a finite number) for prompt record {w}; "
                              "return None where a reward does not apply")
        out.append(number)
    return out
