"""`janus-ft convert`: DeepSeek's original layout <-> transformers' layout, on the tiny random Janus."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from janus_ft.cli import main
from janus_ft.errors import UserError
from janus_ft.export import config as convert_config
from janus_ft.export import names as layout
from janus_ft.export.convert import (
    convert_from_deepseek,
    convert_to_deepseek,
    parse_size,
)
from janus_ft.tiny import build_tiny


def _tensors(directory: Path) -> dict[str, torch.Tensor]:
    out = {}
    for path in sorted(directory.glob("*.safetensors")):
        out.update(load_file(path))
    return out


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> Path:
    return build_tiny(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def deepseek(tiny, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("deepseek") / "model"
    convert_to_deepseek(tiny, out)
    return out


@pytest.fixture(scope="session")
def round_trip(deepseek, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("round_trip") / "model"
    convert_from_deepseek(deepseek, out)
    return out


def _leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if ".partial-" in p.name or ".old-" in p.name]


# --------------------------------------------------------------------------- round trip

def test_round_trip_is_bit_identical(tiny, round_trip):
    before, after = _tensors(tiny), _tensors(round_trip)
    assert sorted(after) == sorted(before)
    for key, tensor in before.items():
        assert after[key].dtype == tensor.dtype and torch.equal(after[key], tensor), key


def test_round_trip_config_is_equivalent(tiny, round_trip):
    from transformers import JanusConfig

    a, b = JanusConfig.from_pretrained(tiny), JanusConfig.from_pretrained(round_trip)
    for sub in ("text_config", "vision_config", "vq_config"):
        assert getattr(b, sub).to_dict() == getattr(a, sub).to_dict(), sub
    assert b.image_token_id == a.image_token_id
    raw = json.loads((round_trip / "config.json").read_text())
    assert raw["tie_word_embeddings"] is False and b.tie_word_embeddings is False


def test_round_trip_loads_with_plain_transformers_and_gives_identical_logits(tiny, round_trip):
    from transformers import JanusForConditionalGeneration

    original = JanusForConditionalGeneration.from_pretrained(tiny).eval()
    converted = JanusForConditionalGeneration.from_pretrained(round_trip).eval()
    assert converted.lm_head.weight.data_ptr() != converted.model.language_model.embed_tokens.weight.data_ptr()
    n_image = original.config.vision_config.num_image_tokens
    ids = torch.tensor([[0, 6, 4] + [original.config.image_token_id] * n_image + [5, 30, 31, 32]])
    pixels = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = original(input_ids=ids, pixel_values=pixels).logits
        got = converted(input_ids=ids, pixel_values=pixels).logits
        hidden = torch.randn(2, 64, generator=torch.Generator().manual_seed(1))
        want_image = original.model.generation_head(hidden)
        got_image = converted.model.generation_head(hidden)
    assert torch.equal(got, want) and torch.equal(got_image, want_image)


def test_round_trip_processor_and_generation_config(tiny, round_trip):
    from transformers import AutoProcessor, GenerationConfig

    a, b = AutoProcessor.from_pretrained(tiny), AutoProcessor.from_pretrained(round_trip)
    assert b.chat_template == a.chat_template
    text = "<|User|>: <image_placeholder>\nWhat is shown?\n\n<|Assistant|>: A cat.<｜end▁of▁sentence｜>"
    assert b.tokenizer(text).input_ids == a.tokenizer(text).input_ids
    assert b.tokenizer.pad_token_id == a.tokenizer.pad_token_id and b.tokenizer.padding_side == "left"
    for name in ("size", "image_mean", "image_std", "min_size", "rescale_factor", "background_color"):
        assert getattr(b.image_processor, name) == getattr(a.image_processor, name), name
    assert b.num_image_tokens == a.num_image_tokens
    gen = GenerationConfig.from_pretrained(round_trip)
    assert gen.guidance_scale == 5
    assert (gen.pad_token_id, gen.bos_token_id, gen.eos_token_id) == (
        b.tokenizer.pad_token_id, b.tokenizer.bos_token_id, b.tokenizer.eos_token_id)
    assert gen.generation_kwargs["boi_token_id"] == b.tokenizer.convert_tokens_to_ids("<begin_of_image>")


# --------------------------------------------------------------------------- DeepSeek layout

def test_deepseek_layout_has_the_original_names_and_shapes(tiny, deepseek):
    native, original = _tensors(tiny), _tensors(deepseek)
    d = 32  # tiny vision width
    pinned = {
        "language_model.model.embed_tokens.weight": (625, 64),
        "language_model.model.layers.0.self_attn.q_proj.weight": (64, 64),
        "language_model.lm_head.weight": (625, 64),
        "vision_model.vision_tower.pos_embed": (1, 16, d),
        "vision_model.vision_tower.patch_embed.proj.weight": (d, 3, 16, 16),
        "vision_model.vision_tower.blocks.1.attn.qkv.weight": (3 * d, d),
        "vision_model.vision_tower.blocks.1.attn.qkv.bias": (3 * d,),
        "vision_model.vision_tower.blocks.0.attn.proj.weight": (d, d),
        "vision_model.vision_tower.blocks.0.norm1.weight": (d,),
        "vision_model.vision_tower.blocks.0.mlp.fc2.weight": (d, 4 * d),
        "vision_model.vision_tower.norm.bias": (d,),
        "aligner.layers.0.weight": (64, d),
        "aligner.layers.2.weight": (64, 64),
        "gen_aligner.layers.0.weight": (64, 8),
        "gen_aligner.layers.2.bias": (64,),
        "gen_head.output_mlp_projector.weight": (64, 64),
        "gen_head.vision_head.weight": (256, 64),
        "gen_embed.weight": (256, 8),
        "gen_vision_model.encoder.conv_blocks.0.res.0.conv1.weight": (32, 32, 3, 3),
        "gen_vision_model.encoder.conv_blocks.0.downsample.conv.weight": (32, 32, 3, 3),
        "gen_vision_model.encoder.conv_blocks.4.attn.0.q.weight": (32, 32, 1, 1),
        "gen_vision_model.encoder.mid.0.norm1.weight": (32,),
        "gen_vision_model.encoder.mid.1.proj_out.weight": (32, 32, 1, 1),
        "gen_vision_model.decoder.mid.2.conv2.bias": (32,),
        "gen_vision_model.decoder.conv_blocks.0.res.1.norm2.weight": (32,),
        "gen_vision_model.decoder.conv_blocks.0.upsample.conv.weight": (32, 32, 3, 3),
        "gen_vision_model.quantize.embedding.weight": (256, 8),
        "gen_vision_model.quant_conv.weight": (8, 32, 1, 1),
        "gen_vision_model.quantize.codebook_used": (65536,),
    }
    for key, shape in pinned.items():
        assert tuple(original[key].shape) == shape, key
    prefixes = ("language_model.model.", "language_model.lm_head.", "vision_model.vision_tower.", "aligner.layers.",
                "gen_aligner.layers.", "gen_head.output_mlp_projector.", "gen_head.vision_head.", "gen_embed.",
                "gen_vision_model.")
    assert [k for k in original if not k.startswith(prefixes)] == []
    native_words = ("model.vision_model", "q_proj", "layer_norm", "projection_layer", "post_layernorm",
                    "position_embedding", "patch_embedding", "vqmodel", "generation_", ".down.", ".up.",
                    ".block.", "block_1", "attn_1", "hidden_layers", "fc1", "attn_pool")
    not_language = [k for k in original if not k.startswith("language_model.")]
    siglip_fc1 = ("mlp.fc1.weight", "mlp.fc1.bias")  # the one name both layouts share
    assert [k for k in not_language for w in native_words if w in k and not k.endswith(siglip_fc1)] == []
    # 2 vision layers x weight/bias x (q, k, v -> qkv), plus codebook_used
    assert len(original) == len(native) - 2 * 2 * 2 + 1
    q, k, v = (native[f"model.vision_model.encoder.layers.1.self_attn.{x}_proj.weight"] for x in "qkv")
    assert torch.equal(original["vision_model.vision_tower.blocks.1.attn.qkv.weight"], torch.cat([q, k, v]))
    assert torch.equal(original["vision_model.vision_tower.pos_embed"][0],
                       native["model.vision_model.embeddings.position_embedding.weight"])
    assert not original["gen_vision_model.quantize.codebook_used"].any()


def test_deepseek_config_has_what_the_original_code_reads(deepseek):
    config = json.loads((deepseek / "config.json").read_text())
    assert config["model_type"] == "multi_modality" and config["architectures"] == ["MultiModalityCausalLM"]
    assert config["vision_config"]["cls"] == "CLIPVisionTower"
    vision = config["vision_config"]["params"]
    assert (vision["model_name"], vision["image_size"], vision["select_layer"]) == ("siglip_large_patch16_384", 64, 2)
    assert config["aligner_config"] == {"cls": "MlpProjector", "model_type": "aligner", "params": {
        "depth": 2, "input_dim": 32, "n_embed": 64, "projector_type": "mlp_gelu"}}
    assert config["gen_vision_config"]["cls"] == "VQ-16"
    assert {k: config["gen_vision_config"]["params"][k] for k in ("image_token_size", "n_embed")} == {
        "image_token_size": 256, "n_embed": 8}
    assert config["gen_aligner_config"]["params"] == {"depth": 2, "input_dim": 8, "n_embed": 64,
                                                      "projector_type": "mlp_gelu"}
    assert config["gen_head_config"] == {"cls": "vision_head", "model_type": "gen_head", "params": {
        "image_token_embed": 64, "image_token_size": 256, "n_embed": 64}}
    language = config["language_config"]
    assert (language["hidden_size"], language["vocab_size"], language["rope_theta"]) == (64, 625, 10000.0)
    processor = json.loads((deepseek / "processor_config.json").read_text())
    assert processor["sft_format"] == "deepseek" and processor["num_image_tokens"] == 16
    pre = json.loads((deepseek / "preprocessor_config.json").read_text())
    assert (pre["image_size"], pre["image_mean"], pre["min_size"]) == (64, [0.5, 0.5, 0.5], 14)
    tok = json.loads((deepseek / "tokenizer_config.json").read_text())
    assert tok["tokenizer_class"] == "LlamaTokenizerFast"


JANUS_PRO_1B = {  # the original config.json of deepseek-ai/Janus-Pro-1B (sub-configs as shipped)
    "architectures": ["MultiModalityCausalLM"], "model_type": "multi_modality", "torch_dtype": "bfloat16",
    "language_config": {"hidden_size": 2048, "intermediate_size": 5632, "max_position_embeddings": 16384,
                        "model_type": "llama", "num_attention_heads": 16, "num_hidden_layers": 24,
                        "num_key_value_heads": 16, "torch_dtype": "bfloat16", "vocab_size": 102400,
                        "_attn_implementation": "flash_attention_2"},
    "vision_config": {"cls": "CLIPVisionTower", "model_type": "vision", "params": {
        "image_size": 384, "model_name": "siglip_large_patch16_384", "select_feature": "same", "select_layer": -1}},
    "aligner_config": {"cls": "MlpProjector", "model_type": "aligner", "params": {
        "depth": 2, "input_dim": 1024, "n_embed": 2048, "projector_type": "mlp_gelu"}},
    "gen_vision_config": {"cls": "VQ-16", "model_type": "gen_vision", "params": {
        "image_token_size": 16384, "n_embed": 8}},
    "gen_aligner_config": {"cls": "MlpProjector", "model_type": "gen_aligner", "params": {
        "depth": 2, "input_dim": 8, "n_embed": 2048, "projector_type": "mlp_gelu"}},
    "gen_head_config": {"cls": "vision_head", "model_type": "gen_head", "params": {
        "image_token_embed": 2048, "image_token_size": 16384, "n_embed": 2048}},
}
IDS = {"bos_token_id": 100000, "eos_token_id": 100001, "pad_token_id": 100002, "image_token_id": 100581}


def test_real_janus_pro_config_maps_both_ways():
    config = convert_config.janus_config_from_deepseek(JANUS_PRO_1B, IDS)
    v, q, t = config.vision_config, config.vq_config, config.text_config
    assert (v.hidden_size, v.num_hidden_layers, v.num_attention_heads, v.patch_size, v.num_image_tokens) == (
        1024, 24, 16, 16, 576)
    assert (q.num_embeddings, q.embed_dim, q.base_channels, list(q.channel_multiplier), q.latent_channels) == (
        16384, 8, 128, [1, 1, 2, 2, 4], 256)
    assert (t.hidden_size, t.num_hidden_layers, t.vocab_size, t.pad_token_id) == (2048, 24, 102400, 100002)
    assert config.tie_word_embeddings is False and t._attn_implementation != "flash_attention_2"
    back, notes = convert_config.deepseek_config_from_janus(config, torch.bfloat16)
    assert not any("fixed architectures" in note for note in notes)
    for name in ("vision_config", "aligner_config", "gen_vision_config", "gen_aligner_config", "gen_head_config"):
        assert back[name] == JANUS_PRO_1B[name], name


def test_every_real_janus_pro_tensor_name_maps_back_and_forth():
    config = convert_config.janus_config_from_deepseek(JANUS_PRO_1B, IDS)
    names = layout.native_shapes(config)
    originals = {layout.to_deepseek(n)[0] for n in names}
    assert len(originals) == len(names) - 24 * 2 * 2  # q/k/v weight and bias fused in 24 SigLIP blocks
    assert all(n in layout.to_native(layout.to_deepseek(n)[0])[0] for n in names)
    assert "gen_vision_model.encoder.conv_blocks.2.res.0.nin_shortcut.weight" in originals
    assert "vision_model.vision_tower.blocks.23.attn.qkv.bias" in originals
    assert layout.to_native("vision_model.vision_tower.attn_pool.latent") == ([], "drop")


def test_tied_embeddings_become_the_deepseek_lm_head(tiny):
    from transformers import JanusConfig

    config = JanusConfig.from_pretrained(tiny)
    config.tie_word_embeddings = True
    shapes = {k: v for k, v in layout.native_shapes(config).items() if k != "lm_head.weight"}
    plan = layout.plan_to_deepseek(shapes, config)
    assert plan["model.language_model.embed_tokens.weight"][0].targets == (
        "language_model.model.embed_tokens.weight", "language_model.lm_head.weight")


# --------------------------------------------------------------------------- refusals

def _edit_deepseek(deepseek: Path, target: Path, drop=(), add=()) -> Path:
    shutil.copytree(deepseek, target)
    tensors = load_file(target / "model.safetensors")
    for key in drop:
        del tensors[key]
    for key in add:
        tensors[key] = torch.zeros(3)
    save_file(tensors, target / "model.safetensors", metadata={"format": "pt"})
    return target


@pytest.mark.parametrize("drop, add, named", [
    (["gen_head.vision_head.bias"], [], "missing tensor 'gen_head.vision_head.bias'"),
    (["vision_model.vision_tower.blocks.1.attn.qkv.weight"], [],
     "missing tensor 'vision_model.vision_tower.blocks.1.attn.qkv.weight'"),
    ([], ["vision_model.vision_tower.blocks.0.attn.extra.weight"],
     "unexpected tensor 'vision_model.vision_tower.blocks.0.attn.extra.weight'"),
    ([], ["language_model.model.layers.7.mlp.up_proj.weight"],
     "unexpected tensor 'language_model.model.layers.7.mlp.up_proj.weight'"),
])
def test_bad_deepseek_checkpoint_is_refused_before_writing(deepseek, tmp_path, capsys, drop, add, named):
    bad = _edit_deepseek(deepseek, tmp_path / "bad", drop, add)
    out = tmp_path / "out"
    with pytest.raises(UserError) as err:
        convert_from_deepseek(bad, out)
    assert named in str(err.value)
    assert main(["convert", "--from", "deepseek", "--input", str(bad), "--output", str(out)]) == 2
    assert named in capsys.readouterr().err
    assert not out.exists() and _leftovers(tmp_path) == []


def test_original_only_tensors_are_dropped(tiny, deepseek, tmp_path):
    # Real DeepSeek checkpoints carry SigLIP's unused attention-pooling head.
    source = tmp_path / "with_attn_pool"
    shutil.copytree(deepseek, source)
    tensors = load_file(source / "model.safetensors")
    tensors["vision_model.vision_tower.attn_pool.latent"] = torch.zeros(1, 1, 32)
    tensors["vision_model.vision_tower.attn_pool.kv.weight"] = torch.zeros(64, 32)
    save_file(tensors, source / "model.safetensors")
    result = convert_from_deepseek(source, tmp_path / "out")
    before, after = _tensors(tiny), _tensors(tmp_path / "out")
    assert result.num_tensors == len(before) and sorted(after) == sorted(before)


def test_misshapen_tensor_is_named(deepseek, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(deepseek, bad)
    tensors = load_file(bad / "model.safetensors")
    tensors["gen_embed.weight"] = torch.zeros(255, 8)
    save_file(tensors, bad / "model.safetensors")
    with pytest.raises(UserError, match=r"tensor 'gen_embed.weight' has shape \[255, 8\]"):
        convert_from_deepseek(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unexpected_native_tensor_is_refused(tiny, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(tiny, bad)
    tensors = load_file(bad / "model.safetensors")
    tensors["model.vision_model.head.weight"] = torch.zeros(2)
    save_file(tensors, bad / "model.safetensors", metadata={"format": "pt"})
    out = tmp_path / "out"
    assert main(["convert", "--to", "deepseek", "--input", str(bad), "--output", str(out)]) == 2
    assert "unexpected tensor 'model.vision_model.head.weight'" in capsys.readouterr().err
    assert not out.exists() and _leftovers(tmp_path) == []


def test_existing_output_needs_overwrite(deepseek, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    with pytest.raises(UserError, match="pass overwrite=True to replace it"):   # the CLI says --overwrite
        convert_from_deepseek(deepseek, out)
    convert_from_deepseek(deepseek, out, overwrite=True)
    assert not (out / "stale.txt").exists() and (out / "model.safetensors").is_file()
    assert _leftovers(tmp_path) == []


def test_wrong_direction_is_explained(tiny, deepseek, tmp_path):
    with pytest.raises(UserError, match="convert it to DeepSeek's layout instead"):
        convert_from_deepseek(tiny, tmp_path / "a")
    with pytest.raises(UserError, match="convert it from DeepSeek's layout instead"):
        convert_to_deepseek(deepseek, tmp_path / "b")
    assert list(tmp_path.iterdir()) == []


def test_cli_converts_into_shards(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["convert", "--to", "deepseek", "--input", str(tiny), "--output", str(out),
                 "--max-shard-size", "1MB"]) == 0
    printed = capsys.readouterr().out
    assert f"in 4 shard(s) to {out}" in printed and "attn_pool" in printed
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == [f"model-0000{i}-of-00004.safetensors" for i in range(1, 5)]


@pytest.mark.parametrize("fmt, sft_format, roles", [
    ("auto", "deepseek", "<|User|>: "), ("auto", "deepseek_old", "User: "),
    ("janus", "deepseek", "User: "), ("janus-pro", "deepseek_old", "<|User|>: ")])
def test_chat_template_choice(tmp_path, fmt, sft_format, roles):
    from types import SimpleNamespace

    from janus_ft.export.assets import pick_chat_template

    (tmp_path / "processor_config.json").write_text(json.dumps({"sft_format": sft_format}))
    template, notes = pick_chat_template(tmp_path, SimpleNamespace(chat_template=None), fmt)
    assert f"'{roles}'" in template and (roles == "User: ") == ("'<|User|>: '" not in template)
    assert bool(notes) == (fmt == "auto")


def test_from_and_to_are_mutually_exclusive(tmp_path):
    with pytest.raises(SystemExit) as err:
        main(["convert", "--from", "deepseek", "--to", "deepseek", "--input", "a", "--output", "b"])
    assert err.value.code == 2


@pytest.mark.parametrize("text, size", [("5GB", 5 * 10**9), ("50MB", 50 * 10**6), ("2GiB", 2 * 2**30),
                                        ("300KB", 300_000), ("1000", 1000), (123, 123)])
def test_parse_size(text, size):
    assert parse_size(text) == size


def test_parse_size_refuses_nonsense():
    with pytest.raises(UserError, match="5 parsecs"):
        parse_size("5 parsecs")


# --------------------------------------------------------------------------- inputs and memory

def test_sharded_bin_input_converts(tiny, deepseek, tmp_path):
    source = tmp_path / "bin"
    shutil.copytree(deepseek, source, ignore=shutil.ignore_patterns("*.safetensors"))
    tensors = load_file(deepseek / "model.safetensors")
    keys = sorted(tensors)
    weight_map = {}
    for i, chunk in enumerate((keys[0::3], keys[1::3], keys[2::3]), start=1):
        name = f"pytorch_model-{i:05d}-of-00003.bin"
        torch.save({k: tensors[k] for k in chunk}, source / name)
        weight_map.update(dict.fromkeys(chunk, name))
    (source / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    out = tmp_path / "out"
    result = convert_from_deepseek(source, out)
    before, after = _tensors(tiny), _tensors(out)
    assert result.num_tensors == len(before) == len(after)
    assert all(torch.equal(after[k], v) for k, v in before.items())


def _reshard(tiny: Path, target: Path, max_bytes: int) -> Path:
    """The tiny checkpoint saved as many safetensors shards (an index, like save_pretrained)."""
    from janus_ft.export.convert import MemoryMeter, ShardWriter

    shutil.copytree(tiny, target, ignore=shutil.ignore_patterns("*.safetensors"))
    writer = ShardWriter(target, "model", max_bytes, MemoryMeter())
    for key, tensor in load_file(tiny / "model.safetensors").items():
        writer.add(key, tensor)
    writer.close()
    return target


def test_multi_shard_conversion_holds_about_one_shard(tiny, tmp_path):
    shard = 300_000
    source = _reshard(tiny, tmp_path / "sharded", shard)
    largest = max(t.numel() * t.element_size() for t in _tensors(source).values())
    index = json.loads((source / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) >= 8

    ds = convert_to_deepseek(source, tmp_path / "ds", max_shard_size=shard)
    back = convert_from_deepseek(tmp_path / "ds", tmp_path / "back", max_shard_size="300KB")
    for result in (ds, back):
        assert result.num_shards >= 8
        # Held at once: one output shard plus the tensor being converted, far below the whole model.
        assert 0 < result.peak_bytes <= shard + largest < result.total_bytes / 4
    index = json.loads((tmp_path / "back" / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == back.total_bytes
    for key, name in index["weight_map"].items():
        with safe_open(str(tmp_path / "back" / name), framework="pt") as f:
            assert key in f.keys()
    before, after = _tensors(tiny), _tensors(tmp_path / "back")
    assert sorted(after) == sorted(before) and all(torch.equal(after[k], v) for k, v in before.items())
