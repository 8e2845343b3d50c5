"""janus_ft.infer.generate: seeded CFG sampling equals transformers' own image-mode `generate`, and the
PNGs are exactly the decoded codes."""

from __future__ import annotations

import json

import numpy as np
import torch
from conftest import random_adapter
from PIL import Image

from janus_ft.cli import main
from janus_ft.data.vq import decode_codes_to_pil
from janus_ft.infer.generate import (
    contact_sheet,
    image_generation_config,
    prompt_inputs,
)

CAPTION = "a red circle on a blue background"
N_TOKENS = 16



def _reference_codes(model, processor, seed: int, n: int, cfg: float, temperature: float = 1.0):
    """transformers' path as its docs show it: chat template, processor in image mode, generate --
    sampling the whole guided distribution as DeepSeek's sampler does (`top_k=0`: transformers'
    default would keep the 50 likeliest codes)."""
    messages = [{"role": "user", "content": [{"type": "text", "text": CAPTION}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=text, generation_mode="image", return_tensors="pt")
    torch.manual_seed(seed)
    with torch.no_grad():
        return model.generate(**inputs, generation_mode="image", guidance_scale=cfg, do_sample=True,
                              temperature=temperature, num_return_sequences=n, top_k=0)


@torch.no_grad()
def _greedy_codes(model, ids: torch.Tensor) -> list[int]:
    """Greedy image codes from one prompt with no guidance at all, the plain way: the whole
    sequence re-run every step, the generation head's argmax fed back through the generation
    embeddings and aligner."""
    embeds = model.get_input_embeddings()(ids[None])
    codes = []
    for _ in range(N_TOKENS):
        hidden = model.model.language_model(inputs_embeds=embeds).last_hidden_state[:, -1]
        code = model.model.generation_head(hidden).argmax(-1)
        codes.append(int(code))
        embeds = torch.cat([embeds, model.prepare_embeddings_for_image_generation(code[:, None])], dim=1)
    return codes


def test_prompt_is_the_training_generation_prompt(tiny_base):
    from janus_ft.data.conversation import render
    from janus_ft.data.records import Record
    from janus_ft.data.tokens import encode
    from janus_ft.janus import SpecialIds

    _, processor = tiny_base
    ids = prompt_inputs(processor, CAPTION, "janus-pro")["input_ids"][0].tolist()
    special = SpecialIds.from_tokenizer(processor.tokenizer)
    record = Record(task="generation", turns=[(CAPTION, "<image>")], system="")
    train_ids, _ = encode(render(record, "janus-pro"), processor.tokenizer, special, N_TOKENS)
    assert ids == train_ids[: train_ids.index(special.boi) + 1]  # ...{R_a}:<begin_of_image>
    assert ids[0] == special.bos and ids[-1] == special.boi


def test_generation_config_ids_come_from_the_tokenizer(tiny_base):
    model, processor = tiny_base
    tok = processor.tokenizer
    config = image_generation_config(model, tok, cfg=3.0, temperature=0.7, n=2)
    assert config.pad_token_id == tok.pad_token_id
    assert config.generation_kwargs["boi_token_id"] == tok.convert_tokens_to_ids("<begin_of_image>")
    assert (config.guidance_scale, config.temperature, config.num_return_sequences) == (3.0, 0.7, 2)
    assert (config.top_k, config.top_p) == (0, 1.0)   # the whole distribution, as DeepSeek samples
    assert model.generation_config.guidance_scale == 5.0  # the model's own config is untouched


def test_sampling_draws_from_every_code(tiny_base):
    """No hidden top-k: at a high temperature the first code of 128 images takes far more than
    the 50 values transformers' default `top_k=50` would allow (about 100 of 256 expected)."""
    from janus_ft.infer.generate import sample_codes

    model, processor = tiny_base
    codes = sample_codes(model, processor, CAPTION, "janus-pro", n=128, cfg=5.0, temperature=100.0, seed=0)
    assert len(set(codes[:, 0].tolist())) > 70
    capped = sample_codes(model, processor, CAPTION, "janus-pro", n=128, cfg=5.0, temperature=100.0, seed=0, top_k=50)
    assert len(set(capped[:, 0].tolist())) <= 50


def test_guidance_one_and_zero_sample_the_conditional_and_unconditional_prompts(tiny_base):
    """cfg 1 is the caption's own distribution and cfg 0 the unconditional prompt's (BOS and
    <begin_of_image> kept, the rest pad): transformers' Janus generate failed at both."""
    from janus_ft.infer.generate import sample_codes
    from janus_ft.janus import SpecialIds

    model, processor = tiny_base
    ids = prompt_inputs(processor, CAPTION, "janus-pro")["input_ids"][0]
    special = SpecialIds.from_tokenizer(processor.tokenizer)
    blank = torch.where((ids == special.bos) | (ids == special.boi), ids, torch.full_like(ids, special.pad))
    conditional, unconditional = _greedy_codes(model, ids), _greedy_codes(model, blank)
    assert conditional != unconditional
    for cfg, want in ((1.0, conditional), (0.0, unconditional)):
        got = sample_codes(model, processor, CAPTION, "janus-pro", n=1, cfg=cfg, temperature=0.0)
        assert got[0].tolist() == want, cfg
    assert sample_codes(model, processor, CAPTION, "janus-pro", n=1, cfg=5.0, temperature=0.0)[0].tolist() != conditional


def test_generate_matches_transformers_and_writes_decoded_pngs(tiny_base, tiny_dir, tmp_path):
    model, processor = tiny_base
    out = tmp_path / "gen"
    rc = main(["generate", "--model", str(tiny_dir), "--prompt", CAPTION, "--output", str(out),
               "--n", "3", "--cfg", "4", "--seed", "7"])
    assert rc == 0
    meta = json.loads((out / "codes.json").read_text())
    codes = torch.tensor(meta["codes"])
    assert codes.shape == (3, N_TOKENS)
    assert torch.equal(codes, _reference_codes(model, processor, seed=7, n=3, cfg=4.0))
    assert not torch.equal(codes, _reference_codes(model, processor, seed=8, n=3, cfg=4.0))
    decoded = decode_codes_to_pil(model, codes)
    for i, image in enumerate(decoded):
        assert np.array_equal(np.asarray(Image.open(out / f"{i}.png")), np.asarray(image))
    grid = Image.open(out / "grid.png")
    assert grid.size == (2 * 64 + 2, 2 * 64 + 2)
    assert np.array_equal(np.asarray(grid.convert("RGB"))[:64, :64], np.asarray(decoded[0]))


def test_generate_with_adapter_equals_merged_model(tiny_base, tiny_dir, tmp_path):
    from peft import PeftModel
    from transformers import JanusForConditionalGeneration

    model, processor = tiny_base
    adapter = random_adapter(tiny_dir, ["llm", "gen_head", "gen_aligner"], tmp_path / "adapter", seed=2)
    merged = PeftModel.from_pretrained(JanusForConditionalGeneration.from_pretrained(tiny_dir), adapter)
    merged = merged.merge_and_unload().eval()

    out = tmp_path / "gen"
    assert main(["generate", "--adapter", str(adapter), "--prompt", CAPTION, "--output", str(out),
                 "--n", "2", "--seed", "1"]) == 0
    codes = torch.tensor(json.loads((out / "codes.json").read_text())["codes"])
    assert torch.equal(codes, _reference_codes(merged, processor, seed=1, n=2, cfg=5.0))
    assert not torch.equal(codes, _reference_codes(model, processor, seed=1, n=2, cfg=5.0))


def test_generate_user_errors_exit_2(tiny_dir, tmp_path, capsys):
    assert main(["generate", "--model", str(tiny_dir), "--prompt", "x", "--output", str(tmp_path),
                 "--temperature", "0", "--n", "2"]) == 2
    assert "greedy" in capsys.readouterr().err
    assert main(["generate", "--model", str(tiny_dir), "--prompt", "  ", "--output", str(tmp_path)]) == 2
    assert "caption" in capsys.readouterr().err
    missing = str(tmp_path / "missing")
    assert main(["generate", "--model", missing, "--prompt", "x", "--output", str(tmp_path)]) == 2


def test_doctests():
    import doctest

    from janus_ft.infer import generate

    assert doctest.testmod(generate).failed == 0


def test_contact_sheet_layout():
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    sheet = contact_sheet([Image.new("RGB", (4, 4), c) for c in colours], columns=3, gap=1)
    assert sheet.size == (14, 4)
    assert [sheet.getpixel((x, 0)) for x in (0, 4, 5, 10)] == [colours[0], (255, 255, 255), colours[1], colours[2]]
