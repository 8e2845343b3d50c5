"""`janus-ft dpo` on image-edit pairs: the pair shapes (and bad pairs named by file:line:field), both
sides of a pair laid out and blanked alike, each side's log-prob equal to a forward written without
janus_ft's loss code (tests/test_edit.py's), and a mixed run that logs the edit metrics."""

from __future__ import annotations

import json
import math
import random
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import write_jsonl
from test_dpo import run_dpo_cli, with_random_adapter
from test_edit import independent_edit_logits

from janus_ft.cli import main
from janus_ft.data.edit import FULL, NONE, SOURCES, EditSettings
from janus_ft.data.preference import PairCollator, PairDataset, check_pair_images, parse_pair
from janus_ft.data.sources import read_source
from janus_ft.errors import BadRecord
from janus_ft.model.logprobs import target_logps
from janus_ft.model.preference import preference_loss
from janus_ft.recipe import parse_source

REPO = Path(__file__).resolve().parent.parent
PAIRS = REPO / "data_templates" / "edit_pairs"
EDIT = {"query": "Put <image> on <image>", "response": "<image>", "images": ["a.png", "b.png", "t.png"]}


def parse(obj, path=Path("/d/pairs.jsonl"), line=3):
    return parse_pair(obj, path, line)


@pytest.mark.parametrize("rejected", ["x.png", ["x.png"], ["a.png", "b.png", "x.png"], ["./a.png", "b.png", "x.png"]])
def test_an_edit_pair_rejects_a_target(rejected):
    pair = parse({**EDIT, "rejected_images": rejected})
    assert (pair.task, pair.rejected.task) == ("edit", "edit")
    assert pair.rejected.images == [Path("/d/a.png"), Path("/d/b.png"), Path("/d/x.png")]
    assert (pair.rejected.turns, pair.rejected.sources) == (pair.chosen.turns, pair.chosen.sources)
    assert pair.rejected_field == ("rejected_images[2]" if len(rejected) == 3 else "rejected_images[0]")
    columns = parse({"query": "Make it red.", "source_images": "a.png", "target_image": "t.png", "rejected_images": "x.png"})
    assert columns.rejected.images == [Path("/d/a.png"), Path("/d/x.png")] and columns.task == "edit"


@pytest.mark.parametrize("row, field, problem", [
    ({**EDIT, "rejected_images": ["b.png", "x.png"]}, "rejected_images",
     "2 image(s): an edit pair's rejected_images is the rejected target (1 image) or the chosen side's 2 source(s) "
     "then the rejected target"),
    ({**EDIT, "rejected_images": []}, "rejected_images", "0 image(s)"),
    ({**EDIT, "rejected_images": ["a.png", "c.png", "x.png"]}, "rejected_images[1]",
     "the chosen side's source is"),
    ({**EDIT, "rejected_images": ["t.png"]}, "rejected_images[0]", "is the chosen target: the pair prefers nothing"),
    ({**EDIT, "rejected_images": ["a.png", "b.png", "t.png"]}, "rejected_images[2]", "is the chosen target"),
    ({**EDIT, "rejected_images": ["a.png", 7, "x.png"]}, "rejected_images", "expected a list of image paths"),
    ({**EDIT, "rejected_response": "<image>"}, "rejected_response", "differs in its target image only"),
])
def test_bad_edit_pairs_name_file_line_and_field(tmp_path, row, field, problem):
    path = write_jsonl(tmp_path / "bad.jsonl", [{**EDIT, "rejected_images": "x.png"}, row])
    with pytest.raises(BadRecord) as err:
        read_source(parse_source(str(path), "s"), parse=parse_pair)
    assert (err.value.line, err.value.field) == (2, field) and problem in err.value.problem
    assert str(err.value).startswith(f"{path}:2:")


def test_an_unreadable_rejected_target_is_named_as_the_pair_gives_it(tmp_path):
    for name in ("a.png", "b.png", "t.png"):
        (tmp_path / name).write_bytes((PAIRS / "images").iterdir().__next__().read_bytes())
    pairs = [parse({**EDIT, "rejected_images": r}, tmp_path / "p.jsonl", line)
             for line, r in enumerate(("gone.png", ["a.png", "b.png", "gone.png"]), 1)]
    assert [(e.field, "gone.png" in e.problem) for e in check_pair_images(pairs)] == [
        ("rejected_images[0]", True), ("rejected_images[2]", True)]


