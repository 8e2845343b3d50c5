"""Model: load a transformers-native Janus and its processor, and scope LoRA by component.

Components are named after what they do in Janus (reference/janus.md section 1); the VQ model
is never trained. LoRA targets are written into the adapter config as one regular expression of
full module names, so the adapter loads with plain `peft.PeftModel.from_pretrained`.
"""

from __future__ import annotations

import os
import re

import torch
from torch import nn

from .errors import RecipeError

# component -> module path prefix inside JanusForConditionalGeneration
COMPONENT_PATHS = {
    "llm": "model.language_model",
    "aligner": "model.aligner",
    "vision": "model.vision_model",
    "gen_head": "model.generation_head",
    "gen_aligner": "model.generation_aligner",
    "gen_embed": "model.generation_embeddings",
}
# Trained fully, the LLM also includes its (untied) output head.
FULL_EXTRA = {"llm": ["lm_head"]}
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_model_path(path: str) -> str:
    if path == "tiny":
        from .tiny import tiny_path
        return str(tiny_path())
    return path


def load_model_and_processor(model_args):
    from transformers import JanusForConditionalGeneration, JanusProcessor

    path = resolve_model_path(model_args.path)
    kwargs = {"dtype": _DTYPES[model_args.dtype]}
    if model_args.attn_implementation:
        kwargs["attn_implementation"] = model_args.attn_implementation
    quantization = quantization_config(model_args)
    if quantization is not None:
        kwargs.update(quantization_config=quantization, device_map={"": _device()})
    try:
        processor = JanusProcessor.from_pretrained(path)
        model = JanusForConditionalGeneration.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as err:
        raise RecipeError(f"model.path: cannot load a Janus checkpoint from {path!r}: {err}") from None
    if quantization is not None:
        model = prepare_kbit(model)
    freeze_vq(model)
    return model, processor


def _device() -> str:
    # One process per GPU under torchrun / accelerate: each rank loads its copy onto its own card.
    return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"


def quantization_skip_modules() -> list[str]:
    """Everything but the language model's decoder stays in the compute dtype: the vision tower,
    aligners, VQ model, generation embeddings/aligner/head and `lm_head` hold ~1.3B of
    Janus-Pro-7B's 7.4B weights (by its architecture sizes), and the two output heads are where
    4-bit rounding would hurt the logits most."""
    return ["lm_head", "model.vqmodel"] + [p for c, p in COMPONENT_PATHS.items() if c != "llm"]


def quantization_config(model_args):
    """`model.quantization` as a transformers `BitsAndBytesConfig` (None for `none`)."""
    from transformers import BitsAndBytesConfig

    skip = quantization_skip_modules()   # a list given here replaces transformers' default skips
    if model_args.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    if model_args.quantization == "4bit":
        # QLoRA's settings: NF4 with double quantization, matmuls in the recipe's dtype.
        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=_DTYPES[model_args.dtype], llm_int8_skip_modules=skip)
    return None


def prepare_kbit(model):
    """PEFT's preparation of a quantized base model for training.

    `use_gradient_checkpointing=False`: PEFT's default would switch checkpointing on behind the
    recipe's back; `train.gradient_checkpointing` decides, and the Trainer applies it.
    PEFT also upcasts every non-quantized bf16/fp16 parameter to fp32. We keep that: the model runs
    in one dtype around its 4/8-bit matmuls (bitsandbytes casts their output back to the input's
    dtype), norms run in fp32, and whatever trains fully (`lora.modules_to_save`) gets fp32 master
    weights, whose small AdamW updates bf16 would round away (see `train_in_fp32` for TRL's cast).
    The price is fp32 copies of the frozen unquantized modules (about +2.7 GB for Janus-Pro-7B);
    under bf16 autocast on a GPU their matmuls still run in bf16.
    """
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def train_in_fp32(model) -> None:
    """Trainable parameters back to fp32, after TRL's `SFTTrainer.__init__` and before `train()`
    builds the optimizer.

    On a quantized model TRL casts every trainable parameter to bf16 (its reading of the QLoRA
    paper), `lora.modules_to_save` included. A fully trained module then meets fp32 activations
    wherever no autocast runs (CPU, fp32 recipes) and the forward fails ("mat1 and mat2 must have
    the same dtype"), and bf16 master weights round small AdamW updates away (why TRL already
    exempts DoRA's magnitude). LoRA and saved modules are small: fp32 costs little.
    """
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()


