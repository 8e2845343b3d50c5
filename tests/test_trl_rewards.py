"""Rewards written for TRL run unchanged through `janus-ft grpo`: TRL's own `trl.rewards` and the
reward functions of TRL's GRPOTrainer documentation, copied below exactly as the docs show them,
next to a tiny sequence-classification reward model, on conversational and standard prompts.

A recorder reward (returning None everywhere: it never counts) writes down what every reward
received at each step; each function is then applied to those arguments here, and the means the
run logged (`rewards/<fn>/mean`, `reward`) must be those values, Nones left out as TRL leaves them.

Sources: https://huggingface.co/docs/trl/grpo_trainer#using-a-custom-reward-function (examples 1-5;
example 1 as the current docs write it, `completion_ids`: an older page said `completions_ids`,
which TRL never passes), and TRL's README quick start (`reward_len`). `trl.rewards`' accuracy,
reasoning-accuracy and cosine-scaled rewards need `math_verify`; they run when it is installed.
"""

import importlib.util
import json
import math
from pathlib import Path

import pytest
import yaml
from conftest import tiny_reward_model, write_jsonl

from janus_ft.cli import main

REPO = Path(__file__).resolve().parent.parent

# ---- TRL's documentation, verbatim ---------------------------------------------------------------
README_REWARD_LEN = '''
# Define the reward function, which rewards completions that are close to 20 characters
def reward_len(completions, **kwargs):
    return [-abs(20 - len(completion)) for completion in completions]
'''
EXAMPLE_1 = '''
def reward_func(completion_ids, **kwargs):
    """Reward function that assigns higher scores to longer completions (in terms of token count)."""
    return [float(len(ids)) for ids in completion_ids]
'''
EXAMPLE_1_1 = '''
def reward_func(completions, **kwargs):
    """Reward function that assigns higher scores to longer completions (in terms of character count)."""
    return [float(len(completion)) for completion in completions]
'''
EXAMPLE_2 = '''
import re

def format_reward_func(completions, **kwargs):
    """Reward function that checks if the completion has a specific format."""
    pattern = r"^<think>.*?</think><answer>.*?</answer>$"
    completion_contents = [completion[0]["content"] for completion in completions]
    matches = [re.match(pattern, content) for content in completion_contents]
    return [1.0 if match else 0.0 for match in matches]
'''
EXAMPLE_3 = '''
import re

def reward_func(completions, ground_truth, **kwargs):
    # Regular expression to capture content inside \\boxed{}
    matches = [re.search(r"\\\\boxed\\{(.*?)\\}", completion) for completion in completions]
    contents = [match.group(1) if match else "" for match in matches]
    # Reward 1 if the content is the same as the ground truth, 0 otherwise
    return [1.0 if c == gt else 0.0 for c, gt in zip(contents, ground_truth)]
'''
EXAMPLE_4 = '''
# Math-specific reward function
def math_reward_func(prompts, completions, task, **kwargs):
    rewards = []
    for prompt, completion, t in zip(prompts, completions, task):
        if t == "math":
            # Calculate math-specific reward
            correct = check_math_solution(prompt, completion)
            reward = 1.0 if correct else -1.0
            rewards.append(reward)
        else:
            # Return None for non-math tasks
            rewards.append(None)
    return rewards

# Coding-specific reward function
def coding_reward_func(prompts, completions, task, **kwargs):
    rewards = []
    for prompt, completion, t in zip(prompts, completions, task):
        if t == "coding":
            # Calculate coding-specific reward
            works = test_code_solution(prompt, completion)
            reward = 1.0 if works else -1.0
            rewards.append(reward)
        else:
            # Return None for non-coding tasks
            rewards.append(None)
    return rewards
'''
EXAMPLE_5 = '''
import asyncio

async def async_reward_func(prompts, completions, **kwargs):
    # Simulate an I/O-bound call (e.g., HTTP request, database lookup)
    await asyncio.sleep(0.01)
    # Simple toy reward: 1.0 if the completion is non-empty, else 0.0
    return [1.0 if completion else 0.0 for completion in completions]
'''
# The docs leave these two helpers to the reader.
EXAMPLE_4_HELPERS = '''
def check_math_solution(prompt, completion):
    return "2" in str(completion)


def test_code_solution(prompt, completion):
    return "def" in str(completion)
'''
TRL_REWARDS = '''
from trl.rewards import get_repetition_penalty_reward, get_soft_overlong_punishment, think_format_reward

overlong = get_soft_overlong_punishment(max_completion_len=4, soft_punish_cache=2)
repetition = get_repetition_penalty_reward(ngram_size=2)
'''
RECORDER = '''
import json

LOG = {log!r}


def recorder(prompts, completions, completion_ids, trainer_state, **kwargs):
    columns = {{k: v for k, v in kwargs.items() if k not in ("log_extra", "log_metric")}}
    with open(LOG, "a") as f:
        f.write(json.dumps({{"prompts": prompts, "completions": completions, "completion_ids": completion_ids,
                            "state": type(trainer_state).__name__, "step": trainer_state.global_step,
                            "columns": columns}}) + "\\n")
    return [None] * len(completions)
'''


