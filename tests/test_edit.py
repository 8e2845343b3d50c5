"""Image editing (source images + instruction -> image): records, rows, the loss and sampling.

The edit loss is checked against a forward written here without janus_ft's loss code (SigLIP
features and code embeddings -> LLM -> generation head -> cross-entropy over every target code), and
the rows sampling guides with are captured and compared, ids and input embeddings, with the rows
training builds for both unconditional branches."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import write_jsonl
from PIL import Image

from janus_ft.data.collate import JanusCollator, collate, loss_plan, pack
from janus_ft.data.dataset import JanusDataset, coded_images, load_records
from janus_ft.data.edit import FULL, NONE, SOURCES, EditSettings, target_start
from janus_ft.data.records import parse_record
from janus_ft.data.vq import encode_images
from janus_ft.errors import BadRecord
from janus_ft.janus import IGNORE_INDEX, TASK_IDS, SpecialIds
from janus_ft.model.loss import compute_loss_parts

EDIT = TASK_IDS["edit"]


def parse(obj):
    return parse_record(obj, Path("/d/edits.jsonl"), 3)


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("edit")
    for name, colour, box in [("a", (220, 30, 30), (4, 4, 30, 30)), ("b", (30, 60, 220), (30, 20, 60, 60)),
                              ("c", (30, 170, 60), (10, 30, 40, 60)), ("t", (240, 210, 30), (2, 2, 40, 40))]:
        img = Image.new("RGB", (64, 64), (211, 211, 211))
        img.paste(colour, box)
        img.save(root / f"{name}.png")
    return root


def test_edit_records_in_every_shape():
    one = parse({"query": "<image>Make the square red.", "response": "<image>", "images": ["a.png", "t.png"]})
    assert (one.task, one.system, one.sources, one.images[-1]) == ("edit", "", [Path("/d/a.png")], Path("/d/t.png"))
    messages = parse({"messages": [{"role": "user", "content": "Put <image> next to <image>"},
                                   {"role": "assistant", "content": "<image>"}], "images": ["a.png", "b.png", "t.png"]})
    assert messages.task == "edit" and messages.sources == [Path("/d/a.png"), Path("/d/b.png")]
    assert messages.caption == "Put <image> next to <image>"
    # a source column, an instruction column and a target column: untagged sources go first
    fields = parse({"query": "Make it blue.", "source_images": ["a.png", "b.png"], "target_image": ["t.png"]})
    assert fields.turns == [("<image><image>Make it blue.", "<image>")] and fields.images[-1] == Path("/d/t.png")
    assert parse({"query": "q", "response": "<image>", "images": ["g.png"]}).sources == []   # generation


@pytest.mark.parametrize("obj,field,words", [
    ({"query": "<image>", "response": "<image>", "images": ["a.png", "t.png"]}, "query", "needs an instruction"),
    ({"query": "<image>Make it red", "response": "<image>", "images": ["a.png", "t.png"], "history": [["a", "b"]]},
     "response", "an edit record has one turn"),
    ({"query": "<image>Make it red", "response": "<image>", "images": ["a.png", "t.png"], "task": "generation"},
     "task", "says 'generation' but the record's images make it 'edit'"),
    ({"query": "Make it red", "source_images": ["a.png"]}, "target_image", "names both"),
    ({"query": "Make it red", "source_images": [], "target_image": "t.png"}, "source_images", "non-empty list"),
    ({"query": "Make it red", "source_images": "a.png", "target_image": "t.png", "images": ["x.png"]}, "images",
     "pick one"),
    ({"query": "<image><image>Make it red", "source_images": "a.png", "target_image": "t.png"}, "images",
     "2 image(s) given but 3"),
])
def test_bad_edit_records_name_the_field(obj, field, words):
    with pytest.raises(BadRecord) as err:
        parse(obj)
    assert err.value.field == field and words in str(err.value)


def test_a_dataset_maps_source_instruction_and_target_columns(tmp_path, pictures):
    import datasets

    from janus_ft.data.sources import read_source
    from janus_ft.recipe import parse_source

    table = {"before": [Image.open(pictures / "a.png")], "instruction": ["Make the square yellow."],
             "after": [str(pictures / "t.png")]}
    datasets.Dataset.from_dict(table).save_to_disk(tmp_path / "ds")
    src = parse_source({"path": str(tmp_path / "ds"),
                        "columns": {"source_images": "before", "query": "instruction", "target_image": "after"}}, "x")
    (record,) = read_source(src)
    assert record.task == "edit" and record.caption == "<image>Make the square yellow."
    assert record.images[-1] == pictures / "t.png" and record.sources[0].is_file()   # stored from the bytes


def test_an_edit_renders_as_a_generation_prompt_with_its_sources(tiny_processor):
    from janus_ft.data.conversation import render, render_text
    from janus_ft.data.tokens import encode

    record = parse({"query": "<image>Make the square red.", "response": "<image>", "images": ["a.png", "t.png"],
                    "system": "ignored: image prompts carry no system prompt"})
    pieces = render(record, "janus-pro")
    assert render_text(pieces) == ("<|User|>: <image_placeholder>\nMake the square red.\n\n<|Assistant|>:"
                                   "<begin_of_image>…<end_of_image>")
    sp, n = SpecialIds.from_tokenizer(tiny_processor.tokenizer), tiny_processor.num_image_tokens
    ids, labels = encode(pieces, tiny_processor.tokenizer, sp, n, codes=list(range(5, 5 + n)))
    boi = [i for i, t in enumerate(ids) if t == sp.boi]
    assert len(boi) == 2 and ids[boi[0] + 1: boi[0] + 1 + n] == [sp.image] * n
    assert labels[boi[1] + 1: boi[1] + 1 + n] == list(range(5, 5 + n))   # <begin_of_image> predicts code 0
    assert [x for x in labels if x != IGNORE_INDEX] == list(range(5, 5 + n))   # the sources are never supervised


@pytest.fixture(scope="module")
def edits(pictures, tiny_base):
    """Two edits (one with two sources), their codes from the tiny model's VQ."""
    model, processor = tiny_base
    path = write_jsonl(pictures / "edits.jsonl", [
        {"query": "<image>Make the square yellow.", "response": "<image>", "images": ["a.png", "t.png"]},
        {"query": "Put <image> on <image>, please", "response": "<image>", "images": ["b.png", "c.png", "t.png"]}])
    records = load_records([path])
    paths = coded_images({"edit": [r.images for r in records]}, source_codes=True)
    codes = dict(zip(map(str, paths), encode_images(model, [Image.open(p) for p in paths]).tolist()))
    return records, codes


