"""LoRA by Janus component: which modules get adapters, which train fully, and what trains.

Components are named after what they do in Janus (`janus_ft.janus.COMPONENT_PATHS`); the VQ model
is never trained. LoRA targets are written into the adapter config as one regular expression of
full module names, so the adapter loads with plain `peft.PeftModel.from_pretrained`.
"""

from __future__ import annotations

import re

from torch import nn

from ..errors import RecipeError
from ..janus import COMPONENT_PATHS, FULL_EXTRA


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
