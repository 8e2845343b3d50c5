"""config.json of DeepSeek's original Janus layout vs transformers' `JanusConfig`, both directions.

Pure mapping, no file I/O (`janus_ft.export.convert` reads and writes). The original config names
fixed architectures (SigLIP presets by `model_name`, `VQ-16`); other sizes travel as extra `params`.
"""

from __future__ import annotations

import torch

from ..errors import UserError

# DeepSeek's SigLIP presets, chosen by `vision_config.params.model_name` (sizes are not in config.json).
_SIGLIP = {
    "siglip_large_patch16_384": {"width": 1024, "layers": 24, "heads": 16, "patch_size": 16, "mlp_ratio": 4.0},
    "siglip_so400m_patch14_384": {"width": 1152, "layers": 27, "heads": 16, "patch_size": 14, "mlp_ratio": 3.7362},
    "siglip_so400m_patch14_224": {"width": 1152, "layers": 27, "heads": 16, "patch_size": 14, "mlp_ratio": 3.7362},
}
_DEFAULT_SIGLIP = "siglip_large_patch16_384"
# DeepSeek's `VQ-16`: built with fixed sizes whatever config.json says.
_VQ16 = {"ch": 128, "encoder_ch_mult": [1, 1, 2, 2, 4], "decoder_ch_mult": [1, 1, 2, 2, 4],
         "z_channels": 256, "num_res_blocks": 2, "image_token_size": 16384, "n_embed": 8}
_CLASSES = {"vision_config": "CLIPVisionTower", "aligner_config": "MlpProjector", "gen_vision_config": "VQ-16",
            "gen_aligner_config": "MlpProjector", "gen_head_config": "vision_head"}
_MODEL_TYPES = {"vision_config": "vision", "aligner_config": "aligner", "gen_vision_config": "gen_vision",
                "gen_aligner_config": "gen_aligner", "gen_head_config": "gen_head"}
# language_config keys that are runtime choices, not architecture (flash attention would break CPU loads).
_LANGUAGE_SKIP = {"_attn_implementation", "attn_implementation", "torch_dtype", "dtype", "architectures",
                  "_name_or_path", "transformers_version", "model_type"}
_LANGUAGE_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "max_position_embeddings", "hidden_act", "rms_norm_eps",
                  "attention_bias", "mlp_bias", "bos_token_id", "eos_token_id", "pad_token_id")


def _params(original: dict, name: str) -> dict:
    sub = original.get(name)
    if not isinstance(sub, dict):
        raise UserError(f"config.json: no '{name}' (not an original DeepSeek Janus config?)")
    if sub.get("cls") != _CLASSES[name]:
        raise UserError(f"config.json: {name}.cls is {sub.get('cls')!r}; only {_CLASSES[name]!r} "
                        "(Janus / Janus-Pro) can be converted")
    params = dict(sub.get("params") or {})
    if name.endswith("aligner_config") and params.get("projector_type") != "mlp_gelu":
        raise UserError(f"config.json: {name}.params.projector_type is {params.get('projector_type')!r}, "
                        "expected 'mlp_gelu'")
    return params


def _need(params: dict, name: str, key: str):
    if key not in params:
        raise UserError(f"config.json: {name}.params.{key} is missing")
    return params[key]