def dataset(edits, processor, **settings) -> JanusDataset:
    records, codes = edits
    return JanusDataset(records, processor, "janus-pro", codes=codes, edit=EditSettings(**settings))


def test_rows_of_each_condition(edits, tiny_processor):
    ds = dataset(edits, tiny_processor, source_codes=True)
    sp, n = ds.special, tiny_processor.num_image_tokens
    full, sources, none = (ds.edit_sample(1, c) for c in (FULL, SOURCES, NONE))
    ids = full["input_ids"].tolist()
    boi = [i for i, t in enumerate(ids) if t == sp.boi]
    assert len(boi) == 5 and len(ids) == len(ds.examples[1].input_ids) + 2 * (n + 2) == ds.lengths()[1]
    # source 1 (SigLIP block), its code block, source 2, its code block, then the target
    codes = full["source_codes"].tolist()
    assert codes[boi[1] + 1: boi[1] + 1 + n] == edits[1][str(ds.examples[1].record.sources[0])]
    assert codes[boi[3] + 1: boi[3] + 1 + n] == edits[1][str(ds.examples[1].record.sources[1])]
    assert sum(c != IGNORE_INDEX for c in codes) == 2 * n and full["pixel_values"].shape[0] == 2
    # the instruction dropped: every prompt token but BOS, the image blocks and the target's BOI is pad
    kept = sources["input_ids"].tolist()
    blocks = {i for b in boi[:4] for i in range(b, b + n + 2)}
    assert all(kept[i] == (ids[i] if i in blocks or i == 0 or i >= boi[4] else sp.pad) for i in range(len(ids)))
    assert torch.equal(sources["source_codes"], full["source_codes"]) and "pixel_values" in sources
    # both dropped: the prompt is pad from BOS to the target, nothing of the sources is embedded
    blank = none["input_ids"].tolist()
    assert blank[0] == sp.bos and set(blank[1:boi[4]]) == {sp.pad} and blank[boi[4]:] == ids[boi[4]:]
    assert "source_codes" not in none and "pixel_values" not in none
    for row in (full, sources, none):
        assert torch.equal(row["labels"], full["labels"]) and row["task"] == EDIT
    # without source codes the code blocks are not there at all
    plain = dataset(edits, tiny_processor).edit_sample(1, FULL)
    assert plain["input_ids"].tolist() == ds.examples[1].input_ids and "source_codes" not in plain


