"""Reward functions: built-ins, loading from files / modules / callables, TRL's keyword call with
`None` for "does not apply", and errors naming function and record."""

import math

import pytest
from PIL import Image

from janus_ft.errors import RecipeError
from janus_ft.eval.rewards import Batch, RewardError, load_rewards, score


def batch(completions, where=None, prompts=None, ids=None, **columns):
    n = len(completions)
    return Batch(prompts or ["q"] * n, completions, ids or [[1]] * n, columns, where or [f"p.jsonl:{i + 1}" for i in range(n)])


def test_builtins():
    [em, acc, sim, fmt, col] = load_rewards(["exact_match", "accuracy", "similarity",
                                            {"fn": "format", "args": {"pattern": "<a>.*</a>"}}, "colour"])
    answers, solutions = ["Red.", "the answer is 3.0", "blu", "<a>x</a>"], ["red", "3", "blue", "y"]
    assert em.fn(completions=answers, solution=solutions) == [1.0, 0.0, 0.0, 0.0]
    assert acc.fn(completions=answers, solution=solutions) == [1.0, 1.0, 0.0, 0.0]
    assert sim.fn(completions=answers, solution=solutions)[2] == pytest.approx(0.75)
    assert fmt.fn(completions=answers) == [0.0, 0.0, 0.0, 1.0]
    # Conversational completions (TRL's messages) score as their content does.
    conversational = [[{"role": "assistant", "content": a}] for a in answers]
    assert em.fn(completions=conversational, solution=solutions) == [1.0, 0.0, 0.0, 0.0]
    assert fmt.fn(completions=conversational) == [0.0, 0.0, 0.0, 1.0]
    red, blue = Image.new("RGB", (8, 8), (220, 30, 30)), Image.new("RGB", (8, 8), (30, 70, 220))
    scores = col.fn(prompts=["a red fox", "a fox"], completions=[red, red], colour=[None, "blue"])
    assert scores[0] == 1.0 and scores[1] < 0.5
    assert col.fn(prompts=["a fox"], completions=[blue], colour=["#1e46dc"]) == [1.0]
    # Where a built-in does not apply it says None: no solution, an image for a text reward, text for colour.
    assert em.fn(completions=["red", red], solution=[None, "red"]) == [None, None]
    assert acc.fn(completions=["3"], solution=None) == [None] and sim.fn(completions=[red], solution=["x"]) == [None]
    assert fmt.fn(completions=[red, "<a>b</a>"]) == [None, 1.0]
    assert col.fn(prompts=["a red fox", "a red fox"], completions=["red", red]) == [None, 1.0]


def test_file_module_and_callable_rewards(tmp_path):
    (tmp_path / "mine.py").write_text("def length(completions, **kwargs):\n"
                                      "    return [len(c) for c in completions]\n")

    def shout(completions, **kwargs):
        return [float(c.isupper()) for c in completions]

    [file_reward, module_reward, own, trl_reward] = load_rewards(
        [{"fn": "mine.py:length", "weight": 0.5}, {"fn": "janus_ft.eval.reward_functions:exact_match"}, shout,
         {"fn": "trl.rewards:think_format_reward"}], base=tmp_path)
    assert file_reward.fn(completions=["ab", ""]) == [2, 0] and file_reward.weight == 0.5
    assert [r.label for r in (file_reward, module_reward, own, trl_reward)] == [
        "length", "exact_match", "shout", "think_format_reward"]
    assert module_reward.fn(completions=["x"], solution=["x"]) == [1.0]
    assert own.weight == 1.0 and own.fn is shout
    table = score([file_reward, own], batch(["ab", "CD"]))
    assert table == [[2.0, 0.0], [2.0, 1.0]]


def test_two_rewards_of_one_name_log_apart():
    def reward_func(completions, **kwargs):
        return [0.0] * len(completions)

    assert [r.label for r in load_rewards([reward_func, reward_func, "exact_match"])] == [
        "reward_func", "reward_func_2", "exact_match"]