def _vision_from_deepseek(vision: dict, aligner: dict):
    from transformers import JanusVisionConfig

    name = vision.get("model_name", _DEFAULT_SIGLIP)
    if name not in _SIGLIP:
        raise UserError(f"config.json: vision_config.params.model_name {name!r} is not one of {sorted(_SIGLIP)}")
    arch = {**_SIGLIP[name], **{k: vision[k] for k in _SIGLIP[name] if k in vision}}
    # DeepSeek truncates SigLIP to `select_layer` blocks (<= 0 counts from the end; -2 is
    # CLIPVisionTower's default): that truncated depth is the native num_hidden_layers.
    select, total = vision.get("select_layer", -2), arch["layers"]
    layers = min(total, total + select + 1) if select <= 0 else min(total, select)
    size = _need(vision, "vision_config", "image_size")
    return JanusVisionConfig(
        hidden_size=arch["width"], num_hidden_layers=layers, num_attention_heads=arch["heads"],
        patch_size=arch["patch_size"], mlp_ratio=arch["mlp_ratio"], image_size=size,
        projection_dim=_need(aligner, "aligner_config", "n_embed"), depth=aligner.get("depth", 1),
        num_image_tokens=(size // arch["patch_size"]) ** 2)


def _vq_from_deepseek(gen_vision: dict, gen_aligner: dict, gen_head: dict):
    from transformers import JanusVQVAEConfig

    arch = {**_VQ16, **gen_vision}
    if list(arch["encoder_ch_mult"]) != list(arch["decoder_ch_mult"]):
        raise UserError("config.json: gen_vision_config encoder_ch_mult and decoder_ch_mult differ")
    projection = _need(gen_aligner, "gen_aligner_config", "n_embed")
    # transformers uses one width for the generation aligner output and the head's hidden layer.
    if gen_head.get("image_token_embed", projection) != projection:
        raise UserError("config.json: gen_head_config.params.image_token_embed must equal "
                        "gen_aligner_config.params.n_embed")
    return JanusVQVAEConfig(
        embed_dim=_need(gen_vision, "gen_vision_config", "n_embed"),
        num_embeddings=_need(gen_vision, "gen_vision_config", "image_token_size"),
        latent_channels=arch["z_channels"], base_channels=arch["ch"],
        channel_multiplier=list(arch["encoder_ch_mult"]), num_res_blocks=arch["num_res_blocks"],
        projection_dim=projection, num_hidden_layers=gen_aligner.get("depth", 1),
        image_token_embed_dim=_need(gen_head, "gen_head_config", "n_embed"))


def janus_config_from_deepseek(original: dict, token_ids: dict):
    """`JanusConfig` of an original config.json. `token_ids`: bos/eos/pad/image ids from the tokenizer."""
    from transformers import JanusConfig, LlamaConfig

    if original.get("model_type", "multi_modality") != "multi_modality":
        raise UserError(f"config.json: model_type is {original.get('model_type')!r}, not DeepSeek's "
                        "'multi_modality' (a transformers checkpoint: convert it to DeepSeek's layout instead)")
    params = {name: _params(original, name) for name in _CLASSES}
    if not isinstance(original.get("language_config"), dict):
        raise UserError("config.json: no 'language_config' (not an original DeepSeek Janus config?)")
    language = {k: v for k, v in original["language_config"].items() if k not in _LANGUAGE_SKIP}
    ids = {k: token_ids[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    try:
        text = LlamaConfig(**{**language, **ids, "tie_word_embeddings": False})
    except (TypeError, ValueError) as err:
        raise UserError(f"config.json: language_config: {err}") from err
    vision = _vision_from_deepseek(params["vision_config"], params["aligner_config"])
    vq = _vq_from_deepseek(params["gen_vision_config"], params["gen_aligner_config"], params["gen_head_config"])
    # The original LM head is its own matrix: with the JanusConfig default (tied) transformers
    # would replace it by the input embedding and every text logit would be wrong (janus.md s.2).
    return JanusConfig(text_config=text, vision_config=vision, vq_config=vq,
                       image_token_id=token_ids["image_token_id"], tie_word_embeddings=False)


def _representable(vision, vq) -> None:
    """Refuse settings DeepSeek's modules have no switch for."""
    fixed = [("vision_config.use_qk_norm", vision.use_qk_norm, False),
             ("vision_config.attention_bias", vision.attention_bias, True),
             ("vision_config.hidden_act", vision.hidden_act, "gelu"),
             ("vision_config.layer_norm_eps", vision.layer_norm_eps, 1e-6),
             ("vision_config.num_channels", vision.num_channels, 3),
             ("vq_config.hidden_act", vq.hidden_act, "gelu"),
             ("vq_config.double_latent", vq.double_latent, False),
             ("vq_config.in_channels", vq.in_channels, 3), ("vq_config.out_channels", vq.out_channels, 3)]
    for name, value, needed in fixed:
        if value != needed:
            raise UserError(f"{name}={value!r} has no equivalent in DeepSeek's layout (needs {needed!r})")


def _vision_to_deepseek(vision) -> tuple[dict, bool]:
    arch = {"width": vision.hidden_size, "heads": vision.num_attention_heads,
            "patch_size": vision.patch_size, "mlp_ratio": float(vision.mlp_ratio)}
    layers = vision.num_hidden_layers
    name = next((n for n, p in _SIGLIP.items() if all(p[k] == v for k, v in arch.items()) and layers <= p["layers"]),
                _DEFAULT_SIGLIP)
    extra = {k: v for k, v in arch.items() if _SIGLIP[name][k] != v}
    total = _SIGLIP[name]["layers"]
    if layers > total:
        extra["layers"], select = layers, -1
    else:
        select = -1 if layers == total else layers
    params = {"image_size": vision.image_size, "model_name": name, "select_feature": "same",
              "select_layer": select, **extra}
    return params, not extra


def _vq_to_deepseek(vq) -> tuple[dict, bool]:
    arch = {"ch": vq.base_channels, "encoder_ch_mult": list(vq.channel_multiplier),
            "decoder_ch_mult": list(vq.channel_multiplier), "z_channels": vq.latent_channels,
            "num_res_blocks": vq.num_res_blocks}
    extra = {k: v for k, v in arch.items() if _VQ16[k] != v}
    preset = not extra and (vq.num_embeddings, vq.embed_dim) == (_VQ16["image_token_size"], _VQ16["n_embed"])
    return {"image_token_size": vq.num_embeddings, "n_embed": vq.embed_dim, **extra}, preset


def _language_to_deepseek(text, dtype_name: str) -> dict:
    # Names DeepSeek's pinned transformers 4.x LlamaConfig reads (rope_theta, not rope_parameters).
    language = {k: getattr(text, k) for k in _LANGUAGE_KEYS if getattr(text, k, None) is not None}
    if getattr(text, "head_dim", None) not in (None, text.hidden_size // text.num_attention_heads):
        language["head_dim"] = text.head_dim
    rope = dict(getattr(text, "rope_parameters", None) or {})
    language["rope_theta"] = rope.pop("rope_theta", 10000.0)
    if rope.get("rope_type", "default") != "default":
        language["rope_scaling"] = rope
    return {**language, "model_type": "llama", "torch_dtype": dtype_name}


def deepseek_config_from_janus(config, dtype: torch.dtype) -> tuple[dict, list[str]]:
    """Original-style config.json for `config`, and notes for the user."""
    vision, vq = config.vision_config, config.vq_config
    _representable(vision, vq)
    vision_params, vision_preset = _vision_to_deepseek(vision)
    vq_params, vq_preset = _vq_to_deepseek(vq)
    dtype_name = str(dtype).replace("torch.", "")
    params = {
        "vision_config": vision_params,
        "aligner_config": {"depth": vision.depth, "input_dim": vision.hidden_size,
                           "n_embed": vision.projection_dim, "projector_type": "mlp_gelu"},
        "gen_vision_config": vq_params,
        "gen_aligner_config": {"depth": vq.num_hidden_layers, "input_dim": vq.embed_dim,
                               "n_embed": vq.projection_dim, "projector_type": "mlp_gelu"},
        "gen_head_config": {"image_token_embed": vq.projection_dim, "image_token_size": vq.num_embeddings,
                            "n_embed": vq.image_token_embed_dim},
    }
    original = {"architectures": ["MultiModalityCausalLM"], "model_type": "multi_modality",
                "torch_dtype": dtype_name, "language_config": _language_to_deepseek(config.text_config, dtype_name)}
    original.update({name: {"cls": _CLASSES[name], "model_type": _MODEL_TYPES[name], "params": p}
                     for name, p in params.items()})
    notes = ["DeepSeek's loader will report vision_model.vision_tower.attn_pool.* as newly initialised: "
             "that SigLIP pooling head is never used by Janus and is not part of the transformers model"]
    if not (vision_preset and vq_preset):
        notes.append("the vision tower or VQ model is not one of DeepSeek's fixed architectures (SigLIP "
                      "presets, VQ-16): their sizes are kept as extra config params for converting back, "
                      "but DeepSeek's own code cannot build this model")
    return original, notes