def test_dropout_rates_and_their_draws_by_position(edits, tiny_processor):
    """The mixture draws each edit sample's condition from its position: the rates hold, and a
    position always gets the same sample (so a resumed run replays it)."""
    from janus_ft.data.mixture import MixtureDataset

    ds = dataset(edits, tiny_processor, source_codes=True, source_code_dropout=0.5, cfg_dropout=0.2,
                 uncond_dropout=0.1)
    draws = [ds.edit.draw(random.Random(f"edit-7-{p}")) for p in range(20000)]
    share = {c: sum(d[0] == c for d in draws) / len(draws) for c in (FULL, SOURCES, NONE)}
    assert share[NONE] == pytest.approx(0.1, abs=0.01) and share[SOURCES] == pytest.approx(0.2, abs=0.01)
    kept = [coded for condition, coded in draws if condition != NONE]
    assert sum(kept) / len(kept) == pytest.approx(0.5, abs=0.015)
    assert all(coded for condition, coded in draws if condition == NONE)   # pads where the blocks were
    mixture = MixtureDataset({"edit": ds}, {}, global_batch=2, n_steps=40, seed=7)
    seen = {"none": 0, "sources": 0, "no codes": 0}
    for position in range(len(mixture)):
        sample = mixture[position]
        assert torch.equal(sample["input_ids"], mixture[position]["input_ids"])
        seen["none"] += "pixel_values" not in sample
        seen["no codes"] += "pixel_values" in sample and "source_codes" not in sample
        seen["sources"] += "pixel_values" in sample and bool((sample["input_ids"] == ds.special.pad).any())
    assert all(seen.values()), seen


def test_batched_packed_and_alone_losses_agree_with_source_codes(edits, tiny_model, tiny_processor, samples_mixed):
    pad = tiny_processor.tokenizer.pad_token_id
    with torch.no_grad():
        alone = [compute_loss_parts(tiny_model, collate([s], pad)) for s in samples_mixed]
        batched = compute_loss_parts(tiny_model, JanusCollator(pad, image_token_id=tiny_model.config.image_token_id)(
            samples_mixed))
        packed = compute_loss_parts(tiny_model, pack(samples_mixed))
    want = sum(float(a.total) for a in alone)
    assert float(batched.total) == pytest.approx(want, rel=1e-5) and float(packed.total) == pytest.approx(want, rel=1e-5)
    assert batched.per_task[EDIT][1] == 2 * tiny_processor.num_image_tokens
    # the source codes are read: other codes in the blocks give another edit loss
    swapped = collate(samples_mixed, pad)
    swapped["source_codes"] = torch.where(swapped["source_codes"] >= 0, (swapped["source_codes"] + 1) % 256,
                                          swapped["source_codes"])
    with torch.no_grad():
        assert float(compute_loss_parts(tiny_model, swapped).total) != pytest.approx(want, rel=1e-4)


@pytest.fixture()
def samples_mixed(edits, tiny_processor, pictures):
    """An understanding sample between an edit with source codes and one without."""
    ds = dataset(edits, tiny_processor, source_codes=True)
    und = JanusDataset([parse({"query": "<image>What colour?", "response": "red", "images": [str(pictures / "a.png")]})],
                       tiny_processor, "janus-pro")
    return [ds.edit_sample(1, FULL), und[0], ds.edit_sample(0, FULL, coded=False)]