def math_verify_rewards() -> list:
    try:
        import math_verify  # noqa: F401
    except ImportError:
        return []
    return [("trl.rewards:accuracy_reward", "accuracy_reward")]


@pytest.fixture(scope="module")
def reward_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("trl_rewards")
    files = {"readme.py": README_REWARD_LEN, "example_1.py": EXAMPLE_1, "example_1_1.py": EXAMPLE_1_1,
             "example_2.py": EXAMPLE_2, "example_3.py": EXAMPLE_3, "example_4.py": EXAMPLE_4_HELPERS + EXAMPLE_4,
             "example_5.py": EXAMPLE_5,
             "trl_rewards.py": TRL_REWARDS}
    for name, text in files.items():
        (d / name).write_text(text)
    return d, tiny_reward_model(d / "tiny-rm")


def function(files: Path, spec: str):
    """The function a spec names, imported here independently of janus_ft."""
    if spec.startswith("trl.rewards:"):
        import trl.rewards
        return getattr(trl.rewards, spec.split(":")[1])
    if ":" not in spec:
        from janus_ft.eval.reward_model import RewardModel
        return RewardModel.load(spec, "test")
    file, name = spec.split(":")
    module_spec = importlib.util.spec_from_file_location(f"check_{Path(file).stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return getattr(module, name)


def run(tmp_path, files, rm, prompts: list[dict], rewards: list[tuple[str, str]]):
    """`janus-ft grpo` for 2 steps of 2 prompts x 2 completions; (log history, recorded calls)."""
    log = tmp_path / "calls.jsonl"
    (tmp_path / "recorder.py").write_text(RECORDER.format(log=str(log)))
    specs = [{"fn": spec} for spec, _ in rewards] + [{"fn": str(rm)}, {"fn": f"{tmp_path / 'recorder.py'}:recorder"}]
    recipe = yaml.safe_load((REPO / "recipes/grpo_format.yaml").read_text())
    recipe["data"] = {"train": [{"path": str(write_jsonl(tmp_path / "prompts.jsonl", prompts))}], "val": []}
    recipe["grpo"].update(rewards=specs, num_generations=2, max_completion_length=4)
    recipe["train"].update(max_steps=2, per_device_train_batch_size=4, save_steps=100, disable_tqdm=True,
                           eval_on_start=False)
    recipe["output_dir"] = str(tmp_path / "run")
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["grpo", "--recipe", str(tmp_path / "recipe.yaml")]) == 0
    history = json.loads((tmp_path / "run/trainer_state.json").read_text())["log_history"]
    return [e for e in history if "reward" in e], [json.loads(x) for x in log.read_text().splitlines()]


def awaited(values):
    import asyncio
    import inspect

    return asyncio.run(values) if inspect.isawaitable(values) else values


