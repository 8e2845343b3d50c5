"""The mixed-task forward: per-sample losses independent of batching, padding and packing, and a
generation loss equal to a hand-written reference that includes the first image token."""

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from janus_ft.data.collate import collate, pack
from janus_ft.data.dataset import JanusDataset
from janus_ft.data.records import parse_record
from janus_ft.janus import TASK_IDS
from janus_ft.model.loss import compute_loss_parts


@pytest.fixture()
def samples(tmp_path, tiny_processor):
    sizes = [(30, 64), (64, 64), (90, 20)]
    for i, size in enumerate(sizes):
        Image.new("RGB", size, (60 * i, 200 - 50 * i, 90)).save(tmp_path / f"{i}.png")
    objs = [
        {"query": "<image>What colour is the shape?", "response": "red", "images": ["0.png"]},
        {"query": "<image><image>Which one is brighter? Answer with a sentence.", "response": "The first one.",
         "images": ["1.png", "2.png"], "history": [["Hello there", "Hi"]]},
        {"query": "What is 7 + 7?", "response": "14"},
        {"query": "a red circle", "response": "<image>", "images": ["2.png"]},
        {"query": "<image>Describe the picture.", "response": "A dog.", "images": ["2.png"], "system": ""},
    ]
    records = [parse_record(o, tmp_path / "d.jsonl", i + 1) for i, o in enumerate(objs)]
    codes = {str(tmp_path / "2.png"): [(7 * i) % 256 for i in range(tiny_processor.num_image_tokens)]}
    ds = JanusDataset(records, tiny_processor, "janus-pro", codes=codes)
    return [ds[i] for i in range(len(ds))]


def per_sample(model, batch_fn, samples):
    with torch.no_grad():
        parts = compute_loss_parts(model, batch_fn(samples))
    return parts


def test_batch_padding_and_packing_do_not_move_image_features(tiny_model, samples, tiny_processor):
    pad = tiny_processor.tokenizer.pad_token_id
    with torch.no_grad():
        alone = [compute_loss_parts(tiny_model, collate([s], pad)) for s in samples]
        batched = compute_loss_parts(tiny_model, collate(samples, pad))
        packed = compute_loss_parts(tiny_model, pack(samples))
        reordered = compute_loss_parts(tiny_model, collate(samples[::-1], pad))
    total_alone = sum(float(a.total) for a in alone)
    for parts in (batched, packed, reordered):
        assert parts.n_tokens == sum(a.n_tokens for a in alone)
        assert float(parts.total) == pytest.approx(total_alone, rel=1e-5)
    # per task, too (each task's samples summed alone)
    for task in TASK_IDS.values():
        want = sum(a.per_task[task][0] for a in alone if task in a.per_task)
        assert batched.per_task[task][0] == pytest.approx(want, rel=1e-5)
    # and the understanding loss really depends on the image: swap pixels between two samples
    swapped = collate(samples, pad)
    swapped["pixel_values"] = swapped["pixel_values"].flip(0)
    with torch.no_grad():
        und = TASK_IDS["understanding"]
        assert float(compute_loss_parts(tiny_model, swapped).per_task[und][0]) != pytest.approx(
            batched.per_task[und][0], rel=1e-4)


def test_generation_loss_equals_hand_computed_reference(tiny_model, samples, tiny_processor):
    sample = samples[3]
    batch = collate([sample], tiny_processor.tokenizer.pad_token_id)
    with torch.no_grad():
        parts = compute_loss_parts(tiny_model, batch)
    ids, labels = sample["input_ids"], sample["labels"]
    image_id = tiny_model.config.image_token_id
    boi = int((ids == tiny_processor.tokenizer.convert_tokens_to_ids("<begin_of_image>")).nonzero()[0])
    n = tiny_processor.num_image_tokens
    codes = labels[boi + 1: boi + 1 + n]
    with torch.no_grad():
        # explicit: text embeddings up to <begin_of_image>, then aligner(embedding(codes)), then <end_of_image>
        text_emb = tiny_model.model.language_model.embed_tokens(ids[: boi + 1])
        img_emb = tiny_model.model.generation_aligner(tiny_model.model.generation_embeddings(codes))
        end_emb = tiny_model.model.language_model.embed_tokens(ids[boi + 1 + n:])
        hidden = tiny_model.model.language_model(
            inputs_embeds=torch.cat([text_emb, img_emb, end_emb])[None]).last_hidden_state[0]
        # the hidden state at <begin_of_image> predicts code 0, at image token i predicts code i+1
        logits = tiny_model.model.generation_head(hidden[boi: boi + n])
        reference = F.cross_entropy(logits, codes, reduction="sum")
    assert parts.n_tokens == n and set(parts.per_task) == {2}
    assert float(parts.total) == pytest.approx(float(reference), rel=1e-5)
    assert (ids[boi + 1: boi + 1 + n] == image_id).all()
    # dropping the first image token from the loss (a peer's bug) would give a different number
    assert float(F.cross_entropy(logits[1:], codes[1:], reduction="sum")) != pytest.approx(float(parts.total))


def test_text_loss_equals_transformers_forward(tiny_model, samples, tiny_processor):
    """On text/understanding samples our loss is exactly what the stock forward computes."""
    s = samples[0]
    batch = collate([s], tiny_processor.tokenizer.pad_token_id)
    with torch.no_grad():
        ours = compute_loss_parts(tiny_model, batch)
        stock = tiny_model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"],
                           labels=batch["labels"]).loss
    assert float(ours.total) / ours.n_tokens == pytest.approx(float(stock), rel=1e-5)