def test_loss_plan_places_source_codes_apart_from_siglip_slots_and_targets(samples_mixed, tiny_processor):
    batch = collate(samples_mixed, tiny_processor.tokenizer.pad_token_id)
    image_id = SpecialIds.from_tokenizer(tiny_processor.tokenizer).image
    plan, n = loss_plan(batch, image_id), tiny_processor.num_image_tokens
    assert len(plan["source_slots"]) == 2 * n and len(plan["gen_targets"]) == 2 * n
    assert len(plan["image_slots"]) == 4 * n == len(batch["pixel_values"]) * n   # 2 + 1 + 1 sources
    flat = batch["source_codes"].flatten()
    assert (flat[plan["source_slots"]] >= 0).all() and (flat[plan["image_slots"]] == IGNORE_INDEX).all()
    assert not set(plan["source_slots"].tolist()) & set(plan["gen_targets"].tolist())


def test_edit_loss_equals_an_independent_forward(edits, tiny_model, tiny_processor):
    """SigLIP features (vision tower, aligner) at the source placeholders, generation embeddings of
    the source codes and of the target codes, text embeddings elsewhere -> LLM -> generation head ->
    cross-entropy over every target code, the first (predicted at <begin_of_image>) included."""
    ds = dataset(edits, tiny_processor, source_codes=True)
    sample = ds.edit_sample(1, FULL)
    with torch.no_grad():
        ours = compute_loss_parts(tiny_model, collate([sample], tiny_processor.tokenizer.pad_token_id))
        logits, target = independent_edit_logits(tiny_model.model, sample, ds.special, tiny_processor.num_image_tokens)
        reference = F.cross_entropy(logits, target, reduction="sum")
    n = tiny_processor.num_image_tokens
    assert sum(1 for c in sample["source_codes"].tolist() if c != IGNORE_INDEX) == 2 * n   # both sources coded
    assert ours.n_tokens == n and set(ours.per_task) == {EDIT}
    assert float(ours.total) == pytest.approx(float(reference), rel=1e-5)
    assert float(F.cross_entropy(logits[1:], target[1:], reduction="sum")) != pytest.approx(float(ours.total))


def independent_edit_logits(m, sample: dict, sp: SpecialIds, n: int):
    """(generation-head logits at the n positions predicting the target codes, the target codes) of
    one edit row (`JanusDataset.edit_sample`), without janus_ft's loss code: each image block before
    the target holds SigLIP features (vision tower, aligner) or, where `source_codes` has codes, their
    generation embeddings; the target codes their generation embeddings; text embeddings elsewhere."""
    ids, labels, codes = sample["input_ids"], sample["labels"], sample.get("source_codes")
    boi = (ids == sp.boi).nonzero().flatten().tolist()
    embeds = m.language_model.embed_tokens(ids).clone()
    features = m.aligner(m.vision_model(sample["pixel_values"]).last_hidden_state) if "pixel_values" in sample else []
    siglip = iter(features)
    for start in boi[:-1]:
        block = slice(start + 1, start + 1 + n)
        coded = codes is not None and int(codes[start + 1]) != IGNORE_INDEX
        embeds[block] = m.generation_aligner(m.generation_embeddings(codes[block])) if coded else next(siglip)
    target = labels[boi[-1] + 1: boi[-1] + 1 + n]
    embeds[boi[-1] + 1: boi[-1] + 1 + n] = m.generation_aligner(m.generation_embeddings(target))
    hidden = m.language_model(inputs_embeds=embeds[None]).last_hidden_state[0]
    return m.generation_head(hidden[boi[-1]: boi[-1] + n]), target


