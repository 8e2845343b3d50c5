"""Model: load a transformers-native Janus and its processor, and scope LoRA by component.

Components are named after what they do in Janus (reference/janus.md section 1); the VQ model
is never trained. LoRA targets are written into the adapter config as one regular expression of
full module names, so the adapter loads with plain `peft.PeftModel.from_pretrained`.
"""

from __future__ import annotations

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


def load_model_and_processor(model_args, quantization_config=None):
    from transformers import JanusForConditionalGeneration, JanusProcessor

    path = resolve_model_path(model_args.path)
    kwargs = {"dtype": _DTYPES[model_args.dtype]}
    if model_args.attn_implementation:
        kwargs["attn_implementation"] = model_args.attn_implementation
    if quantization_config is not None:
        kwargs.update(quantization_config=quantization_config, device_map={"": _device()})
    try:
        processor = JanusProcessor.from_pretrained(path)
        model = JanusForConditionalGeneration.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as err:
        raise RecipeError(f"model.path: cannot load a Janus checkpoint from {path!r}: {err}") from None
    freeze_vq(model)
    return model, processor


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


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
