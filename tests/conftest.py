"""Shared fixtures: one tiny random Janus per test session, built offline; caches in a temp dir."""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

import pytest
import torch

# The tiny model's matmuls are too small to gain from a second thread; on a shared 2-core machine
# extra threads only contend (measured: a generate test took 8.8 s with one thread, 21 s with two).
# OMP_NUM_THREADS=2 still runs the suite on two threads: the learning tests must pass with either
# reduction order.
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 1))

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "data_templates" / "samples"


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Keep the tiny model, the VQ code cache and the image store of the test session, and the Arrow
    copies `datasets` makes of the sources tests load, out of the user's ~/.cache."""
    import sys

    os.environ["JANUS_FT_CACHE"] = str(tmp_path_factory.mktemp("janus_ft_cache"))
    os.environ["HF_DATASETS_CACHE"] = str(tmp_path_factory.mktemp("hf_datasets_cache"))
    if "datasets" in sys.modules:   # already imported: it read the variable at import
        sys.modules["datasets"].config.HF_DATASETS_CACHE = Path(os.environ["HF_DATASETS_CACHE"])
    yield


@pytest.fixture(scope="session")
def tiny_dir(_isolated_cache):
    from janus_ft.tiny import tiny_path
    return tiny_path()


@pytest.fixture(scope="session")
def tiny_processor(tiny_dir):
    from transformers import JanusProcessor
    return JanusProcessor.from_pretrained(tiny_dir)


@pytest.fixture(scope="session")
def tiny_base(tiny_dir, tiny_processor):
    """(model, processor) shared by read-only inference tests: never train or modify it."""
    from transformers import JanusForConditionalGeneration
    return JanusForConditionalGeneration.from_pretrained(tiny_dir).eval(), tiny_processor


@pytest.fixture()
def tiny_model(tiny_dir):
    from transformers import JanusForConditionalGeneration
    return JanusForConditionalGeneration.from_pretrained(tiny_dir).eval()


def need(module: str):
    """An optional extra (deepspeed, bitsandbytes): skipped where it is not installed, except in CI
    (`CI` set), which installs every extra, so there a missing one fails instead of hiding tests."""
    if os.environ.get("CI"):
        return importlib.import_module(module)
    return pytest.importorskip(module)


def write_jsonl(path: Path, records: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def random_adapter(base_dir, components: list[str], out: Path, seed: int = 0) -> Path:
    """Save a LoRA adapter on `components` with random non-zero weights (a fresh adapter is a
    no-op because lora_B starts at zero, so a test with it could not fail)."""
    from peft import LoraConfig, get_peft_model
    from transformers import JanusForConditionalGeneration

    from janus_ft.model.lora import target_regex

    model = JanusForConditionalGeneration.from_pretrained(base_dir)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8,
                                                  target_modules=target_regex(model, components)))
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.normal_(0, 0.3)
    peft_model.save_pretrained(out)
    return out


def tiny_reward_model(out: Path, seed: int = 0) -> Path:
    """A 2-layer random Llama sequence-classification model (one label) with the tiny Janus
    tokenizer (which has a chat template), saved offline: a reward model as TRL loads one."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from janus_ft.tiny import build_tokenizer

    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id, max_position_embeddings=512,
                         initializer_range=0.5)   # wide: random texts score visibly apart
    LlamaForSequenceClassification(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
