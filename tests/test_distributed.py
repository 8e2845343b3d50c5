"""Several processes train exactly like one: DDP over gloo on CPU ranks (and DeepSpeed ZeRO-2 / ZeRO-3
where DeepSpeed is installed) give the single process's loss curve and adapter for the same global
batch, each rank reading its own shard of every step's block, the VQ codes encoded once in all.
Shipped DeepSpeed and accelerate configs load; FSDP on CPU ranks is refused, not silently DDP."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import need
from safetensors.torch import load_file

from janus_ft.data.mixture import build_schedule
from janus_ft.errors import RecipeError
from janus_ft.recipe import TrainArgs, load_recipe

pytestmark = pytest.mark.slow   # several processes per test: `-m 'not slow'` skips them locally
REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "recipes" / "demo.yaml"
STEPS = 4
# Deterministic: no LoRA or caption dropout, no evaluation, no checkpoints; global batch 4 per step.
COMMON = [f"train.max_steps={STEPS}", "train.gradient_accumulation_steps=1", "lora.dropout=0",
          "data.cfg_dropout=0", "train.logging_steps=1", "data.val=[]", "train.eval_steps=null",
          "train.disable_tqdm=true", 'train.extra={save_strategy: "no"}']


TASK_LOSSES = ("loss_understanding", "loss_text", "loss_generation")


def curve(out: Path) -> list[tuple[float, float]]:
    """(loss, grad_norm) of every logged step."""
    log = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return [(e["loss"], e["grad_norm"]) for e in log if "loss" in e]


def task_curve(out: Path) -> list[dict]:
    """Per-task losses of every logged step (summed over all ranks' micro-batches)."""
    log = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return [{k: e[k] for k in TASK_LOSSES if k in e} for e in log if "loss" in e]


def torchrun(tmp_path: Path, name: str, overrides: list[str]) -> tuple[Path, str]:
    """`torchrun --nproc_per_node 2 -m janus_ft.cli sft`, 2 samples per rank; (output_dir, stdout)."""
    out = tmp_path / name
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "janus_ft.cli", "sft", "--recipe", str(DEMO), *COMMON, *overrides,
           "train.per_device_train_batch_size=2", f"output_dir={out}", f"data.code_cache={tmp_path / name}-vq"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    run = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-6000:]
    return out, run.stdout


@pytest.fixture(scope="module")
def single(tmp_path_factory, tiny_dir):
    """The reference: one process, 4 samples per step."""
    from janus_ft.train.sft import run_sft

    out = tmp_path_factory.mktemp("single") / "run"
    run_sft(load_recipe(DEMO, [*COMMON, "train.per_device_train_batch_size=4", f"output_dir={out}"]))
    return out


