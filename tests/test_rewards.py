"""Reward functions: built-ins, loading from files / modules, and errors naming function and record."""

import pytest
from PIL import Image

from janus_ft.errors import RecipeError
from janus_ft.train.rewards import RewardError, load_rewards, score


def test_builtins():
    [em, acc, sim, fmt, col] = load_rewards(["exact_match", "accuracy", "similarity",
                                            {"fn": "format", "args": {"pattern": "<a>.*</a>"}}, "colour"])
    answers, solutions = ["Red.", "the answer is 3.0", "blu", "<a>x</a>"], ["red", "3", "blue", "y"]
    assert em.fn(None, answers, solution=solutions) == [1.0, 0.0, 0.0, 0.0]
    assert acc.fn(None, answers, solution=solutions) == [1.0, 1.0, 0.0, 0.0]
    assert sim.fn(None, answers, solution=solutions)[2] == pytest.approx(0.75)
    assert fmt.fn(None, answers) == [0.0, 0.0, 0.0, 1.0]
    red, blue = Image.new("RGB", (8, 8), (220, 30, 30)), Image.new("RGB", (8, 8), (30, 70, 220))
    scores = col.fn(["a red fox", "a fox"], [red, red], colour=[None, "blue"])
    assert scores[0] == 1.0 and scores[1] < 0.5
    assert col.fn(["a fox"], [blue], colour=["#1e46dc"]) == [1.0]


def test_file_and_module_rewards(tmp_path):
    (tmp_path / "mine.py").write_text("def length(prompts, completions, **fields):\n"
                                      "    return [len(c) for c in completions]\n")
    [file_reward, module_reward] = load_rewards([{"fn": "mine.py:length", "weight": 0.5},
                                                 {"fn": "janus_ft.train.rewards:exact_match"}], base=tmp_path)
    assert file_reward.fn(None, ["ab", ""]) == [2, 0] and file_reward.weight == 0.5 and file_reward.label == "length"
    assert module_reward.fn(None, ["x"], solution=["x"]) == [1.0]


@pytest.mark.parametrize("spec, message", [
    ([], "grpo.rewards is empty"),
    (["nope"], "not a built-in reward"),
    ([{"fn": "missing.py:f"}], "no such file missing.py"),
    ([{"fn": "janus_ft.train.rewards:nothing"}], "has no function 'nothing'"),
    ([{"fn": "no_such_module_x:f"}], "cannot import module"),
    ([{"fn": "exact_match", "weight": "high"}], "weight must be a number"),
    ([{"fn": "exact_match", "wieght": 1}], "unknown key 'wieght'"),
])
def test_bad_reward_specs(spec, message):
    with pytest.raises(RecipeError, match=message):
        load_rewards(spec)


def test_failures_name_the_function_and_the_record():
    def boom(prompts, completions, **fields):
        return [1 / 0 if c == "b" else 0.0 for c in completions]

    def short(prompts, completions, **fields):
        return [0.0]

    def nan(prompts, completions, **fields):
        return [float("nan") if c == "b" else 0.0 for c in completions]

    where = ["p.jsonl:1", "p.jsonl:2"]
    for fn, message in ((boom, "reward boom raised ZeroDivisionError: division by zero (prompt record p.jsonl:2)"),
                        (short, "reward short returned 1 values for 2 completions"),
                        (nan, "reward nan returned nan (not a finite number) for prompt record p.jsonl:2")):
        reward = load_rewards([{"fn": "exact_match"}])[0]
        reward.fn, reward.name = fn, fn.__name__
        with pytest.raises(RewardError, match=message.replace("(", r"\(").replace(")", r"\)")):
            score([reward], ["q", "q"], ["a", "b"], {}, where)