def test_shipped_edit_pairs_are_what_make_edits_writes_and_data_check_lists_them(tmp_path, capsys):
    sys.path.insert(0, str(REPO / "data_templates"))
    from make_edits import make_edits

    make_edits(tmp_path / "p", n=24, n_val=6, rejected=True)
    fresh = {p.relative_to(tmp_path / "p"): p.read_bytes() for p in (tmp_path / "p").rglob("*") if p.is_file()}
    assert fresh == {p.relative_to(PAIRS): p.read_bytes() for p in PAIRS.rglob("*") if p.is_file()}
    make_edits(tmp_path / "plain", n=24, n_val=6)   # the same edits: --rejected only adds the wrong-colour targets
    plain = [json.loads(x) for x in (tmp_path / "plain" / "train.jsonl").read_text().splitlines()]
    rows = [json.loads(x) for x in (PAIRS / "train.jsonl").read_text().splitlines()]
    assert [{k: v for k, v in r.items() if k != "rejected_images"} for r in rows] == plain
    pairs = read_source(parse_source(str(PAIRS / "train.jsonl"), "s"), parse=parse_pair)
    assert len(pairs) == 18 and {p.task for p in pairs} == {"edit"}
    assert main(["data", "check", str(PAIRS / "train.jsonl"), "--as", "dpo"]) == 0
    assert "18 valid pair(s): understanding 0, text 0, generation 0, edit 18" in capsys.readouterr().out


@pytest.fixture()
def edit_pairs(tiny_processor):
    """Two shipped edit pairs with the sources also as codes; arbitrary codes for every image."""
    pairs = read_source(parse_source(str(PAIRS / "val.jsonl"), "s"), parse=parse_pair)[:2]
    n = tiny_processor.num_image_tokens
    paths = sorted({str(p) for pair in pairs for side in (pair.chosen, pair.rejected) for p in side.images})
    codes = {p: [(11 * i + 5 * j) % 256 for j in range(n)] for i, p in enumerate(paths)}
    settings = EditSettings(source_codes=True, source_code_dropout=0.5, cfg_dropout=0.3, uncond_dropout=0.3)
    return PairDataset(pairs, tiny_processor, "janus-pro", codes=codes, edit=settings)


def test_both_sides_of_an_edit_pair_share_every_row_but_the_target(edit_pairs):
    assert edit_pairs.variants(0.0) == [(FULL, True), (FULL, False), (SOURCES, True), (SOURCES, False), (NONE, True)]
    special, drawn = edit_pairs.chosen.special, set()
    for seed in range(40):
        pair = edit_pairs.sample(seed % 2, draw=random.Random(seed))
        chosen, rejected = pair["chosen"], pair["rejected"]
        assert torch.equal(chosen["input_ids"], rejected["input_ids"])
        for key in ("source_codes", "pixel_values"):
            assert (key in chosen) == (key in rejected) and (key not in chosen or torch.equal(chosen[key], rejected[key]))
        differ = (chosen["labels"] != rejected["labels"]).nonzero().flatten()
        assert len(differ) > 0 and all(int(chosen["input_ids"][i]) == special.image for i in differ)
        drawn.add((bool((chosen["input_ids"] == special.pad).any()), "pixel_values" in chosen, "source_codes" in chosen))
    # the instruction kept, dropped, and dropped with the sources; with and without source codes
    assert drawn == {(False, True, True), (False, True, False), (True, True, True), (True, True, False),
                     (True, False, False)}


