"""ids and labels: exactly the assistant tokens and the EOS closing each turn are supervised."""

from pathlib import Path

from janus_ft.data.conversation import render
from janus_ft.data.records import parse_record
from janus_ft.data.tokens import drop_condition, encode
from janus_ft.janus import IGNORE_INDEX, SpecialIds


def _encode(processor, obj, codes=None, **kw):
    record = parse_record(obj, Path("/d/x.jsonl"), 1)
    special = SpecialIds.from_tokenizer(processor.tokenizer)
    ids, labels = encode(render(record, "janus-pro", **kw), processor.tokenizer, special,
                         processor.num_image_tokens, codes)
    return ids, labels, special


def test_supervised_tokens_are_answers_and_eos(tiny_processor):
    tok = tiny_processor.tokenizer
    ids, labels, sp = _encode(tiny_processor, {"query": "<image>What is shown?", "response": "A red circle.",
                                               "images": ["a.png"], "history": [["Hi", "Hello"]]})
    supervised = [t for t, lab in zip(ids, labels) if lab != IGNORE_INDEX]
    expected = tok(" Hello", add_special_tokens=False).input_ids + [sp.eos] + \
        tok(" A red circle.", add_special_tokens=False).input_ids + [sp.eos]
    assert supervised == expected
    assert all(lab == t for t, lab in zip(ids, labels) if lab != IGNORE_INDEX)
    # image tokens (begin, placeholders, end) are never supervised, and expand to N placeholders
    n = tiny_processor.num_image_tokens
    assert ids.count(sp.image) == n and ids.count(sp.boi) == 1 and ids.count(sp.eoi) == 1
    assert all(lab == IGNORE_INDEX for t, lab in zip(ids, labels) if t in (sp.image, sp.boi, sp.eoi))
    assert ids[0] == sp.bos and labels[0] == IGNORE_INDEX
    # the EOS closing every assistant turn is in the loss; the ids are the tokenizer's own
    assert sum(1 for t, lab in zip(ids, labels) if t == sp.eos and lab == sp.eos) == 2


def test_last_turn_only(tiny_processor):
    ids, labels, sp = _encode(tiny_processor, {"query": "q2", "response": "r2", "history": [["q1", "r1"]]},
                              last_turn_only=True)
    assert sum(1 for lab in labels if lab == sp.eos) == 1


def test_generation_labels_are_codes_from_the_begin_of_image_position(tiny_processor):
    n = tiny_processor.num_image_tokens
    codes = list(range(3, 3 + n))
    ids, labels, sp = _encode(tiny_processor, {"query": "a red circle", "response": "<image>",
                                               "images": ["a.png"]}, codes=codes)
    boi = ids.index(sp.boi)
    assert ids[boi + 1: boi + 1 + n] == [sp.image] * n and ids[boi + 1 + n] == sp.eoi
    assert labels[boi + 1: boi + 1 + n] == codes      # position boi predicts code 0 after the shift
    assert [lab for lab in labels if lab != IGNORE_INDEX] == codes   # nothing else is supervised


def test_cfg_unconditional_prompt_equals_native_generate(tiny_processor, tiny_model):
    """Training-time unconditional ids == the unconditional row `generate(generation_mode="image")` builds."""
    import torch

    ids, _, sp = _encode(tiny_processor, {"query": "a red circle on a blue background", "response": "<image>",
                                          "images": ["a.png"]})
    prompt = ids[: ids.index(sp.boi) + 1]
    uncond = drop_condition(ids, sp)[: len(prompt)]
    assert uncond[0] == sp.bos and uncond[-1] == sp.boi and set(uncond[1:-1]) == {sp.pad}

    seen = []
    embed = tiny_model.get_input_embeddings()
    hook = embed.register_forward_hook(lambda m, args, out: seen.append(args[0].clone()))
    try:
        tiny_model.model.vision_model.config.num_image_tokens = 1  # one step is enough to see the prompt
        tiny_model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                            generation_mode="image", do_sample=False, guidance_scale=5.0)
    finally:
        hook.remove()
        tiny_model.model.vision_model.config.num_image_tokens = tiny_processor.num_image_tokens
    rows = seen[0]
    assert rows.shape[0] == 2
    assert rows[0].tolist() == prompt and rows[1].tolist() == uncond
