"""QLoRA: bitsandbytes quantizes the language model's Linear layers and nothing else, every LoRA
scope trains on the quantized base, the adapter loads with plain PEFT onto a quantized base, and a
platform without bitsandbytes fails at recipe validation, before any weight loads (bitsandbytes
0.50 runs on CPU, so all of this runs in CI)."""

import re
from pathlib import Path

import pytest
import torch
from conftest import need
from test_lora import mixed_batch
from torch import nn

from janus_ft.cli import main
from janus_ft.errors import RecipeError
from janus_ft.janus import COMPONENT_PATHS
from janus_ft.model.loading import load_model_and_processor, train_in_fp32
from janus_ft.model.lora import apply_lora
from janus_ft.model.loss import compute_loss_parts, core_model
from janus_ft.recipe import LoraArgs, ModelArgs, load_recipe

bnb = need("bitsandbytes")
REPO = Path(__file__).resolve().parent.parent
QUANTIZED = {"4bit": (bnb.nn.Linear4bit, torch.uint8), "8bit": (bnb.nn.Linear8bitLt, torch.int8)}


def load(tiny_dir, quantization):
    return load_model_and_processor(ModelArgs(path=str(tiny_dir), quantization=quantization))


@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
def test_only_the_language_model_is_quantized(tiny_dir, tiny_model, quantization):
    model, _ = load(tiny_dir, quantization)
    kind, storage = QUANTIZED[quantization]
    llm = COMPONENT_PATHS["llm"] + "."
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    quantized = {n for n, m in linears.items() if isinstance(m, kind)}
    assert quantized == {n for n in linears if n.startswith(llm)} and len(quantized) == 14
    for name, module in linears.items():
        if name not in quantized:   # vision, aligners, generation head/aligner, lm_head
            assert type(module) is nn.Linear and module.weight.dtype == torch.float32, name
        else:
            assert module.weight.dtype == storage, name
    assert isinstance(model.model.generation_embeddings, nn.Embedding)
    assert not any(p.requires_grad for p in model.parameters())       # prepared: all frozen
    assert not model.is_activation_checkpointing   # PEFT's default would have switched it on
    if quantization == "4bit":
        # The tiny dims (64x64, 128x64, 64x128) are whole NF4 blocks of 64: no padded block.
        import bitsandbytes.functional as F
        q_proj = model.model.language_model.layers[0].self_attn.q_proj
        state = q_proj.weight.quant_state
        assert (state.quant_type, state.blocksize) == ("nf4", 64) and state.nested   # double quant
        assert q_proj.in_features * q_proj.out_features % state.blocksize == 0
        original = tiny_model.model.language_model.layers[0].self_attn.q_proj.weight
        restored = F.dequantize_4bit(q_proj.weight.data, state)
        assert (restored - original).norm() / original.norm() < 0.15


@pytest.mark.parametrize("targets,full", [
    (["llm", "aligner", "vision", "gen_head", "gen_aligner", "gen_embed"], []),
    (["llm"], ["aligner", "vision", "gen_head", "gen_aligner", "gen_embed"]),
])
def test_every_lora_scope_trains_on_a_4bit_base(tiny_dir, tiny_processor, targets, full):

    model, _ = load(tiny_dir, "4bit")
    peft_model = apply_lora(model, LoraArgs(targets=targets, modules_to_save=full)).train()
    loss = compute_loss_parts(peft_model, mixed_batch(tiny_processor, n_per_task=1)).total
    loss.backward()
    trainable = {n: p for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all(p.dtype == torch.float32 for p in trainable.values())
    assert all(p.grad is not None for p in trainable.values())
    # One of each LoRA pair starts at zero, so the other's gradient is zero at step 0: ask for a
    # non-zero gradient per adapted (or saved) module.
    per_module: dict[str, float] = {}
    for name, param in trainable.items():
        module = re.sub(r"\.lora_(embedding_)?[AB]\b.*|\.modules_to_save\..*", "", name)
        per_module[module] = per_module.get(module, 0.0) + float(param.grad.abs().sum())
    assert all(total > 0 for total in per_module.values()), per_module
    assert {c for c in targets + full if any(f"{COMPONENT_PATHS[c]}." in n for n in trainable)} == set(targets + full)


def sft_recipe(out, quantization, extra=()):
    return load_recipe(REPO / "recipes/demo.yaml", [
        f"model.quantization={quantization}", f"output_dir={out}", "data.val=[]", "train.max_steps=4",
        "train.learning_rate=5e-3", "train.logging_steps=1", "train.save_steps=100", "train.disable_tqdm=true",
        "train.per_device_train_batch_size=4", "train.gradient_accumulation_steps=1", *extra])


@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
def test_sft_trains_and_the_adapter_loads_with_plain_peft(tiny_dir, tiny_processor, tmp_path, quantization):
    from peft import PeftModel
    from transformers import BitsAndBytesConfig, JanusForConditionalGeneration

    import janus_ft

    extra = ["train.gradient_checkpointing=true"] if quantization == "4bit" else []
    result = janus_ft.sft(sft_recipe(tmp_path / "run", quantization, extra))
    losses = [e["loss"] for e in result.log_history if "loss" in e]
    print(f"{quantization} QLoRA losses: {[round(x, 3) for x in losses]}")
    assert losses[-1] < losses[0]
    core = core_model(result.model)
    if extra:   # QLoRA with checkpointing: the Trainer switched it on in both towers
        assert core.model.language_model.layers[0].gradient_checkpointing
        assert core.model.vision_model.encoder.layers[0].gradient_checkpointing

    # plain transformers + bitsandbytes + peft, none of janus_ft's loading code
    skip = ["lm_head", "model.vqmodel", "model.vision_model", "model.aligner", "model.generation_embeddings",
            "model.generation_aligner", "model.generation_head"]
    config = (BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                 bnb_4bit_compute_dtype=torch.float32, llm_int8_skip_modules=skip)
              if quantization == "4bit" else BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip))
    base = JanusForConditionalGeneration.from_pretrained(tiny_dir, quantization_config=config, device_map="cpu")
    batch = mixed_batch(tiny_processor, n_per_task=1)
    with torch.no_grad():
        before = compute_loss_parts(base, batch).total
        loaded = PeftModel.from_pretrained(base, str(result.output_dir)).eval()
        train_in_fp32(result.model)   # TRL trained the adapter in bf16; compare both in fp32
        want = compute_loss_parts(result.model.eval(), batch).total
        got = compute_loss_parts(loaded, batch).total
    assert float(got) == pytest.approx(float(want), rel=1e-4)
    assert float(got) != pytest.approx(float(before), rel=1e-3)