def check_quantization(quantization: str) -> None:
    """Fail before any weight loads where bitsandbytes cannot quantize on this machine.

    Called from recipe validation. bitsandbytes imports even where it has no kernel for the
    device, so a tiny quantization on the training device is the proof that the backend is there.
    """
    if quantization == "none":
        return
    where = f"model.quantization={quantization}"
    try:
        import bitsandbytes as bnb
        import bitsandbytes.functional as bnb_functional
    except Exception as err:   # not installed, or its native library fails to load
        raise RecipeError(f"{where} needs bitsandbytes, which cannot be imported here ({err}); "
                          "`pip install bitsandbytes`, or set model.quantization=none") from None
    device = _device()
    try:
        probe = torch.randn(64, 64, device=device)
        if quantization == "4bit":
            bnb_functional.quantize_4bit(probe, blocksize=64, quant_type="nf4")
        else:
            bnb_functional.int8_vectorwise_quant(probe.half())
    except Exception as err:   # no kernel registered for this device type
        raise RecipeError(f"{where}: bitsandbytes {bnb.__version__} has no {quantization} backend for "
                          f"device '{device}' ({type(err).__name__}: {err}); set model.quantization=none") from None


def freeze_vq(model) -> None:
    """The VQ tokenizer is frozen in every Janus training stage."""
    vq = model.model.vqmodel
    vq.requires_grad_(False)
    vq.eval()


def _leaf_names(model, prefix: str) -> list[str]:
    """The Linear layers of a component (the usual LoRA scope: no token/patch/position embeddings),
    or the component itself when it is an embedding table (`gen_embed`)."""
    root = model.get_submodule(prefix)
    if isinstance(root, (nn.Linear, nn.Embedding)):
        return [prefix]
    return [f"{prefix}.{name}" for name, mod in root.named_modules()
            if name and isinstance(mod, nn.Linear)]


def target_regex(model, components: list[str]) -> str | None:
    """One anchored regex matching exactly the LoRA-able leaf modules of the named components.

    Layer indices are generalised to `\\d+`, so the expression stays short for a 30-layer model.
    """
    patterns: list[str] = []
    for comp in components:
        for name in _leaf_names(model, COMPONENT_PATHS[comp]):
            pat = re.sub(r"\\\.(\d+)(?=\\\.|$)", r"\\.\\d+", re.escape(name))
            if pat not in patterns:
                patterns.append(pat)
    return "^(?:" + "|".join(patterns) + ")$" if patterns else None


def modules_to_save(components: list[str]) -> list[str]:
    out: list[str] = []
    for comp in components:
        out += [COMPONENT_PATHS[comp]] + FULL_EXTRA.get(comp, [])
    return out


def lora_config(model, lora_args):
    from peft import LoraConfig

    extra = dict(lora_args.extra)
    targets = target_regex(model, lora_args.targets)
    return LoraConfig(
        r=lora_args.r, lora_alpha=lora_args.alpha, lora_dropout=lora_args.dropout,
        target_modules=targets if targets else [], modules_to_save=modules_to_save(lora_args.modules_to_save) or None,
        **extra)


def apply_lora(model, lora_args):
    from peft import get_peft_model

    try:
        return get_peft_model(model, lora_config(model, lora_args))
    except (TypeError, ValueError) as err:
        raise RecipeError(f"lora: {err}") from None


def component_of(param_name: str) -> str:
    """Which Janus component a (possibly PEFT-prefixed) parameter belongs to."""
    name = re.sub(r"^base_model\.model\.", "", param_name)
    for comp, prefix in COMPONENT_PATHS.items():
        if name.startswith(prefix + ".") or name == prefix or f".{prefix}." in f".{name}":
            return comp
    if name.startswith("lm_head"):
        return "lm_head"
    if name.startswith("model.vqmodel"):
        return "vq"
    return "other"


def trainable_table(model) -> str:
    """Trainable / total parameters per component, printed at the start of training."""
    rows: dict[str, list[int]] = {}
    for name, p in model.named_parameters():
        row = rows.setdefault(component_of(name), [0, 0])
        row[1] += p.numel()
        if p.requires_grad:
            row[0] += p.numel()
    lines = [f"{'component':<12} {'trainable':>12} {'total':>14}"]
    for comp, (tr, tot) in rows.items():
        lines.append(f"{comp:<12} {tr:>12,} {tot:>14,}")
    tr, tot = sum(r[0] for r in rows.values()), sum(r[1] for r in rows.values())
    lines.append(f"{'all':<12} {tr:>12,} {tot:>14,}  ({100 * tr / max(tot, 1):.3f}% trainable)")
    return "\n".join(lines)
