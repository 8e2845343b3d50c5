"""Random Janus checkpoints of a real model's size (`--random-model`), written one decoder layer at a
time: a Janus-Pro-7B-sized model is 15 GB in bf16, more than a shared CPU machine can hold at once,
and a quantized benchmark must never need it whole (from_pretrained quantizes shard by shard)."""

from __future__ import annotations

import copy
import gc
import json
import os
from pathlib import Path

import torch

LAYERS = "model.language_model.layers."


def random_model_path(preset: str) -> Path:
    """A random Janus of a real model's size, written once (bf16) under $JANUS_FT_CACHE."""
    from ..files import cache_root, publish
    from ..tiny import build_processor, build_tokenizer, sized_config

    target = cache_root() / f"random-{preset}"
    if (target / "janus_ft_random.json").exists():
        return target
    tokenizer = build_tokenizer("janus-pro")
    config = sized_config(tokenizer, preset)
    staged = target.with_name(f".{target.name}-{os.getpid()}")   # renamed in when complete
    write_random_model(staged, config, tokenizer)
    build_processor(tokenizer, image_size=config.vision_config.image_size).save_pretrained(staged)
    (staged / "janus_ft_random.json").write_text(json.dumps({"preset": preset}) + "\n")
    publish(staged, target, keep_existing=True)
    return target


def write_random_model(out: Path, config, tokenizer, seed: int = 0) -> None:
    """Save a randomly initialised `JanusForConditionalGeneration` of `config` (bf16) as a sharded
    checkpoint: everything but the decoder layers, initialised by transformers, in one shard, then
    one shard per decoder layer, each a fresh draw of transformers' initialisation of a layer
    (weights N(0, initializer_range), norms 1). Peak memory: the model with one decoder layer."""
    from safetensors import safe_open
    from safetensors.torch import save_file
    from transformers import JanusForConditionalGeneration

    from ..janus import generation_config

    one_layer = copy.deepcopy(config)
    one_layer.text_config.num_hidden_layers = 1
    torch.manual_seed(seed)
    # Initialised where it will train: on a GPU the random draws take seconds, on a CPU minutes.
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = JanusForConditionalGeneration._from_config(one_layer, dtype=torch.bfloat16)
    model.generation_config = generation_config(tokenizer)
    model.config = config   # the checkpoint says how many layers the shards hold
    model.save_pretrained(out, max_shard_size="1000GB")   # one file, with the one layer as layers.0
    (out / "model.safetensors").rename(out / "model-rest.safetensors")
    with safe_open(out / "model-rest.safetensors", "pt") as saved:
        weight_map = dict.fromkeys(saved.keys(), "model-rest.safetensors")
    state = model.state_dict()
    size = sum(v.nbytes for k, v in state.items() if k in weight_map)
    template = {k[len(LAYERS) + 2:]: v for k, v in state.items() if k.startswith(LAYERS + "0.")}
    std = config.text_config.initializer_range
    for i in range(1, config.text_config.num_hidden_layers):
        layer = {f"{LAYERS}{i}.{k}": (torch.empty_like(v).normal_(0, std) if v.dim() == 2 else v.clone()).cpu()
                 for k, v in template.items()}
        name = f"model-layer-{i:03d}.safetensors"
        save_file(layer, out / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(layer, name))
        size += sum(v.nbytes for v in layer.values())
        del layer
    index = {"metadata": {"total_size": size}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=1) + "\n")
    del model, state, template
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
