"""janus_ft.train.probe: what evaluation during training adds to the loss -- scored greedy answers and a
grid of drawn images -- on the tiny model, without a trainer."""

from __future__ import annotations

from conftest import SAMPLES
from PIL import Image

from janus_ft.data.dataset import JanusDataset, load_records
from janus_ft.eval.evaluate import answer_records
from janus_ft.infer.chat import Decoding
from janus_ft.train.probe import TrainingProbe


def test_probe_scores_answers_and_draws_fixed_prompts(tiny_base):
    model, processor = tiny_base
    val = JanusDataset(load_records([SAMPLES / "understanding_val.jsonl"]), processor, "janus-pro")
    probe = TrainingProbe(processor, "janus-pro", {"understanding": val}, answers=3, images=2,
                          prompts=["a red circle", "a blue square", "unused: images=2"], max_new_tokens=8)
    assert probe.enabled() and probe.image_count() == 2
    metrics, grid = probe.run(model)
    # the same numbers as eval's own scoring of the first 3 records
    expected, _ = answer_records(model, processor, "janus-pro", val, Decoding(8), limit=3)
    assert metrics == {f"eval_understanding_{k}": v for k, v in expected.items()}
    assert isinstance(grid, Image.Image) and grid.size == (2 * 64 + 2, 64)      # two prompts, no reference row
    assert not model.training


def test_probe_off_when_nothing_to_do(tiny_base):
    _, processor = tiny_base
    assert not TrainingProbe(processor, "janus-pro", {}, answers=8, images=4, prompts=[]).enabled()
    assert not TrainingProbe(processor, "janus-pro", {"understanding": []}, answers=0, images=0, prompts=["x"]).enabled()