@pytest.mark.parametrize("spec, message", [
    ([], "grpo.rewards is empty"),
    (["nope"], "not a built-in reward"),
    ([{"fn": "missing.py:f"}], "no such file missing.py"),
    ([{"fn": "janus_ft.eval.rewards:nothing"}], "has no function 'nothing'"),
    ([{"fn": "no_such_module_x:f"}], "cannot import module"),
    ([{"fn": "exact_match", "weight": "high"}], "weight must be a number"),
    ([{"fn": "exact_match", "wieght": 1}], "unknown key 'wieght'"),
    ([{"fn": "janus_ft.eval.reward_functions:text_of"}], "text_of must accept **kwargs"),
    ([{"fn": "./no/such/model-dir"}], "not a built-in reward"),
])
def test_bad_reward_specs(spec, message):
    with pytest.raises(RecipeError, match=message.replace("*", r"\*")):
        load_rewards(spec)


def test_the_call_is_by_keyword_with_every_column():
    """TRL's convention: prompts, completions, completion_ids, trainer_state, log hooks and every
    column by keyword (a function taking `completions` alone, as TRL's docs write them, works)."""
    seen = {}

    def reward_len(completions, **kwargs):
        seen.update(kwargs, completions=completions)
        return [-abs(20 - len(completion)) for completion in completions]

    state = object()
    call = batch(["a", "abc"], prompts=["p1", "p2"], ids=[[5, 2], [7]], solution=["x", None])
    call.trainer_state = state
    assert score(load_rewards([reward_len]), call) == [[-19.0], [-17.0]]
    assert seen["prompts"] == ["p1", "p2"] and seen["completion_ids"] == [[5, 2], [7]]
    assert seen["solution"] == ["x", None] and seen["trainer_state"] is state
    assert callable(seen["log_extra"]) and callable(seen["log_metric"])


def test_none_means_not_applicable_and_all_none_warns(caplog):
    def math_only(completions, task, **kwargs):
        return [1.0 if t == "math" else None for t in task]

    def never(completions, **kwargs):
        return [None] * len(completions)

    with caplog.at_level("WARNING", logger="janus_ft"):
        table = score(load_rewards([math_only, never]), batch(["a", "b"], task=["math", "code"]))
    assert table[0][0] == 1.0 and all(math.isnan(v) for v in (table[0][1], *table[1]))
    assert "every reward returned None for a completion of prompt record p.jsonl:2" in caplog.text


def test_failures_name_the_function_and_the_record():
    def boom(completions, **kwargs):
        return [1 / 0 if c == "b" else 0.0 for c in completions]

    def short(completions, **kwargs):
        return [0.0]

    def nan(completions, **kwargs):
        return [float("nan") if c == "b" else 0.0 for c in completions]

    def text(completions, **kwargs):
        return ["high"] * len(completions)

    for fn, message in ((boom, "reward boom raised ZeroDivisionError: division by zero (prompt record p.jsonl:2)"),
                        (short, "reward short returned 1 values for 2 completions"),
                        (nan, "reward nan returned nan (not a finite number) for prompt record p.jsonl:2; return None"),
                        (text, "reward text must return numbers (or None), got high for prompt record p.jsonl:1")):
        with pytest.raises(RewardError, match=message.replace("(", r"\(").replace(")", r"\)")):
            score(load_rewards([fn]), batch(["a", "b"]))


def test_a_missing_column_or_a_clashing_one_is_named():
    def needs(completions, solution, **kwargs):
        return [0.0] * len(completions)

    with pytest.raises(RewardError, match="reward needs needs a column 'solution', which the prompt records do not "
                                          r"have \(columns: level;"):
        score(load_rewards([needs]), batch(["a"], level=[1]))
    with pytest.raises(RewardError, match="a field named 'trainer_state'"):
        score(load_rewards(["exact_match"]), batch(["a"], trainer_state=["x"]))
