"""The mixed-task forward: per-sample losses independent of batching, padding and packing, a
generation loss equal to a hand-written reference that includes the first image token, and a
loss path that never waits for the device."""

import os
import traceback

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode

from janus_ft.data.collate import JanusCollator, collate, pack
from janus_ft.data.dataset import JanusDataset
from janus_ft.data.records import parse_record
from janus_ft.janus import TASK_IDS
from janus_ft.model.loss import compute_loss_parts

MIXED_RECORDS = [   # one of each task shape, several images and turns; the last is an edit
    {"query": "<image>What colour is the shape?", "response": "red", "images": ["0.png"]},
    {"query": "<image><image>Which one is brighter? Answer with a sentence.", "response": "The first one.",
     "images": ["1.png", "2.png"], "history": [["Hello there", "Hi"]]},
    {"query": "What is 7 + 7?", "response": "14"},
    {"query": "a red circle", "response": "<image>", "images": ["2.png"]},
    {"query": "<image>Describe the picture.", "response": "A dog.", "images": ["2.png"], "system": ""},
    {"query": "<image>Make it red.", "response": "<image>", "images": ["0.png", "2.png"]},   # an edit
]


@pytest.fixture()
def samples(tmp_path, tiny_processor):
    sizes = [(30, 64), (64, 64), (90, 20)]
    for i, size in enumerate(sizes):
        Image.new("RGB", size, (60 * i, 200 - 50 * i, 90)).save(tmp_path / f"{i}.png")
    objs = MIXED_RECORDS
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


class HostReads(TorchDispatchMode):
    """Records the ops a GPU can only run by sending a value back to the host (a count, a scalar,
    a data-dependent shape), with the innermost caller outside torch."""

    OPS = {"aten::nonzero", "aten::_local_scalar_dense", "aten::masked_select", "aten::_unique2",
           "aten::unique_dim", "aten::unique_consecutive", "aten::repeat_interleave", "aten::bincount"}

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[str, str]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        bool_index = name.startswith("aten::index") and any(
            isinstance(t, torch.Tensor) and t.dtype == torch.bool for a in args if isinstance(a, (list, tuple)) for t in a)
        if name in self.OPS or bool_index:
            caller = next(f.filename for f in reversed(traceback.extract_stack())
                          if f"{os.sep}torch{os.sep}" not in f.filename and f.filename != __file__)
            self.calls.append((name, caller))
        return func(*args, **(kwargs or {}))


def test_loss_with_the_collators_plan_reads_nothing_back_from_the_device(tiny_model, samples, tiny_processor):
    """The collator locates targets and image slots on the CPU: forward and backward of the loss
    then call no op that waits for the device (what transformers' own mask code does is its own),
    and give the same losses as a batch that has to find them itself."""
    import janus_ft

    collator = JanusCollator(tiny_processor.tokenizer.pad_token_id, image_token_id=tiny_model.config.image_token_id)
    planned = collator(samples)
    bare = {k: v for k, v in planned.items() if k != "loss_plan"}
    tiny_model.train().model.language_model.requires_grad_(True)   # a backward through the LLM
    ours = os.path.dirname(janus_ft.__file__)
    reads = {}
    for name, batch in (("planned", planned), ("bare", bare)):
        with HostReads() as recorder:
            parts = compute_loss_parts(tiny_model, batch)
            parts.total.backward()
        reads[name] = [op for op, caller in recorder.calls if caller.startswith(ours)]
        reads[name + " parts"] = (float(parts.total.detach()), parts.n_tokens, parts.per_task)
    assert reads["planned"] == []
    assert reads["bare"].count("aten::nonzero") == 3     # the recorder sees them when they happen
    assert reads["planned parts"][1:] == reads["bare parts"][1:]
    assert reads["planned parts"][0] == pytest.approx(reads["bare parts"][0], rel=1e-6)
