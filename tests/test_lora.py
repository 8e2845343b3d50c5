"""LoRA scope by component: exactly the named components train, everything else is frozen; gradient
checkpointing recomputes and differentiates only what trains and leaves every gradient unchanged."""

import re
from pathlib import Path

import pytest
import torch
from peft import PeftModel

from janus_ft.janus import COMPONENT_PATHS
from janus_ft.model.lora import apply_lora, trainable_table
from janus_ft.model.loss import compute_loss_parts, core_model
from janus_ft.recipe import LoraArgs, load_recipe
from janus_ft.train.arguments import training_arguments

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


def random_lora(tiny_dir, targets=tuple(COMPONENT_PATHS)):
    """LoRA on `targets` with random non-zero weights (lora_B starts at zero, which would leave
    every lora_A gradient zero and the comparisons below vacuous); no dropout."""
    from transformers import JanusForConditionalGeneration

    model = apply_lora(JanusForConditionalGeneration.from_pretrained(tiny_dir),
                       LoraArgs(targets=list(targets), dropout=0.0))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.normal_(0, 0.1)
    return model.train()


def _tensors(output) -> list:
    values = output.values() if isinstance(output, dict) else output if isinstance(output, (tuple, list)) else [output]
    return [t for t in values if isinstance(t, torch.Tensor)]


def step_gradients(model, batch, watched, input_grad=True) -> tuple[dict, list[tuple[int, int, int]]]:
    """Per-parameter gradients of one backward and, for each watched module, (calls in the forward,
    calls in the backward, gradients that reached its outputs in the backward). A checkpointed
    module runs again in the backward; a module autograd differentiates receives gradients."""
    calls, grads_in = [0] * len(watched), [0] * len(watched)

    def count_grad(i):
        def hook(grad):
            grads_in[i] += 1
        return hook

    def watch_outputs(i):
        def hook(module, args, output):
            for t in _tensors(output):
                if t.requires_grad:
                    t.register_hook(count_grad(i))
        return hook

    # a pre-hook: torch's non-reentrant recompute stops early, as soon as the tensors it needs
    # are back, so a module's forward (post-)hook may never run during the backward
    handles = [h for i, m in enumerate(watched) for h in (
        m.register_forward_pre_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1)),
        m.register_forward_hook(watch_outputs(i)))]
    model.zero_grad(set_to_none=True)
    loss = compute_loss_parts(model, batch, input_grad=input_grad).total
    after_forward = list(calls)
    loss.backward()
    for h in handles:
        h.remove()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return grads, [(f, c - f, g) for f, c, g in zip(after_forward, calls, grads_in)]


def checkpoint_like_the_trainer(model, recipe_overrides, tmp_path, reentrant: bool) -> None:
    """Gradient checkpointing switched on with the arguments training_arguments gives the Trainer, the way
    the Trainer does it, plus TRL's input hook for PEFT models."""
    recipe = load_recipe(REPO / "recipes/demo.yaml", ["train.gradient_checkpointing=true", f"output_dir={tmp_path}",
                                                      *recipe_overrides])
    config = training_arguments(recipe, max_steps=1, has_eval=False)
    assert config.activation_checkpointing and config.activation_checkpointing_kwargs == {"use_reentrant": False}
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": reentrant})
    model.enable_input_require_grads()


def assert_same_gradients(checkpointed: dict, plain: dict, model) -> None:
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(plain) == set(checkpointed) == trainable   # every trainable weight gets a gradient
    for name, grad in plain.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("targets", [["llm", "vision"], list(COMPONENT_PATHS)])
def test_checkpointing_recomputes_a_training_vision_tower_with_equal_gradients(tiny_dir, tiny_processor, tmp_path,
                                                                               targets):
    """LoRA in SigLIP (with the aligner frozen, or everything training): both towers are recomputed
    and every gradient equals the one without checkpointing."""
    model, batch = random_lora(tiny_dir, targets), mixed_batch(tiny_processor)
    core = core_model(model)
    watched = [core.model.language_model.layers[0].mlp, core.model.vision_model.encoder.layers[0].mlp]

    plain, plain_calls = step_gradients(model, batch, watched)
    checkpoint_like_the_trainer(model, [], tmp_path, reentrant=False)
    checkpointed, gc_calls = step_gradients(model, batch, watched, input_grad=False)

    assert [c[:2] for c in plain_calls] == [(1, 0), (1, 0)]
    assert [c[:2] for c in gc_calls] == [(1, 1), (1, 1)]   # LLM decoder layer and SigLIP layer both recomputed
    assert all(layer.gradient_checkpointing for layer in (*core.model.language_model.layers,
                                                          *core.model.vision_model.encoder.layers))
    assert any(".vision_model." in n and "lora_" in n for n in plain)
    assert_same_gradients(checkpointed, plain, model)