def check_logged_means(files, rm, rewards, logged, calls):
    """Each function applied to what the recorder saw gives the means the run logged."""
    assert len(logged) == len(calls) == 2
    named = rewards + [(str(rm), "tiny-rm")]
    fns = {label: function(files, spec) for spec, label in named}
    for entry, call in zip(logged, calls):
        kwargs = {"prompts": call["prompts"], "completions": call["completions"],
                  "completion_ids": call["completion_ids"], "trainer_state": None, **call["columns"]}
        values = {label: [math.nan if v is None else float(v) for v in awaited(fn(**kwargs))] for label, fn in fns.items()}
        for label, column in values.items():
            applied = [v for v in column if not math.isnan(v)]
            if applied:
                assert entry[f"rewards/{label}/mean"] == pytest.approx(sum(applied) / len(applied), abs=1e-5), label
            else:   # a reward that applied to nothing is left out, not logged as 0
                assert f"rewards/{label}/mean" not in entry, label
        rows = [[values[label][i] for label in values] for i in range(len(call["completions"]))]
        totals = [sum(v for v in row if not math.isnan(v)) for row in rows if not all(math.isnan(v) for v in row)]
        assert entry["reward"] == pytest.approx(sum(totals) / len(totals), abs=1e-5)
        assert "rewards/recorder/mean" not in entry
    return values


def test_conversational_prompts(tiny_dir, tmp_path, reward_files):
    files, rm = reward_files
    image = REPO / "data_templates/samples/images/shape_0002.png"
    prompts = [{"prompt": [{"role": "user", "content": "What is 1 + 1?"}], "task": "math", "solution": "2"},
               {"prompt": [{"role": "user", "content": "Write a function."}], "task": "code", "solution": "def f(): ..."},
               {"prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour?"}]}],
                "image": str(image), "task": "math", "solution": "red"},
               {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say 2."}],
                "task": "code", "solution": "2"}]
    rewards = [(f"{files}/example_2.py:format_reward_func", "format_reward_func"),
               ("trl.rewards:think_format_reward", "think_format_reward"),
               (f"{files}/example_1.py:reward_func", "reward_func"),
               (f"{files}/example_4.py:math_reward_func", "math_reward_func"),
               (f"{files}/example_4.py:coding_reward_func", "coding_reward_func"),
               (f"{files}/trl_rewards.py:repetition", "repetition")] + math_verify_rewards()
    logged, calls = run(tmp_path, files, rm, prompts, rewards)
    check_logged_means(files, rm, rewards, logged, calls)
    for call in calls:
        assert call["state"] == "TrainerState" and call["step"] == calls.index(call)
        assert all(p in [x["prompt"] for x in prompts] for p in call["prompts"])   # the messages as given
        assert all(len(c) == 1 and c[0]["role"] == "assistant" and isinstance(c[0]["content"], str)
                   for c in call["completions"])
        assert all(isinstance(i, list) and 1 <= len(i) <= 4 for i in call["completion_ids"])
        assert set(call["columns"]) == {"task", "solution", "image"}
        assert call["prompts"][0] == call["prompts"][1] and call["columns"]["solution"][0] == call["columns"]["solution"][1]


def test_standard_prompts(tiny_dir, tmp_path, reward_files):
    files, rm = reward_files
    prompts = [{"prompt": "What is 1 + 1?", "task": "math", "ground_truth": "2"},
               {"prompt": "Write a function.", "task": "code", "ground_truth": "def"},
               {"prompt": "Say \\boxed{2}.", "task": "math", "ground_truth": "2"},
               {"prompt": "What colour is red?", "task": "code", "ground_truth": "red"}]
    rewards = [(f"{files}/readme.py:reward_len", "reward_len"),
               (f"{files}/example_1.py:reward_func", "reward_func"),
               (f"{files}/example_1_1.py:reward_func", "reward_func_2"),
               (f"{files}/example_3.py:reward_func", "reward_func_3"),
               (f"{files}/example_4.py:math_reward_func", "math_reward_func"),
               (f"{files}/example_4.py:coding_reward_func", "coding_reward_func"),
               (f"{files}/trl_rewards.py:overlong", "overlong"),
               (f"{files}/example_5.py:async_reward_func", "async_reward_func")]
    logged, calls = run(tmp_path, files, rm, prompts, rewards)
    values = check_logged_means(files, rm, rewards, logged, calls)
    for call in calls:
        assert all(isinstance(p, str) and isinstance(c, str) for p, c in zip(call["prompts"], call["completions"]))
        assert set(call["columns"]) == {"task", "ground_truth"}
    # The reward model scored text (not None) for every completion, and not all alike.
    assert all(not math.isnan(v) for v in values["tiny-rm"]) and len(set(values["tiny-rm"])) > 1
