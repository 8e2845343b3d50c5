"""`janus-ft grpo` end to end on tiny models: rewards rise on held-out prompts (text-to-image and
understanding), a reward that fails stops with exit 2 naming it and the record, and a run killed
mid-way resumes into the same run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import need, write_jsonl

import janus_ft
from janus_ft.cli import main
from janus_ft.recipe import load_recipe

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def colour_tiny(tmp_path_factory):
    """A tiny Janus whose VQ decodes codes to distinct colours (the default one barely does)."""
    from janus_ft.tiny import build_tiny

    return build_tiny(tmp_path_factory.mktemp("tiny_colour"), vq_channels=128)


def evals(history, key="eval_reward"):
    return [e[key] for e in history if key in e]


@pytest.mark.slow   # one to two minutes: decoding 680 images through the 128-channel VQ decoder dominates
def test_t2i_colour_reward_rises_on_held_out_captions(colour_tiny, tmp_path):
    """Held-out captions (new subjects) drawn redder after 20 steps of 2 captions x 16 images.

    Measured (1 thread, held-out reward before -> after, train.seed 42 / 0 / 1 / 3): +0.112 / +0.103 /
    +0.079 / +0.099 from about 0.59 (seed 42 at 2 threads: +0.275), sampling the whole distribution
    as DeepSeek does (with transformers' default top-k 50 it was +0.124 / +0.063 / +0.110 / +0.143).
    With 8 images per caption the rise was +0.135 / +0.150 / +0.024: a group of 8 estimates the
    advantages too roughly for a 20-step run to be sure of a rise.
    """
    recipe = load_recipe(REPO / "recipes/grpo_t2i.yaml", [
        f"model.path={colour_tiny}", f"output_dir={tmp_path / 'run'}", "train.max_steps=20", "train.eval_steps=20",
        "grpo.num_generations=16", "train.per_device_train_batch_size=32", "train.learning_rate=2e-2",
        "train.save_steps=100", "train.disable_tqdm=true", "grpo.num_generations_eval=4", "train.eval_images=4"])
    history = janus_ft.grpo(recipe).log_history
    before, after = evals(history)[0], evals(history)[-1]
    print(f"held-out colour reward {before:.3f} -> {after:.3f}; train curve "
          f"{[round(e['reward'], 3) for e in history if 'reward' in e]}")
    assert after - before > 0.03
    assert (tmp_path / "run/samples/step-20.png").is_file() and (tmp_path / "run/adapter_model.safetensors").is_file()
    assert (tmp_path / "run/reward.png").is_file()
    train = [e for e in history if "reward" in e]
    assert {"rewards/colour/mean", "rewards/colour/std", "reward_std", "kl", "clip_ratio/region_mean"} <= set(train[0])


def test_understanding_exact_match_rises_from_the_base_value(tiny_dir, tmp_path):
    recipe = load_recipe(REPO / "recipes/grpo_format.yaml", [
        f"output_dir={tmp_path / 'run'}", "train.max_steps=12", "train.eval_steps=12", "train.disable_tqdm=true"])
    history = janus_ft.grpo(recipe).log_history
    before, after = evals(history, "eval_rewards/exact_match")[0], evals(history, "eval_rewards/exact_match")[-1]
    print(f"held-out exact match {before:.3f} -> {after:.3f}")
    assert before < 0.02 and after > 0.15


def prompts_file(tmp_path, n=2):
    return write_jsonl(tmp_path / "prompts.jsonl", [{"query": f"What is {i} + 1?", "solution": str(i + 1)}
                                                   for i in range(n)])


@pytest.mark.parametrize("body, message", [
    ("    return [1 / 0 if s == '2' else 0.0 for s in solution]", "raised ZeroDivisionError"),
    ("    return [float('nan') if s == '2' else 0.0 for s in solution]", "returned nan"),
])
def test_a_failing_reward_exits_2_naming_it_and_the_record(tiny_dir, tmp_path, capsys, body, message):
    (tmp_path / "my_rewards.py").write_text(f"def picky(prompts, completions, solution, **kw):\n{body}\n")
    data = prompts_file(tmp_path)
    code = main(["grpo", "--recipe", str(REPO / "recipes/grpo_format.yaml"), f"data.train=[{{path: {data}}}]",
                 "data.val=[]", f"output_dir={tmp_path / 'run'}", f"grpo.rewards=[{{fn: {tmp_path}/my_rewards.py:picky}}]",
                 "grpo.num_generations=2", "train.per_device_train_batch_size=4", "train.max_steps=1",
                 "train.disable_tqdm=true"])
    err = capsys.readouterr().err
    assert code == 2
    assert "my_rewards.py:picky" in err and message in err and f"{data}:2" in err and f"{data}:1" not in err


def test_reward_file_and_recipe_mistakes_exit_2_before_a_model_loads(tmp_path, capsys):
    data = prompts_file(tmp_path)
    base = ["grpo", "--recipe", str(REPO / "recipes/grpo_format.yaml"), f"data.train=[{{path: {data}}}]",
            f"output_dir={tmp_path / 'run'}"]
    assert main(base + ["grpo.rewards=[{fn: nowhere.py:f}]"]) == 2
    assert "grpo.rewards[0].fn: no such file nowhere.py" in capsys.readouterr().err
    assert main(base + ["grpo.rewards=[{fn: exact_matc}]"]) == 2
    assert "not a built-in reward" in capsys.readouterr().err
    assert main(base + ["grpo.use_vllm=true"]) == 2
    assert "grpo.use_vllm" in capsys.readouterr().err
    assert main(base + ["train.per_device_train_batch_size=5"]) == 2
    assert "multiple of grpo.num_generations" in capsys.readouterr().err
    assert main(base + ["grpo.guidance_scale=-1"]) == 2
    assert "grpo.guidance_scale must be >= 0" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_resume_after_kill_continues_the_same_run(tiny_dir, tmp_path):
    """SIGKILL after checkpoint-2, resume: steps 3-4 sample and score what the straight run did."""
    data = prompts_file(tmp_path, n=8)
    args = [f"data.train=[{{path: {data}}}]", "data.val=[]", "grpo.num_generations=4",
            "grpo.max_completion_length=2", "train.per_device_train_batch_size=8", "train.max_steps=4",
            "train.save_steps=2", "train.disable_tqdm=true", "grpo.rewards=[{fn: format, args: {pattern: '[a-z ]+'}}]"]
    straight = janus_ft.grpo(load_recipe(REPO / "recipes/grpo_format.yaml", args + [f"output_dir={tmp_path / 'a'}"]))
    out = tmp_path / "b"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "janus_ft.cli", "grpo", "--recipe", str(REPO / "recipes/grpo_format.yaml"),
                             *args, f"output_dir={out}", "train.max_steps=400"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (out / "checkpoint-2").is_dir() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert (out / "checkpoint-2").is_dir()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    for late in out.glob("checkpoint-*"):
        if late.name != "checkpoint-2":   # it may have got further before the kill: resume from 2
            import shutil
            shutil.rmtree(late)
    resumed = janus_ft.grpo(load_recipe(REPO / "recipes/grpo_format.yaml", args + [f"output_dir={out}", "train.resume=true"]))
    a = {e["step"]: e for e in straight.log_history if "reward" in e}
    b = {e["step"]: e for e in resumed.log_history if "reward" in e}
    assert sorted(b) == [1, 2, 3, 4] and json.loads((out / "trainer_state.json").read_text())["global_step"] == 4
    assert len({round(e["reward"], 6) for e in a.values()}) > 1   # steps differ: equality below means something
    for step in (3, 4):
        assert b[step]["reward"] == pytest.approx(a[step]["reward"], abs=1e-6)
        assert b[step]["loss"] == pytest.approx(a[step]["loss"], abs=1e-5)


@pytest.mark.parametrize("name", ["grpo_t2i.yaml", "grpo_format.yaml"])
def test_grpo_recipes_map_to_training_arguments(name, tmp_path):
    from janus_ft.recipe.grpo import check_grpo
    from janus_ft.train.arguments import training_arguments
    from janus_ft.train.grpo import prompts_per_micro_batch

    recipe = load_recipe(REPO / "recipes" / name, [f"output_dir={tmp_path}"])
    check_grpo(recipe.grpo, recipe.train.per_device_train_batch_size, 1, 1)
    args = training_arguments(recipe, 5, True, prompts_per_micro_batch(recipe))
    # The Trainer's batch is prompts: each brings num_generations completions.
    assert args.per_device_train_batch_size * recipe.grpo.num_generations == recipe.train.per_device_train_batch_size
    assert args.max_steps == 5 and args.eval_strategy == "steps" and recipe.grpo.rewards


@pytest.mark.multiprocess
@pytest.mark.parametrize("launch", ["ddp", "zero2", "zero3"])
def test_two_ranks_log_the_rewards_of_the_whole_step(tiny_dir, tmp_path, launch):
    """Each rank samples its own prompts; the logged rewards are the step's, over every rank, as one
    process logs them. The reward here is a number each prompt carries (not the completion's), so
    a step's mean depends only on which prompts it drew. Under ZeRO-3 every rank samples from the
    weights gathered for the rollout (ranks sampling different lengths would otherwise wait on
    each other's shards)."""
    data = write_jsonl(tmp_path / "prompts.jsonl", [{"query": f"Say {i}.", "v": i} for i in range(16)])
    (tmp_path / "value.py").write_text("def value(prompts, completions, v, **fields):\n"
                                       "    return [float(x) for x in v]\n")
    args = [f"data.train=[{{path: {data}}}]", "data.val=[]", "grpo.num_generations=2", "grpo.max_completion_length=1",
            "train.max_steps=3", "train.logging_steps=1", "train.disable_tqdm=true", "train.save_steps=1000",
            f"grpo.rewards=[{{fn: '{tmp_path / 'value.py'}:value'}}]"]
    recipe = str(REPO / "recipes/grpo_format.yaml")
    one = janus_ft.grpo(load_recipe(recipe, args + ["train.per_device_train_batch_size=8", f"output_dir={tmp_path / 'one'}"]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "janus_ft.cli",
           "grpo", "--recipe", recipe, *args, "train.per_device_train_batch_size=4", f"output_dir={tmp_path / 'two'}"]
    if launch != "ddp":
        need("deepspeed")
        cmd.append(f"train.deepspeed={REPO / 'recipes/deepspeed' / launch}.json")
    run = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    two = json.loads((tmp_path / "two/trainer_state.json").read_text())["log_history"]
    want = [e["reward"] for e in one.log_history if "reward" in e]
    got = [e["reward"] for e in two if "reward" in e]
    assert len(got) == len(want) == 3 and len(set(want)) > 1
    assert got == pytest.approx(want, abs=1e-6)


def _poison_grpo(monkeypatch, call: int) -> list:
    """Make the `call`-th GRPO loss non-finite (its micro-batch, not the sampling)."""
    import janus_ft.train.grpo_trainer as trainer_module

    real, calls = trainer_module.grpo_loss, []

    def poisoned(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(len(calls) + 1)
        if len(calls) == call:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(trainer_module, "grpo_loss", poisoned)
    return calls


def _short_grpo(tmp_path, *extra):
    data = prompts_file(tmp_path, n=8)
    return load_recipe(REPO / "recipes/grpo_format.yaml", [
        f"data.train=[{{path: {data}}}]", "data.val=[]", "grpo.num_generations=4", "grpo.max_completion_length=2",
        "train.per_device_train_batch_size=4", "train.gradient_accumulation_steps=2", "train.max_steps=3",
        "train.logging_steps=1", "train.save_steps=1000", "train.disable_tqdm=true", f"output_dir={tmp_path / 'run'}",
        "grpo.rewards=[{fn: format, args: {pattern: '[a-z ]+'}}]", *extra])


def test_nan_policy_skip_skips_a_non_finite_grpo_micro_batch_as_sft_does(tiny_dir, tmp_path, monkeypatch):
    """The base trainer's NaN policy holds for GRPO: skip gives that micro-batch a zero loss, counted
    in the log, and the adapter stays finite (before, GRPO raised whatever train.nan_policy said)."""
    calls = _poison_grpo(monkeypatch, call=3)   # step 2's first micro-batch
    result = janus_ft.grpo(_short_grpo(tmp_path, "train.nan_policy=skip"))
    skipped = [(e["step"], e["skipped_batches"]) for e in result.log_history if "skipped_batches" in e]
    assert len(calls) == 6 and skipped == [(2, 1)]
    assert all(torch.isfinite(p).all() for n, p in result.model.named_parameters() if "lora_" in n)


def test_nan_policy_stop_names_the_step(tiny_dir, tmp_path, monkeypatch):
    from janus_ft.train.checkpoint import TrainingError

    _poison_grpo(monkeypatch, call=3)
    with pytest.raises(TrainingError, match="non-finite loss at step 2 in the GRPO loss: training stopped; no "
                                            "checkpoint was written yet"):
        janus_ft.grpo(_short_grpo(tmp_path))


def test_grpo_sample_grids_land_in_tensorboard(tiny_dir, tmp_path):
    """The base trainer publishes GRPO's evaluation grid as SFT's and DPO's: samples/step-N.png and
    an image in the event file the scalars go to."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    captions = write_jsonl(tmp_path / "captions.jsonl", [{"query": c, "task": "generation"}
                                                         for c in ("a red square", "a blue circle")])
    recipe = load_recipe(REPO / "recipes/grpo_format.yaml", [
        f"data.train=[{{path: {captions}}}]", f"data.val=[{{path: {captions}}}]", "grpo.num_generations=2",
        "grpo.rewards=[{fn: colour}]", "train.per_device_train_batch_size=2",
        "train.max_steps=2", "train.eval_steps=2", "train.eval_on_start=true", "train.eval_images=2",
        "train.report_to=[tensorboard]", "train.disable_tqdm=true", f"output_dir={tmp_path / 'run'}"])
    janus_ft.grpo(recipe)
    assert sorted(p.name for p in (tmp_path / "run/samples").iterdir()) == ["step-0.png", "step-2.png"]
    run_dir, = (tmp_path / "run").glob("runs/*")
    events = EventAccumulator(str(run_dir), size_guidance={"images": 0}).Reload()
    assert [e.step for e in events.Images("eval/samples")] == [0, 2]
    assert "eval/reward" in events.Tags()["scalars"]
