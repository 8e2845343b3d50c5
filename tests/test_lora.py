"""LoRA scope by component: exactly the named components train, everything else is frozen; gradient
checkpointing recomputes both towers and leaves every gradient unchanged."""

import re
from pathlib import Path

import pytest
import torch
from peft import PeftModel

from janus_ft.janus import COMPONENT_PATHS
from janus_ft.model.lora import apply_lora, trainable_table
from janus_ft.model.loss import compute_loss_parts, core_model
from janus_ft.recipe import LoraArgs, load_recipe
from janus_ft.train.sft import sft_config

REPO = Path(__file__).resolve().parent.parent


def expected_lora(model, components):
    """Independent reference: Linear layers under each component (the embedding table for gen_embed)."""
    import torch.nn as nn
    names = set()
    for comp in components:
        prefix = COMPONENT_PATHS[comp]
        for name, mod in model.named_modules():
            if (name == prefix or name.startswith(prefix + ".")) and isinstance(mod, (nn.Linear, nn.Embedding)):
                if isinstance(mod, nn.Embedding) and name != prefix:
                    continue
                names.add(name)
    return names


@pytest.mark.parametrize("targets,full", [
    (["llm", "aligner"], []),
    (["vision"], []),
    (["gen_head", "gen_aligner", "gen_embed"], []),
    (["llm"], ["gen_head"]),
    (["llm", "aligner", "vision", "gen_head", "gen_aligner", "gen_embed"], []),
    (["aligner"], ["vision"]),
])
def test_trainable_parameters_are_exactly_the_selection(tiny_model, targets, full):
    want_lora = expected_lora(tiny_model, targets)
    peft_model = apply_lora(tiny_model, LoraArgs(targets=targets, modules_to_save=full))
    assert isinstance(peft_model, PeftModel)
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    lora_modules = {re.sub(r"^base_model\.model\.|\.lora_\w+\.default(\.weight)?$", "", n)
                    for n in trainable if ".lora_" in n}
    assert lora_modules == want_lora
    full_params = {n for n in trainable if ".lora_" not in n}
    assert all(".modules_to_save.default." in n for n in full_params)
    assert {next(c for c in full if f".{COMPONENT_PATHS[c]}.modules_to_save" in n) for n in full_params} == set(full)
    assert not any("vqmodel" in n for n in trainable)
    table = trainable_table(peft_model)
    assert "vq" in table and "all" in table


# --- gradient checkpointing -------------------------------------------------------------------

def mixed_batch(processor, n_per_task: int = 2) -> dict:
    """Understanding (with images), text and generation samples from the bundled data, padded."""
    from janus_ft.data.collate import collate
    from janus_ft.data.dataset import JanusDataset, load_records

    samples_dir = Path(__file__).resolve().parent.parent / "data_templates" / "samples"
    records = []
    for name in ("understanding", "text", "generation"):
        records += load_records([samples_dir / f"{name}.jsonl"])[:n_per_task]
    n = processor.num_image_tokens
    codes = {str(r.images[0]): [(37 * i + k) % 256 for i in range(n)]
             for k, r in enumerate(records) if r.task == "generation"}
    ds = JanusDataset(records, processor, "janus-pro", codes=codes)
    return collate([ds[i] for i in range(len(ds))], processor.tokenizer.pad_token_id)


def lora_everywhere(tiny_dir):
    """LoRA on every component with random non-zero weights (lora_B starts at zero, which would
    leave every lora_A gradient zero and the comparison below vacuous); no dropout."""
    from transformers import JanusForConditionalGeneration

    model = apply_lora(JanusForConditionalGeneration.from_pretrained(tiny_dir),
                       LoraArgs(targets=list(COMPONENT_PATHS), dropout=0.0))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.normal_(0, 0.1)
    return model.train()


def step_gradients(model, batch, watched) -> tuple[dict, list[tuple[int, int]]]:
    """Per-parameter gradients of one backward, and how often each watched module ran in the
    forward and in the backward (a checkpointed layer runs again in the backward)."""
    calls = [0] * len(watched)
    # a pre-hook: torch's non-reentrant recompute stops early, as soon as the tensors it needs
    # are back, so a module's forward (post-)hook may never run during the backward
    handles = [m.register_forward_pre_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
               for i, m in enumerate(watched)]
    model.zero_grad(set_to_none=True)
    loss = compute_loss_parts(model, batch).total
    after_forward = list(calls)
    loss.backward()
    for h in handles:
        h.remove()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return grads, [(f, c - f) for f, c in zip(after_forward, calls)]


def test_gradient_checkpointing_recomputes_both_towers_with_equal_gradients(tiny_dir, tiny_processor, tmp_path):
    recipe = load_recipe(REPO / "recipes/demo.yaml", ["train.gradient_checkpointing=true", f"output_dir={tmp_path}"])
    config = sft_config(recipe, max_steps=1, has_eval=False)
    assert config.activation_checkpointing and config.activation_checkpointing_kwargs == {"use_reentrant": False}
    model, batch = lora_everywhere(tiny_dir), mixed_batch(tiny_processor)
    core = core_model(model)
    watched = [core.model.language_model.layers[0].mlp, core.model.vision_model.encoder.layers[0].mlp]

    plain, plain_calls = step_gradients(model, batch, watched)
    # what the Trainer does with these arguments (and TRL's input hook for PEFT models)
    model.activation_checkpointing_enable(activation_checkpointing_kwargs=config.activation_checkpointing_kwargs)
    model.enable_input_require_grads()
    checkpointed, gc_calls = step_gradients(model, batch, watched)

    assert plain_calls == [(1, 0), (1, 0)]
    assert gc_calls == [(1, 1), (1, 1)]          # LLM decoder layer and SigLIP layer both recomputed
    assert all(layer.gradient_checkpointing for layer in (*core.model.language_model.layers,
                                                          *core.model.vision_model.encoder.layers))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(plain) == set(checkpointed) == trainable   # every LoRA weight, both towers, gets a gradient
    assert any(".vision_model." in n for n in plain) and any("generation_embeddings" in n for n in plain)
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-5, atol=1e-5, msg=name)