@pytest.mark.parametrize("source_codes", [False, True])
def test_sampling_rows_are_the_rows_training_built(edits, tiny_base, source_codes):
    """The rows `sample_edit_codes` guides with -- conditional, instruction dropped, both dropped --
    are token for token, and embedding for embedding, the rows training builds for those conditions
    (up to the target's <begin_of_image>, where sampling starts)."""
    from janus_ft.infer.generate import sample_edit_codes

    model, processor = tiny_base
    ds = dataset(edits, processor, source_codes=source_codes)
    record = ds.examples[1].record
    llm, table = model.model.language_model, model.get_input_embeddings()
    seen = {}

    def keep(key, value) -> None:   # a hook that returns something would replace what it saw
        seen.setdefault(key, value.clone())

    hooks = [table.register_forward_hook(lambda mod, args, out: keep("ids", args[0])),
             llm.register_forward_pre_hook(lambda mod, args, kw: keep("embeds", kw["inputs_embeds"]), with_kwargs=True)]
    try:
        sample_edit_codes(model, processor, record.caption, record.sources, "janus-pro", n=2, image_cfg=1.5,
                          source_codes=source_codes)
        sampled = seen.copy()
        seen.clear()
        rows = [ds.edit_sample(1, condition) for condition in (FULL, SOURCES, NONE)]
        with torch.no_grad():
            compute_loss_parts(model, collate(rows, processor.tokenizer.pad_token_id))
    finally:
        for hook in hooks:
            hook.remove()
    stop = sampled["ids"].shape[1]
    assert sampled["ids"].shape[0] == 6 and rows[0]["input_ids"][stop - 1] == ds.special.boi
    for k, row in enumerate(rows):   # sampling rows: 2 conditional, 2 instruction dropped, 2 both dropped
        for j in (2 * k, 2 * k + 1):
            assert sampled["ids"][j].tolist() == row["input_ids"][:stop].tolist()
            torch.testing.assert_close(sampled["embeds"][j], seen["embeds"][k, :stop], rtol=1e-5, atol=1e-6)
    assert not torch.equal(sampled["embeds"][0], sampled["embeds"][2])   # the branches differ
    assert not torch.equal(sampled["embeds"][2], sampled["embeds"][4])


@torch.no_grad()
def plain_greedy(model, row: dict, n: int) -> list[int]:
    """Greedy codes from one training row's prefix, the plain way: the whole sequence re-run every
    step (no cache), embeddings built by the training forward's own placement."""
    from janus_ft.model.loss import input_embeddings

    batch = collate([row], 0)
    embeds = input_embeddings(model, batch, loss_plan(batch, model.config.image_token_id))
    codes = []
    for _ in range(n):
        hidden = model.model.language_model(inputs_embeds=embeds).last_hidden_state[:, -1]
        code = model.model.generation_head(hidden).argmax(-1)
        codes.append(int(code))
        embeds = torch.cat([embeds, model.prepare_embeddings_for_image_generation(code[:, None])], dim=1)
    return codes


def test_guidance_scales_pick_their_rows(edits, tiny_base):
    """Greedy, cfg 1 samples the conditional row, cfg 0 the instruction-dropped one, cfg 0 with
    image_cfg 0 the unconditional one (u + image_cfg (s - u) + cfg (c - s)); each equals decoding that
    row alone without a cache."""
    from janus_ft.infer.generate import sample_edit_codes

    model, processor = tiny_base
    ds = dataset(edits, processor, source_codes=True)
    record, n = ds.examples[0].record, processor.num_image_tokens
    stop = target_start(ds.edit_sample(0, FULL)["input_ids"].tolist(), ds.special.boi) + 1
    want = {}
    for condition in (FULL, SOURCES, NONE):
        row = {k: v[:stop] if k in ("input_ids", "labels", "source_codes") else v
               for k, v in ds.edit_sample(0, condition).items()}
        want[condition] = plain_greedy(model, row, n)
    assert len({tuple(v) for v in want.values()}) == 3
    for (cfg, image_cfg), condition in {(1.0, 1.0): FULL, (0.0, 1.0): SOURCES, (0.0, 0.0): NONE}.items():
        got = sample_edit_codes(model, processor, record.caption, record.sources, "janus-pro", n=1, cfg=cfg,
                                image_cfg=image_cfg, temperature=0.0, source_codes=True)
        assert got[0].tolist() == want[condition], (cfg, image_cfg)