@pytest.mark.parametrize("reentrant", [False, True])
def test_checkpointing_runs_no_kernel_of_a_frozen_vision_tower(tiny_dir, tiny_processor, tmp_path, reentrant):
    """SigLIP frozen (LoRA on the LLM, aligner and generation aligner): with checkpointing on, the
    backward neither recomputes nor differentiates any SigLIP module, and every gradient equals
    the run without checkpointing -- with the non-reentrant checkpointing janus_ft asks for, and
    the reentrant one TRL switches PEFT + ZeRO-3 runs to."""
    model, batch = random_lora(tiny_dir, ["llm", "aligner", "gen_aligner"]), mixed_batch(tiny_processor)
    core = core_model(model)
    vision = list(core.model.vision_model.modules())
    llm = core.model.language_model
    watched = [llm.layers[0].mlp, core.model.aligner, llm.embed_tokens, *vision]

    plain, plain_calls = step_gradients(model, batch, watched)
    checkpoint_like_the_trainer(model, [], tmp_path, reentrant=reentrant)
    checkpointed, gc_calls = step_gradients(model, batch, watched, input_grad=reentrant)

    llm_layer, aligner, text_embeddings, *tower = gc_calls
    assert llm_layer[:2] == (1, 1) and llm_layer[2] > 0           # the LLM is recomputed and differentiated
    assert aligner == (1, 0, 1) == plain_calls[1]                 # the aligner trains on features without a graph
    # the frozen token embeddings get a gradient only where reentrant checkpointing needs one
    assert text_embeddings[:2] == (1, 0) and (text_embeddings[2] > 0) == reentrant and plain_calls[2] == (1, 0, 0)
    # SigLIP: the same modules as without checkpointing run once in the forward, none in the backward
    assert [c[0] for c in tower] == [c[0] for c in plain_calls[3:]] and sum(c[0] for c in tower) > len(tower) / 2
    assert all(c[1:] == (0, 0) for c in tower + plain_calls[3:])
    assert_same_gradients(checkpointed, plain, model)


def test_checkpointing_runs_no_kernel_of_a_frozen_llm_under_a_training_head(tiny_dir, tiny_processor, tmp_path):
    """Only the generation head trains (nothing at or below the LLM): with checkpointing on, the
    LLM is neither recomputed nor differentiated -- the input hook's gradient is dropped -- and the
    head's gradients equal the run without checkpointing."""
    model, batch = random_lora(tiny_dir, ["gen_head"]), mixed_batch(tiny_processor)
    llm = core_model(model).model.language_model
    watched = [llm.layers[0].mlp, llm.layers[-1].mlp, llm.embed_tokens]

    plain, plain_calls = step_gradients(model, batch, watched)
    checkpoint_like_the_trainer(model, [], tmp_path, reentrant=True)   # even where inputs would need a gradient
    checkpointed, gc_calls = step_gradients(model, batch, watched, input_grad=True)

    assert gc_calls == plain_calls == [(1, 0, 0)] * 3
    assert all(".generation_head." in n for n in plain)
    assert_same_gradients(checkpointed, plain, model)


def test_frozen_paths_build_no_graph(tiny_dir, tiny_processor):
    """Without checkpointing as well: a frozen SigLIP, generation embedding table or generation
    aligner produces outputs that carry no autograd graph; a trained one does."""
    model, batch = random_lora(tiny_dir, ["llm", "gen_aligner"]), mixed_batch(tiny_processor)
    core = core_model(model)
    m = core.model
    watched = [m.vision_model.embeddings, m.vision_model.encoder.layers[-1], m.aligner, m.generation_embeddings,
               m.generation_aligner, m.language_model.layers[0]]
    graphs = []
    hooks = [w.register_forward_hook(lambda mod, args, out: graphs.append(any(t.requires_grad for t in _tensors(out))))
             for w in watched]
    compute_loss_parts(model, batch)
    for h in hooks:
        h.remove()
    # SigLIP embeddings and last layer, aligner, generation table: frozen; generation aligner, LLM: LoRA
    assert graphs == [False, False, False, False, True, True]