def assert_same_training(out: Path, single: Path) -> None:
    got, want = curve(out), curve(single)
    assert len(got) == len(want) == STEPS
    for (loss, norm), (loss1, norm1) in zip(got, want):
        assert loss == pytest.approx(loss1, rel=1e-5) and norm == pytest.approx(norm1, rel=1e-4)
    for got_tasks, want_tasks in zip(task_curve(out), task_curve(single)):
        assert got_tasks.keys() == want_tasks.keys()
        for key in got_tasks:
            assert got_tasks[key] == pytest.approx(want_tasks[key], rel=1e-3), key
    a = load_file(str(out / "adapter_model.safetensors"))
    b = load_file(str(single / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5), key
    assert json.loads((out / "mixture.json").read_text()) == json.loads((single / "mixture.json").read_text())


def test_two_ddp_processes_train_like_one_and_encode_the_vq_codes_once(tmp_path, single):
    out, stdout = torchrun(tmp_path, "ddp", [])
    assert_same_training(out, single)
    # "VQ codes for 16 image(s): X cached, Y encoded", once per rank: the main process encodes, the
    # other reads what it wrote.
    counts = sorted(map(tuple, re.findall(r"VQ codes for 16 image\(s\): (\d+) cached, (\d+) encoded", stdout)))
    assert counts == [("0", "16"), ("16", "0")], stdout


@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_deepspeed_on_two_cpu_processes_trains_like_one(tmp_path, single, stage):
    need("deepspeed")
    out, _ = torchrun(tmp_path, stage, [f"train.deepspeed=recipes/deepspeed/{stage}.json"])
    assert_same_training(out, single)   # ZeRO-3: the adapter gathered from shards on every rank


@pytest.mark.parametrize("per_device,accumulation", [(2, 1), (1, 2), (2, 3)])
def test_each_rank_reads_its_own_shard_and_a_step_is_the_schedules_block(per_device, accumulation):
    """The Trainer reads the schedule in order through accelerate's sharded DataLoader: micro-batch
    i goes to rank i % world. Over one optimizer step the ranks together read exactly that step's
    block, which holds the task ratio; no position is read twice."""
    from accelerate.data_loader import prepare_data_loader

    world, steps = 2, 5
    block = per_device * accumulation * world
    schedule = build_schedule({"understanding": 7, "text": 3, "generation": 5},
                              {"understanding": 5, "text": 1, "generation": 4}, block, steps, seed=0)
    loader = torch.utils.data.DataLoader(range(len(schedule)), batch_size=per_device)
    shards = [[b.tolist() for b in prepare_data_loader(loader, num_processes=world, process_index=r,
                                                        put_on_device=False)] for r in range(world)]
    seen = []
    for step in range(steps):
        micro = slice(step * accumulation, (step + 1) * accumulation)
        positions = sorted(p for shard in shards for batch in shard[micro] for p in batch)
        assert positions == list(range(step * block, (step + 1) * block))
        seen += positions
        tasks = [schedule[p][0] for p in positions]
        assert abs(tasks.count("understanding") - block * 0.5) <= 1 and abs(tasks.count("generation") - block * 0.4) <= 1
    assert len(seen) == len(set(seen)) == len(schedule)


@pytest.mark.parametrize("name,stage", [("zero2.json", 2), ("zero3.json", 3)])
def test_shipped_deepspeed_configs_take_their_batch_sizes_from_the_recipe(name, stage, tmp_path, monkeypatch):
    need("deepspeed")
    from transformers.integrations.deepspeed import (
        HfTrainerDeepSpeedConfig,
        unset_hf_deepspeed_config,
    )

    from janus_ft.train.sft import sft_config

    monkeypatch.chdir(tmp_path)   # train.deepspeed is relative to the recipe file from anywhere
    recipe = load_recipe(DEMO, [f"train.deepspeed=deepspeed/{name}", "output_dir=o"])
    assert Path(recipe.train.deepspeed) == REPO / "recipes" / "deepspeed" / name
    config = json.loads(Path(recipe.train.deepspeed).read_text())
    assert config["zero_optimization"]["stage"] == stage
    assert "optimizer" not in config   # the Trainer's own AdamW: works on CPU and GPU alike
    try:
        hf = HfTrainerDeepSpeedConfig(config)
        hf.trainer_config_process(sft_config(recipe, max_steps=10, has_eval=False))
        assert hf.config["train_micro_batch_size_per_gpu"] == recipe.train.per_device_train_batch_size
        assert hf.config["gradient_accumulation_steps"] == recipe.train.gradient_accumulation_steps
        assert hf.config["gradient_clipping"] == recipe.train.max_grad_norm
    finally:
        unset_hf_deepspeed_config()   # or later tests would load models as if under ZeRO-3


def test_missing_or_broken_deepspeed_config_is_a_recipe_error(tmp_path):
    with pytest.raises(RecipeError, match="train.deepspeed: no such file"):
        load_recipe(DEMO, ["train.deepspeed=deepspeed/zero9.json"])
    broken = tmp_path / "ds.json"
    broken.write_text("{stage: 2")
    with pytest.raises(RecipeError, match="not a JSON DeepSpeed config"):
        load_recipe(DEMO, [f"train.deepspeed={broken}"])


def test_fsdp_accelerate_config_wraps_janus_layers(tiny_model):
    """What `accelerate launch --config_file recipes/accelerate/fsdp.yaml` hands the ranks builds an
    FSDP2 plugin whose wrap policy finds the LLM and SigLIP layers in a Janus model."""
    from unittest import mock

    from accelerate.commands.launch import (
        _validate_launch_command,
        launch_command_parser,
    )
    from accelerate.utils import FullyShardedDataParallelPlugin, prepare_multi_gpu_env

    parser = launch_command_parser()
    args, _, _ = _validate_launch_command(parser.parse_args([
        "--config_file", str(REPO / "recipes/accelerate/fsdp.yaml"), "-m", "janus_ft.cli"]))
    env = prepare_multi_gpu_env(args)
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "2"
    with mock.patch.dict(os.environ, env):
        plugin = FullyShardedDataParallelPlugin()
        plugin.set_auto_wrap_policy(tiny_model)   # raises if a class to wrap is not in the model
    wrapped = {type(m).__name__ for m in tiny_model.modules() if plugin.auto_wrap_policy(m, False, 0)}
    assert wrapped == {"LlamaDecoderLayer", "JanusVisionEncoderLayer"}


def test_fsdp_on_cpu_ranks_is_refused_not_silently_ddp(monkeypatch):
    from janus_ft.train.distributed import distributed_fields

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    if torch.cuda.is_available():
        pytest.skip("GPU ranks run FSDP")
    with pytest.raises(RecipeError, match="FSDP needs GPUs"):
        distributed_fields(TrainArgs())
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    with pytest.raises(RecipeError, match="FSDP needs GPUs"):
        distributed_fields(TrainArgs(extra={"fsdp": "full_shard"}))
