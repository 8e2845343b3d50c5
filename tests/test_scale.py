"""Every method in every single-process scale mode: SFT, DPO and GRPO each finish a short run with
gradient checkpointing and with a 4-bit language model (QLoRA). Checkpointing is exact -- the same
per-step losses and adapter as the plain run -- and 4-bit really quantizes (the language model's
Linear layers are bitsandbytes `Linear4bit`) and trains to finite losses. The multi-process modes
(DDP, ZeRO-2, ZeRO-3) are in tests/test_distributed.py, test_dpo.py and test_grpo.py; the whole
matrix, FSDP included, is in docs/distributed.md."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import need, write_jsonl
from safetensors.torch import load_file

import janus_ft
from janus_ft.recipe import load_recipe

REPO = Path(__file__).resolve().parent.parent
QUIET = ["train.max_steps=2", "train.logging_steps=1", "data.val=[]", "lora.dropout=0", "train.save_steps=1000",
         "train.disable_tqdm=true"]


def recipe_of(method: str, tmp: Path, name: str, *extra: str):
    if method == "grpo":
        prompts = write_jsonl(tmp / "prompts.jsonl", [{"query": f"What is {i} + 1?", "solution": str(i + 1)} for i in range(8)])
        args = [f"data.train=[{{path: {prompts}}}]", "grpo.num_generations=4", "grpo.max_completion_length=3",
                "train.per_device_train_batch_size=8", "grpo.rewards=[{fn: format, args: {pattern: '[a-z ]+'}}]"]
        path = "grpo_format.yaml"
    else:
        args = ["data.cfg_dropout=0", "train.per_device_train_batch_size=2"]
        path = "demo.yaml" if method == "sft" else "dpo_mixed.yaml"
    return load_recipe(REPO / "recipes" / path, [*QUIET, *args, f"output_dir={tmp / name}", *extra])


def run(method: str, recipe):
    return getattr(janus_ft, method)(recipe)


def losses(result) -> list[float]:
    return [e["loss"] for e in result.log_history if "loss" in e]


@pytest.fixture(scope="module")
def plain(tmp_path_factory, tiny_dir):
    """The reference run of each method: no checkpointing, full precision."""
    tmp = tmp_path_factory.mktemp("plain")
    return {m: (run(m, recipe_of(m, tmp, m)), tmp / m) for m in ("sft", "dpo", "grpo")}


@pytest.mark.parametrize("method", ["sft", "dpo", "grpo"])
def test_gradient_checkpointing_gives_the_plain_run(method, plain, tmp_path):
    reference, reference_dir = plain[method]
    result = run(method, recipe_of(method, tmp_path, "ckpt", "train.gradient_checkpointing=true"))
    assert len(losses(result)) == 2 and losses(result) == pytest.approx(losses(reference), rel=1e-5, abs=1e-7)
    a, b = (load_file(str(d / "adapter_model.safetensors")) for d in (tmp_path / "ckpt", reference_dir))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert result.model.get_base_model().model.language_model.is_gradient_checkpointing


@pytest.mark.parametrize("method", ["sft", "dpo", "grpo"])
def test_4bit_language_model_trains(method, tmp_path):
    bnb = need("bitsandbytes")
    result = run(method, recipe_of(method, tmp_path, "q", "model.quantization=4bit", "lora.targets=[llm]"))
    llm = result.model.get_base_model().model.language_model
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in llm.modules())
    assert len(losses(result)) == 2 and all(math.isfinite(v) for v in losses(result))
    adapter = json.loads((tmp_path / "q" / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "LORA" and (tmp_path / "q" / "adapter_model.safetensors").is_file()