def test_edit_pair_logps_equal_an_independent_forward(edit_pairs, tiny_model, tiny_processor):
    """Each side's log-prob is the sum over all N target codes (generation head, the first predicted
    at the target's <begin_of_image>), sources as SigLIP features and as codes, on a blanked layout too."""
    model = with_random_adapter(tiny_model, seed=2)
    collator = PairCollator(tiny_processor.tokenizer.pad_token_id, model.config.image_token_id)
    n, core = tiny_processor.num_image_tokens, model.base_model.model.model
    for variant in ((FULL, True), (SOURCES, False)):
        samples = [edit_pairs.variant_sample(i, variant) for i in range(2)]
        batch = collator(samples)
        rows = [s["chosen"] for s in samples] + [s["rejected"] for s in samples]

        def by_hand(rows=rows):
            out = []
            for row in rows:
                logits, target = independent_edit_logits(core, row, edit_pairs.chosen.special, n)
                out.append(float(F.log_softmax(logits, -1).gather(1, target[:, None]).sum()))
            return out

        with torch.no_grad():
            policy, hand = target_logps(model, batch), by_hand()
            with model.disable_adapter():
                ref, hand_ref = target_logps(model, batch).sums, by_hand()
        assert policy.sums.tolist() == pytest.approx(hand, abs=1e-4)
        assert ref.tolist() == pytest.approx(hand_ref, abs=1e-4)
        assert policy.counts.tolist() == [n] * 4
        h = 0.1 * ((hand[0] - hand_ref[0]) - (hand[2] - hand_ref[2]))
        got = preference_loss(policy.sums[:2], policy.sums[2:], ref[:2], ref[2:], policy.counts[:2], policy.counts[2:])
        assert float(got.losses[0]) == pytest.approx(-math.log(1 / (1 + math.exp(-h))), abs=1e-5)
        assert abs(hand[0] - hand[2]) > 1e-3 and abs(h) > 1e-5


def test_mixed_run_with_edit_pairs_logs_edit_metrics_and_writes_a_peft_adapter(tmp_path, tiny_dir):
    out = tmp_path / "edit"
    assert run_dpo_cli("dpo_edit.yaml", out, "train.max_steps=4", "train.logging_steps=2", "train.eval_steps=4") == 0
    log = json.loads((out / "trainer_state.json").read_text())["log_history"]
    train = [e for e in log if "loss" in e]
    for key in ("rewards/chosen_edit", "rewards/rejected_edit", "rewards/margins_edit", "logps/chosen_edit", "loss_edit"):
        assert math.isfinite(train[-1][key]), key
    assert 0 <= train[-1]["rewards/accuracies_edit"] <= 1 and train[-1]["logps/chosen_edit"] < 0
    evals = [e for e in log if "eval_rewards/accuracies_edit" in e]
    assert evals and 0 <= evals[-1]["eval_rewards/accuracies_edit"] <= 1
    consumed = json.loads((out / "mixture.json").read_text())["consumed"]
    assert consumed == {"understanding": 4, "text": 0, "generation": 4, "edit": 8}
    from peft import PeftModel
    from transformers import JanusForConditionalGeneration

    tuned = PeftModel.from_pretrained(JanusForConditionalGeneration.from_pretrained(tiny_dir), out)
    moved = [p for name, p in tuned.named_parameters() if "lora_B" in name]
    assert moved and any(float(p.abs().max()) > 0 for p in moved)   # trained: LoRA B starts at zero


def test_precomputed_reference_of_every_edit_layout_gives_the_live_reference_losses(tmp_path):
    """Both sides of an edit pair are blanked alike; the reference log-probs precomputed per layout
    are those the live reference forward computes on the drawn rows."""
    common = ["train.max_steps=3", "train.logging_steps=1", "train.eval_steps=null", "data.val=[]",
              "train.save_steps=1000", "data.mix={edit: 1}", "data.edit_cfg_dropout=0.3", "data.edit_uncond_dropout=0.3"]
    logs = []
    for precompute in ("true", "false"):
        assert run_dpo_cli("dpo_edit.yaml", tmp_path / precompute, *common, f"dpo.precompute_ref={precompute}") == 0
        state = json.loads((tmp_path / precompute / "trainer_state.json").read_text())
        logs.append([e for e in state["log_history"] if "loss" in e])
    for a, b in zip(*logs):
        for key in ("loss", "rewards/margins_edit", "logps/rejected_edit"):
            assert a[key] == pytest.approx(b[key], abs=1e-5), key
    assert logs[0][-1]["rewards/margins_edit"] != 0
