"""Packing and length grouping on a length-skewed mix of all three tasks: how much of each batch is
real tokens when packed, padded as scheduled, and padded after grouping each step by length; and
grouping never moves a sample out of its optimizer step."""

import json
from collections import Counter
from pathlib import Path

import pytest

from janus_ft.data.collate import collate, pack, real_token_fraction
from janus_ft.data.dataset import JanusDataset, load_records
from janus_ft.data.mixture import MixtureDataset
from janus_ft.errors import RecipeError
from janus_ft.recipe import load_recipe

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "data_templates" / "samples"
MICRO_BATCH, ACCUMULATION, STEPS = 4, 4, 8


def long_records(tmp_path) -> dict[str, list]:
    """Long understanding (several images, a history) and long text (many turns) beside the
    bundled short samples: the length skew of real data, where a 576-token image meets a
    one-line question."""
    images = sorted(str(p) for p in (SAMPLES / "images").glob("shape_*.png"))
    understanding = [{"query": "<image>" * (2 + i % 3) + "Which shape is largest?", "response": "The first one.",
                      "images": images[i: i + 2 + i % 3], "history": [["Look at these shapes.", "Okay."]]}
                     for i in range(12)]
    text = [{"query": "And the next one?", "response": str(i * 7),
             "history": [[f"What is {k} times 7?", str(k * 7)] for k in range(4 + i)]} for i in range(8)]
    out = {}
    for task, objs in (("understanding", understanding), ("text", text)):
        path = tmp_path / f"long_{task}.jsonl"
        path.write_text("".join(json.dumps(o) + "\n" for o in objs))
        out[task] = load_records([path])
    return out


@pytest.fixture(scope="module")
def datasets(tiny_processor, tmp_path_factory):
    long = long_records(tmp_path_factory.mktemp("long"))
    out = {}
    for task in ("understanding", "text", "generation"):
        records = load_records([SAMPLES / f"{task}.jsonl"]) + long.get(task, [])
        out[task] = JanusDataset(records, tiny_processor, "janus-pro")   # no codes: lengths only
    return out


def micro_batches(mixture: MixtureDataset) -> list[list[dict]]:
    samples = [mixture[i] for i in range(len(mixture))]
    return [samples[i: i + MICRO_BATCH] for i in range(0, len(samples), MICRO_BATCH)]


def fraction(batches: list[dict]) -> float:
    """Real tokens over slots across the whole run (a per-batch mean would overweight short batches)."""
    slots = sum(b["task_ids"].numel() for b in batches)
    return sum(real_token_fraction(b) * b["task_ids"].numel() for b in batches) / slots


def test_real_token_fraction_packed_padded_and_grouped(datasets, tiny_processor):
    lengths = {t: sorted(len(e.input_ids) for e in d.examples) for t, d in datasets.items()}
    mix, block = {"understanding": 5, "text": 1, "generation": 4}, MICRO_BATCH * ACCUMULATION
    scheduled = MixtureDataset(datasets, mix, block, STEPS, seed=3)
    grouped = MixtureDataset(datasets, mix, block, STEPS, seed=3, group_by_length=True)
    pad = tiny_processor.tokenizer.pad_token_id

    plain_batches, grouped_batches = micro_batches(scheduled), micro_batches(grouped)
    packed = fraction([pack(b) for b in plain_batches])
    padded = fraction([collate(b, pad) for b in plain_batches])
    by_length = fraction([collate(b, pad) for b in grouped_batches])
    print("\nsample lengths (tokens) per task: " + ", ".join(f"{t} {v[0]}-{v[-1]}" for t, v in lengths.items()))
    print(f"real-token fraction over {len(plain_batches)} micro-batches of {MICRO_BATCH}: "
          f"packed {packed:.3f}, padded {padded:.3f}, length-grouped {by_length:.3f}")
    assert packed == 1.0         # padding-free rows (issue 6 asks for >= 0.9)
    assert padded < by_length < packed
    assert padded < 0.8          # the skew is real: plain padding wastes over a fifth of the compute

    # grouping reorders inside each optimizer step only: same samples per step, same task ratio
    for step in range(STEPS):
        span = slice(step * block, (step + 1) * block)
        assert Counter(scheduled.schedule[span]) == Counter(grouped.schedule[span])
    assert grouped.counts(len(grouped)) == scheduled.counts(len(scheduled))


def test_packing_and_length_grouping_exclude_each_other():
    assert load_recipe(REPO / "recipes/demo.yaml", ["data.group_by_length=true"]).data.group_by_length
    with pytest.raises(RecipeError, match="data.packing and data.group_by_length both set"):
        load_recipe(REPO / "recipes/demo.yaml", ["data.packing=true", "data.group_by_length=true"])