def test_modules_to_save_train_in_fp32_on_a_quantized_base(tiny_dir, tmp_path):
    """TRL's SFTTrainer casts trainable parameters of a quantized model to bf16; a fully trained
    module then fails against fp32 activations on CPU. `train_in_fp32` restores fp32 before the
    optimizer exists, and the saved module trains."""
    from janus_ft.data.collate import JanusCollator
    from janus_ft.data.dataset import build_datasets, read_sources
    from janus_ft.data.mixture import MixtureDataset
    from janus_ft.train.arguments import training_arguments
    from janus_ft.train.sft import SftTrainer

    recipe = sft_recipe(tmp_path / "run", "4bit", ["lora.targets=[llm]", "lora.modules_to_save=[aligner]",
                                                    "data.mix={understanding: 1}", "train.max_steps=3"])
    model, processor = load_model_and_processor(recipe.model)
    records = [r for r in read_sources(recipe.data.train) if r.task == "understanding"]
    datasets = build_datasets(records, model, processor, recipe, "janus-pro")
    model = apply_lora(model, recipe.lora)
    mixture = MixtureDataset(datasets, recipe.data.mix, 4, 3, seed=0)
    trainer = SftTrainer(model=model, args=training_arguments(recipe, 3, False), train_dataset=mixture.as_hf_dataset(),
                           processing_class=processor, data_collator=JanusCollator(processor.tokenizer.pad_token_id))
    train_in_fp32(trainer.model)
    saved = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "modules_to_save" in n}
    assert saved and all(p.dtype == torch.float32 for p in saved.values())
    trainer.train()
    after = dict(trainer.model.named_parameters())
    assert any(not torch.equal(after[n], p) for n, p in saved.items())


def test_quantization_without_bitsandbytes_is_a_recipe_error(monkeypatch, capsys):
    import sys

    import janus_ft.model.loading
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)   # `import bitsandbytes` now fails
    monkeypatch.setattr(janus_ft.model.loading, "load_model_and_processor",
                        lambda *a: pytest.fail("weights loaded before the platform check"))
    code = main(["sft", "--recipe", str(REPO / "recipes/demo.yaml"), "model.quantization=4bit"])
    assert code == 2
    assert "model.quantization=4bit needs bitsandbytes, which cannot be imported" in capsys.readouterr().err


def test_quantization_without_a_backend_for_the_device_is_a_recipe_error(monkeypatch):
    import bitsandbytes.functional

    def no_kernel(*args, **kwargs):
        raise NotImplementedError("no kernel registered for device type 'cpu'")

    from janus_ft.model.loading import check_quantization

    monkeypatch.setattr(bitsandbytes.functional, "int8_vectorwise_quant", no_kernel)
    with pytest.raises(RecipeError, match="has no 8bit backend for device 'cpu'"):
        check_quantization("8bit")
    check_quantization("4bit")   # 4bit's kernel is still there


def test_a_quantized_language_model_cannot_be_trained_fully():
    with pytest.raises(RecipeError, match=r"modules_to_save=\[llm\] cannot train a 4bit language model"):
        load_recipe(REPO / "recipes/demo.yaml", ["model.quantization=4bit", "lora.targets=[aligner]",
                                                  "lora.modules_to_save=[llm]"])
