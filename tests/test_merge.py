"""Merge: a perturbed LoRA adapter on every Janus component, merged through the real CLI, loaded with
plain transformers, must reproduce the adapter model's logits on all three paths (text,
understanding, generation), and the merged directory must be a complete standard checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

ALL = ["llm", "aligner", "vision", "gen_head", "gen_aligner", "gen_embed"]
COMPONENT_MODULES = ["model.language_model", "model.aligner", "model.vision_model", "model.generation_head",
                     "model.generation_aligner", "model.generation_embeddings"]


@pytest.fixture(scope="session")
def base_dir(tmp_path_factory):
    from janus_ft.tiny import build_tiny
    return build_tiny(tmp_path_factory.mktemp("merge") / "base")


def load(path):
    from transformers import JanusForConditionalGeneration
    return JanusForConditionalGeneration.from_pretrained(path).eval()


def make_adapter(base_dir: Path, out: Path, lora_args, seed: int = 0):
    """An adapter the way `janus-ft sft` leaves it (adapter, processor, recipe.yaml), with every
    trainable tensor random: lora_B (and lora_embedding_A) start at zero, which would make the merge
    trivially equal to the base."""
    from transformers import JanusProcessor

    from janus_ft.model.lora import apply_lora

    peft_model = apply_lora(load(base_dir), lora_args)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name or "modules_to_save" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    peft_model.save_pretrained(out)
    JanusProcessor.from_pretrained(base_dir).save_pretrained(out)
    (out / "recipe.yaml").write_text(yaml.safe_dump({"model": {"path": str(base_dir)}}))
    return peft_model.eval()


def cli_merge(*args) -> int:
    from janus_ft.cli import main
    return main(["merge", *map(str, args)])


@pytest.fixture(scope="module", params=["all_components", "modules_to_save"])
def merged(request, base_dir, tmp_path_factory):
    """(adapter model, merged model loaded with plain transformers, merged dir)."""
    from janus_ft.recipe import LoraArgs

    if request.param == "all_components":
        args = LoraArgs(targets=ALL, dropout=0.0)
    else:
        args = LoraArgs(targets=["llm"], modules_to_save=["gen_head"], dropout=0.0)
    root = tmp_path_factory.mktemp(request.param)
    peft_model = make_adapter(base_dir, root / "adapter", args)
    assert cli_merge("--adapter", root / "adapter", "--output", root / "merged") == 0
    return peft_model, load(root / "merged"), root / "merged"


@pytest.fixture(scope="session")
def inputs(base_dir):
    """One input per path: a text prompt, an image question, a caption followed by 16 image codes."""
    from PIL import Image
    from transformers import JanusProcessor

    from janus_ft.janus import BOI
    from janus_ft.tiny import CODEBOOK_SIZE

    proc = JanusProcessor.from_pretrained(base_dir)
    tok = proc.tokenizer
    text = tok("What colour is the shape? A red circle.", return_tensors="pt")
    image = Image.new("RGB", (50, 40), (200, 30, 30))
    und = proc(text="<image_placeholder>\nWhat is shown?", images=image, return_tensors="pt")
    prompt = tok("A watercolor fox in the snow", return_tensors="pt").input_ids
    prompt = torch.cat([prompt, torch.tensor([[tok.convert_tokens_to_ids(BOI)]])], dim=1)
    codes = torch.randint(0, CODEBOOK_SIZE, (1, 16), generator=torch.Generator().manual_seed(1))
    return {"text": text, "understanding": und, "generation": (prompt, codes)}


@torch.no_grad()
def path_logits(model, inputs: dict) -> dict[str, torch.Tensor]:
    """Logits of each path; works on the PEFT-wrapped adapter model and on a plain Janus alike."""
    core = model.get_base_model() if hasattr(model, "get_base_model") else model
    prompt, codes = inputs["generation"]
    embeds = torch.cat([core.get_input_embeddings()(prompt),
                        core.prepare_embeddings_for_image_generation(codes)], dim=1)
    hidden = core.model.language_model(inputs_embeds=embeds).last_hidden_state
    # position t predicts image token t+1: the <begin_of_image> position and the first 15 codes
    gen = core.model.generation_head(hidden[:, prompt.shape[1] - 1:-1])
    return {"text": model(**inputs["text"]).logits, "understanding": model(**inputs["understanding"]).logits,
            "generation": gen}


def test_merged_logits_equal_adapter_logits_on_all_paths(merged, inputs):
    peft_model, plain, _ = merged
    want, got = path_logits(peft_model, inputs), path_logits(plain, inputs)
    for path in ("text", "understanding", "generation"):
        assert got[path].dtype == torch.float32
        torch.testing.assert_close(got[path], want[path], atol=1e-5, rtol=0, msg=path)


def test_merged_model_differs_from_base(merged, inputs, base_dir):
    _, plain, _ = merged
    base = load(base_dir)
    before, after = path_logits(base, inputs), path_logits(plain, inputs)
    assert (after["text"] - before["text"]).abs().max() > 1e-2          # every variant trains the LLM
    assert (after["generation"] - before["generation"]).abs().max() > 1e-2
    base_sd, merged_sd = base.state_dict(), plain.state_dict()
    assert base_sd.keys() == merged_sd.keys()                           # no PEFT leftovers
    assert all(torch.equal(v, merged_sd[k]) for k, v in base_sd.items() if k.startswith("model.vqmodel."))


def test_each_component_is_merged_or_left_alone(merged, base_dir):
    """LoRA components change, untouched ones stay bit-equal, and a `modules_to_save` component is
    exactly its trained copy (not the original, not the original plus a delta)."""
    peft_model, plain, _ = merged
    cfg = peft_model.peft_config["default"]
    trained = COMPONENT_MODULES if not cfg.modules_to_save else ["model.language_model", "model.generation_head"]
    base_sd, merged_sd = load(base_dir).state_dict(), plain.state_dict()
    for prefix in COMPONENT_MODULES:
        keys = [k for k in base_sd if k.startswith(prefix + ".")]
        changed = any(not torch.equal(base_sd[k], merged_sd[k]) for k in keys)
        assert changed == (prefix in trained), prefix
    for name in cfg.modules_to_save or []:
        copy = peft_model.base_model.model.get_submodule(name).modules_to_save["default"]
        for key, value in copy.state_dict().items():
            assert torch.equal(merged_sd[f"{name}.{key}"], value), key


def test_merged_dir_is_a_standard_checkpoint(merged, base_dir):
    from transformers import JanusProcessor

    _, plain, merged_dir = merged
    names = {p.name for p in merged_dir.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "chat_template.jinja",
            "processor_config.json", "tokenizer.json"} <= names
    assert not names & {"adapter_config.json", "adapter_model.safetensors"}
    assert plain.config.tie_word_embeddings is False                    # as in the tiny base
    assert json.loads((merged_dir / "config.json").read_text())["tie_word_embeddings"] is False
    proc, base_proc = JanusProcessor.from_pretrained(merged_dir), JanusProcessor.from_pretrained(base_dir)
    assert proc.chat_template == base_proc.chat_template
    assert proc.tokenizer.get_vocab() == base_proc.tokenizer.get_vocab()


def test_generation_config_carries_cfg_defaults(merged, base_dir, tmp_path):
    from transformers import JanusProcessor

    from janus_ft.janus import BOI

    tok = JanusProcessor.from_pretrained(base_dir).tokenizer
    want = {"guidance_scale": 5.0, "pad_token_id": tok.pad_token_id, "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id}
    # a base without generation_config.json gets the defaults built from the tokenizer
    bare = tmp_path / "bare-base"
    shutil.copytree(base_dir, bare)
    (bare / "generation_config.json").unlink()
    assert cli_merge("--adapter", merged[2].parent / "adapter", "--base", bare, "--output", tmp_path / "m") == 0
    for out in (merged[2], tmp_path / "m"):
        gen = json.loads((out / "generation_config.json").read_text())
        assert {k: gen[k] for k in want} == want
        assert gen["generation_kwargs"]["boi_token_id"] == tok.convert_tokens_to_ids(BOI)


def test_tied_base_stays_tied_unless_lm_head_was_trained_apart(base_dir, inputs, tmp_path):
    """`tie_word_embeddings` is kept as in the base; only a fully trained LLM (whose lm_head and
    embeddings are now different matrices) must be saved untied, or its lm_head would be dropped."""
    from safetensors.torch import load_file, save_file

    from janus_ft.recipe import LoraArgs

    tied = tmp_path / "tied-base"
    shutil.copytree(base_dir, tied)
    config = json.loads((tied / "config.json").read_text())
    (tied / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))
    weights = load_file(tied / "model.safetensors")
    del weights["lm_head.weight"]
    save_file(weights, tied / "model.safetensors", metadata={"format": "pt"})
    for name, args, still_tied in [("lora", LoraArgs(targets=["llm"], dropout=0.0), True),
                                   ("full", LoraArgs(targets=["aligner"], modules_to_save=["llm"], dropout=0.0), False)]:
        peft_model = make_adapter(tied, tmp_path / name, args)
        assert cli_merge("--adapter", tmp_path / name, "--output", tmp_path / f"{name}-merged") == 0
        plain = load(tmp_path / f"{name}-merged")
        assert plain.config.tie_word_embeddings is still_tied, name
        assert (plain.lm_head.weight is plain.get_input_embeddings().weight) is still_tied, name
        torch.testing.assert_close(path_logits(plain, inputs)["text"], path_logits(peft_model, inputs)["text"],
                                   atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def small_adapter(base_dir, tmp_path_factory):
    from janus_ft.recipe import LoraArgs

    out = tmp_path_factory.mktemp("small") / "adapter"
    make_adapter(base_dir, out, LoraArgs(targets=["llm", "gen_head"], dropout=0.0), seed=3)
    return out


def test_dtype_and_sharding(small_adapter, tmp_path):
    from safetensors import safe_open

    out = tmp_path / "bf16"
    assert cli_merge("--adapter", small_adapter, "--output", out, "--dtype", "bfloat16",
                     "--max-shard-size", "200KB") == 0
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all((out / s).is_file() for s in shards)
    assert not (out / "model.safetensors").exists()
    dtypes = set()
    for shard in shards:
        with safe_open(out / shard, "pt") as f:
            dtypes |= {f.get_tensor(k).dtype for k in f.keys()}
    assert dtypes == {torch.bfloat16}
    reference = tmp_path / "fp32"
    assert cli_merge("--adapter", small_adapter, "--output", reference) == 0
    got, want = load(out).state_dict(), load(reference).state_dict()
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k].to(torch.bfloat16)) for k in want)


def test_refuses_non_empty_output_without_overwrite(small_adapter, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert cli_merge("--adapter", small_adapter, "--output", out) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]        # no temp dir left behind
    assert cli_merge("--adapter", small_adapter, "--output", out, "--overwrite") == 0
    assert not (out / "keep.txt").exists() and (out / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_missing_adapter_is_a_user_error(tmp_path, capsys):
    assert cli_merge("--adapter", tmp_path / "nope", "--output", tmp_path / "o") == 2
    assert "adapter directory not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli_merge("--adapter", tmp_path / "empty", "--output", tmp_path / "o") == 2
    assert "adapter_config.json" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_base_falls_back_to_the_recipe(small_adapter, base_dir, tmp_path):
    from janus_ft.export.merge import base_name

    moved = tmp_path / "adapter"
    shutil.copytree(small_adapter, moved)
    config = json.loads((moved / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(base_dir)
    assert base_name(moved, None) == str(base_dir)
    config["base_model_name_or_path"] = str(tmp_path / "gone")          # e.g. another machine's cache
    (moved / "adapter_config.json").write_text(json.dumps(config))
    assert base_name(moved, None) == str(base_dir)                      # recipe.yaml's model.path
    assert base_name(moved, "tiny") == "tiny"                           # --base, as given


def test_python_api_is_exported(small_adapter, tmp_path):
    from janus_ft import merge_adapter

    out = merge_adapter(small_adapter, tmp_path / "api", dtype="float16")
    assert out == tmp_path / "api"
    assert load(out).model.language_model.embed_tokens.weight.dtype == torch.float16
