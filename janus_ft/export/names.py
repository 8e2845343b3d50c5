"""Tensor names and shapes of DeepSeek's original Janus layout vs transformers' layout.

Pure mapping, no file I/O: `janus_ft.export.convert` streams the tensors. The rules follow the
name mapping in docs/janus.md and are written once, as name templates read in both directions,
so `--from deepseek` and `--to deepseek` cannot drift apart.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from ..errors import UserError

# Written by `--to deepseek` (see janus_ft.export.convert's docstring for why).
CODEBOOK_USED = "gen_vision_model.quantize.codebook_used"
CODEBOOK_USED_SIZE = 65536

# Placeholder -> (regex in DeepSeek names, regex in transformers names).
_SLOTS = {
    "n": (r"\d+", r"\d+"),
    "i": (r"[12]", r"[12]"),
    "p": (r"weight|bias", r"weight|bias"),
    "rest": (r".+", r".+"),
    "qkv": (None, r"q|k|v"),                    # one fused DeepSeek tensor = three transformers ones
    "mlp": (r"\d+", r"fc1|hidden_layers\.\d+"),  # nn.Sequential(Linear, GELU, Linear, ...) indices
    "vq": (r".+", r".+"),
}
# VQ module names: DeepSeek's ModuleLists vs transformers' named blocks (dotted, to match whole names).
_VQ_NAMES = [(".encoder.conv_blocks.", ".encoder.down."), (".decoder.conv_blocks.", ".decoder.up."),
             (".res.", ".block."), (".mid.0.", ".mid.block_1."), (".mid.1.", ".mid.attn_1."),
             (".mid.2.", ".mid.block_2.")]

_T, _V = "vision_model.vision_tower.", "model.vision_model."
# (DeepSeek template, transformers template or None when dropped, tensor transform)
_RULES = [
    ("language_model.model.{rest}", "model.language_model.{rest}", "copy"),
    ("language_model.lm_head.weight", "lm_head.weight", "copy"),
    (_T + "pos_embed", _V + "embeddings.position_embedding.weight", "pos"),  # 1xNxD <-> NxD
    (_T + "patch_embed.proj.{p}", _V + "embeddings.patch_embedding.{p}", "copy"),
    (_T + "norm.{p}", _V + "post_layernorm.{p}", "copy"),
    (_T + "blocks.{n}.norm{i}.{p}", _V + "encoder.layers.{n}.layer_norm{i}.{p}", "copy"),
    (_T + "blocks.{n}.attn.qkv.{p}", _V + "encoder.layers.{n}.self_attn.{qkv}_proj.{p}", "qkv"),
    (_T + "blocks.{n}.attn.proj.{p}", _V + "encoder.layers.{n}.self_attn.projection_layer.{p}", "copy"),
    (_T + "blocks.{n}.mlp.fc{i}.{p}", _V + "encoder.layers.{n}.mlp.fc{i}.{p}", "copy"),
    (_T + "attn_pool.{rest}", None, "drop"),
    ("aligner.layers.{mlp}.{p}", "model.aligner.{mlp}.{p}", "copy"),
    ("gen_aligner.layers.{mlp}.{p}", "model.generation_aligner.{mlp}.{p}", "copy"),
    ("gen_head.output_mlp_projector.{p}", "model.generation_head.proj_out.{p}", "copy"),
    ("gen_head.vision_head.{p}", "model.generation_head.vision_head.{p}", "copy"),
    ("gen_embed.weight", "model.generation_embeddings.weight", "copy"),
    (CODEBOOK_USED, None, "drop"),
    ("gen_vision_model.{vq}", "model.vqmodel.{vq}", "copy"),
]


def _regex(template: str, side: int) -> re.Pattern:
    pieces = re.split(r"\{(\w+)\}", template)
    return re.compile("".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>{_SLOTS[p][side]})"
                              for i, p in enumerate(pieces)))


_COMPILED = [(_regex(ds, 0), ds, nat and _regex(nat, 1), nat, kind) for ds, nat, kind in _RULES]


def _rename(value: str, pairs) -> str:
    value = f".{value}."
    for old, new in pairs:
        value = value.replace(old, new)
    return value[1:-1]


def _slot_to_native(slot: str, value: str) -> str | None:
    if slot == "mlp":  # odd indices are the parameter-free GELUs
        k = int(value)
        return None if k % 2 else ("fc1" if k == 0 else f"hidden_layers.{k // 2 - 1}")
    return _rename(value, _VQ_NAMES) if slot == "vq" else value


def _slot_to_deepseek(slot: str, value: str) -> str:
    if slot == "mlp":
        return "0" if value == "fc1" else str(2 * (int(value.split(".")[1]) + 1))
    return _rename(value, [(b, a) for a, b in _VQ_NAMES]) if slot == "vq" else value


def to_native(key: str) -> tuple[list[str], str] | None:
    """transformers names of a DeepSeek tensor and the transform: ([], "drop") for tensors the
    native model does not have, None for a name no rule knows."""
    for ds_re, _, _, nat, kind in _COMPILED:
        match = ds_re.fullmatch(key)
        if not match:
            continue
        if nat is None:
            return [], "drop"
        values = {slot: _slot_to_native(slot, v) for slot, v in match.groupdict().items()}
        if None in values.values():
            return None
        if kind == "qkv":
            return [nat.format(qkv=x, **values) for x in "qkv"], "split"
        return [nat.format(**values)], "squeeze" if kind == "pos" else "copy"
    return None


def to_deepseek(name: str) -> tuple[str, int | None, str] | None:
    """DeepSeek name of a transformers tensor, its row-block index in a fused qkv (else None), and
    the transform; None for a name no rule knows."""
    for _, ds, nat_re, _, kind in _COMPILED:
        match = nat_re and nat_re.fullmatch(name)
        if not match:
            continue
        groups = match.groupdict()
        values = {slot: _slot_to_deepseek(slot, v) for slot, v in groups.items() if slot != "qkv"}
        part = "qkv".index(groups["qkv"]) if kind == "qkv" else None
        return ds.format(**values), part, {"qkv": "part", "pos": "unsqueeze"}.get(kind, "copy")
    return None


# --------------------------------------------------------------------------- plans

@dataclass(frozen=True)
class Step:
    """What to do with one input tensor: copy (to every target), squeeze/unsqueeze dim 0,
    split rows in len(targets) blocks, or be row block `index` of the fused tensor targets[0]."""

    kind: str
    targets: tuple[str, ...]
    index: int = 0


def apply_step(step: Step, tensor: torch.Tensor, parts: dict, meter):
    """Yield (name, tensor) outputs of one step. `parts` keeps fused pieces across calls."""
    if step.kind == "copy":
        yield from ((name, tensor) for name in step.targets)
    elif step.kind == "squeeze":
        yield step.targets[0], tensor.squeeze(0)
    elif step.kind == "unsqueeze":
        yield step.targets[0], tensor.unsqueeze(0)
    elif step.kind == "split":
        # Cloned: safetensors will not save three views of one storage.
        yield from zip(step.targets, (c.clone() for c in tensor.chunk(len(step.targets), dim=0)))
    elif step.kind == "part":
        group = parts.setdefault(step.targets[0], [None, None, None])
        group[step.index] = tensor
        meter.hold(tensor)
        if all(t is not None for t in group):
            fused = torch.cat(parts.pop(step.targets[0]), dim=0)
            for piece in group:
                meter.release(piece)
            yield step.targets[0], fused
    else:
        raise ValueError(f"unknown step kind {step.kind!r}")


def native_shapes(config) -> dict[str, tuple[int, ...]]:
    """Every tensor `JanusForConditionalGeneration(config)` saves, with its shape (meta device:
    no memory, well under a second even for 7B)."""
    from transformers import JanusForConditionalGeneration

    with torch.device("meta"):
        model = JanusForConditionalGeneration(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _raise_problems(problems: list[str], what: str) -> None:
    if problems:
        shown = "\n  ".join(problems[:12])
        more = f"\n  ... and {len(problems) - 12} more" if len(problems) > 12 else ""
        raise UserError(f"{what} does not match its config.json:\n  {shown}{more}")


def _converted_shape(kind: str, shape: tuple[int, ...], count: int):
    if kind == "squeeze":
        return [shape[1:]] if len(shape) == 3 and shape[0] == 1 else None
    if kind == "split":
        return [(shape[0] // 3,) + shape[1:]] * 3 if shape and shape[0] % 3 == 0 else None
    return [shape] * count


def plan_from_deepseek(shapes: dict[str, tuple[int, ...]], config) -> dict[str, list[Step]]:
    """Steps for every DeepSeek tensor; UserError naming every unexpected, missing or misshapen one."""
    expected, produced, problems, plan = native_shapes(config), {}, [], {}
    for key, shape in shapes.items():
        rule = to_native(key)
        if rule is None or any(name not in expected for name in rule[0]):
            problems.append(f"unexpected tensor '{key}'")
            continue
        names, kind = rule
        got = _converted_shape(kind, shape, len(names))
        want = [expected[name] for name in names]
        if names and got != want:
            problems.append(f"tensor '{key}' has shape {list(shape)}, the config implies "
                            f"{' + '.join(str(list(w)) for w in want)}")
        produced.update(dict.fromkeys(names, key))
        plan[key] = [Step(kind, tuple(names))] if names else []
    missing = dict.fromkeys(to_deepseek(n)[0] for n in expected if n not in produced)
    problems += [f"missing tensor '{key}'" for key in missing]
    _raise_problems(problems, "DeepSeek checkpoint")
    return plan


def plan_to_deepseek(shapes: dict[str, tuple[int, ...]], config) -> dict[str, list[Step]]:
    """Steps for every transformers tensor; UserError naming every unexpected, missing or misshapen one."""
    expected = native_shapes(config)
    # Tied: transformers uses the input embedding as LM head (and may not save lm_head at all);
    # DeepSeek's model has its own head, so it gets a copy of the embedding.
    tied = bool(getattr(config, "tie_word_embeddings", False))
    embed = "model.language_model.embed_tokens.weight"
    problems = [f"unexpected tensor '{k}'" for k in shapes if k not in expected]
    problems += [f"tensor '{k}' has shape {list(s)}, the config implies {list(expected[k])}"
                 for k, s in shapes.items() if k in expected and expected[k] != s]
    problems += [f"missing tensor '{k}'" for k in expected
                 if k not in shapes and not (tied and k == "lm_head.weight")]
    _raise_problems(problems, "transformers checkpoint")
    plan = {}
    for key in shapes:
        mapped = to_deepseek(key)
        if mapped is None:  # a transformers name this module does not know: our bug, not the user's
            raise RuntimeError(f"no DeepSeek name for transformers tensor '{key}'")
        name, part, kind = mapped
        extra = ("language_model.lm_head.weight",) if tied and key == embed else ()
        plan[key] = [] if tied and key == "lm_head.weight" else [Step(kind, (name, *extra), part or 0)]
    return plan
