"""`janus-ft dpo`: pair records in every shape (and bad pairs named by file:line:field), the loss
equal to TRL's DPOTrainer on the same log-probabilities and to a hand computation on generation
pairs, and the trainer end to end (metrics per task, resume equal to a straight run)."""

from __future__ import annotations

import json
import math
import shutil
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from conftest import need, write_jsonl
from PIL import Image

from janus_ft.cli import main
from janus_ft.data.preference import PairCollator, PairDataset, parse_pair
from janus_ft.data.sources import read_source
from janus_ft.errors import BadRecord
from janus_ft.model.logprobs import target_logps
from janus_ft.model.preference import preference_loss
from janus_ft.recipe import load_recipe, parse_source

REPO = Path(__file__).resolve().parent.parent
PREF = REPO / "data_templates" / "preference"


@pytest.fixture()
def pair_rows(tmp_path):
    for i, colour in enumerate([(200, 30, 30), (30, 60, 220), (30, 170, 60)]):
        Image.new("RGB", (64, 64), colour).save(tmp_path / f"{i}.png")
    return [
        {"prompt": "<image>What colour is it?", "chosen": "red", "rejected": "blue", "images": ["0.png"]},
        {"query": "<image>What colour is it?", "response": "blue", "rejected_response": "green",
         "images": ["1.png"], "history": [["Hello there", "Hi"]]},
        {"prompt": "Which is a colour: red or circle?", "chosen": "red", "rejected": "circle"},
        {"query": "a red square", "response": "<image>", "images": ["0.png"], "rejected_images": ["1.png"]},
        {"query": "a blue square", "response": "<image>", "images": ["1.png"], "rejected_images": ["2.png"]},
    ]


def test_three_pair_shapes_from_jsonl_and_parquet(tmp_path, pair_rows):
    path = write_jsonl(tmp_path / "pairs.jsonl", pair_rows)
    pairs = read_source(parse_source(str(path), "s"), parse=parse_pair)
    assert [p.task for p in pairs] == ["understanding", "understanding", "text", "generation", "generation"]
    assert pairs[0].chosen.turns[-1][1] == "red" and pairs[0].rejected.turns[-1][1] == "blue"
    assert pairs[1].chosen.turns[0] == pairs[1].rejected.turns[0] == ("Hello there", "Hi")   # history shared
    assert pairs[3].chosen.images == [tmp_path / "0.png"] and pairs[3].rejected.images == [tmp_path / "1.png"]
    import datasets

    rows = [dict(r, **{k: None for k in ("prompt", "chosen", "rejected", "query", "response", "rejected_response",
                                          "rejected_images", "history", "images") if k not in r}) for r in pair_rows]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "pairs.parquet"))
    again = read_source(parse_source(str(tmp_path / "pairs.parquet"), "s"), parse=parse_pair)
    assert [(p.chosen.turns, p.rejected.turns, p.rejected.images) for p in again] == [
        (p.chosen.turns, p.rejected.turns, p.rejected.images) for p in pairs]


@pytest.mark.parametrize("row, field, problem", [
    ({"prompt": "Q?", "chosen": "yes", "rejected": "yes"}, "rejected", "identical"),
    ({"query": "Q?", "response": "a", "rejected_response": ""}, "rejected_response", "empty"),
    ({"prompt": "Q?", "chosen": "yes"}, "rejected", "missing"),
    ({"query": "a cat", "response": "<image>", "images": ["0.png"], "rejected_images": []}, "rejected_images", "empty"),
    ({"query": "a cat", "response": "<image>", "images": ["0.png"], "rejected_images": ["1.png", "2.png"]},
     "rejected_images", "2 rejected image(s) for 1"),
    ({"query": "a cat", "response": "<image>", "images": ["0.png"], "rejected_images": ["0.png"]},
     "rejected_images", "identical"),
    ({"query": "Q?", "response": "a"}, None, "not a preference pair"),
])
def test_bad_pairs_name_file_line_and_field(tmp_path, pair_rows, row, field, problem):
    path = write_jsonl(tmp_path / "bad.jsonl", [pair_rows[2], row])
    with pytest.raises(BadRecord) as err:
        read_source(parse_source(str(path), "s"), parse=parse_pair)
    assert (err.value.line, err.value.field) == (2, field) and problem in err.value.problem
    assert str(err.value).startswith(f"{path}:2:")


def test_missing_rejected_image_exits_2(tmp_path, pair_rows, capsys):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [pair_rows[3], {**pair_rows[4], "rejected_images": ["gone.png"]}])
    code = main(["dpo", "--recipe", str(REPO / "recipes/dpo_t2i.yaml"), f"data.train=[{pairs}]", "data.val=[]",
                 f"output_dir={tmp_path / 'out'}"])
    assert code == 2
    assert f"{pairs}:2: field 'rejected_images[0]'" in capsys.readouterr().err


def pair_batch(tmp_path, rows, processor):
    pairs = [parse_pair(r, tmp_path / "d.jsonl", i + 1) for i, r in enumerate(rows)]
    codes = {str(tmp_path / f"{i}.png"): [(7 * i + 3 * j) % 256 for j in range(processor.num_image_tokens)]
             for i in range(3)}
    samples = []
    for p in pairs:
        ds = PairDataset([p], processor, "janus-pro", codes=codes)
        samples.append(ds.sample(0))
    return PairCollator(processor.tokenizer.pad_token_id, processor.tokenizer.convert_tokens_to_ids(
        "<image_placeholder>"))(samples)


def with_random_adapter(model, seed=0):
    from peft import LoraConfig, get_peft_model

    from janus_ft.model.lora import target_regex

    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=target_regex(
        model, ["llm", "aligner", "gen_head", "gen_aligner"])))
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.normal_(0, 0.3)
    return peft_model


def trl_loss(lp: torch.Tensor, mask: torch.Tensor, ref: torch.Tensor, loss_type: str, beta: float):
    """TRL's own `DPOTrainer._compute_loss` on the given per-token log-probs: a stand-in model returns
    them as TRL's fused LM head would, and the reference log-probs come precomputed."""
    from trl import DPOTrainer

    n = lp.shape[0] // 2
    acc = SimpleNamespace(device="cpu", gather_for_metrics=lambda x: x, gather=lambda x: x)
    zeros = torch.zeros_like(lp[:, 1:])
    fake_model = lambda **kw: SimpleNamespace(log_probs=lp[:, 1:], entropy=zeros, mean_logits=zeros,  # noqa: E731
                                              is_top1=zeros.bool())
    me = SimpleNamespace(model=SimpleNamespace(training=True), accelerator=acc, aux_loss_enabled=False, ld_alpha=None,
                         precompute_ref_logps=True, f_divergence_type="reverse_kl", loss_types=[loss_type],
                         loss_weights=[1.0], beta=beta, label_smoothing=0.0, use_weighting=False,
                         _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0, _tp_size=1)
    inputs = {"input_ids": torch.zeros_like(mask, dtype=torch.long), "attention_mask": torch.ones_like(mask),
              "completion_mask": mask.long(), "ref_chosen_logps": ref[:n], "ref_rejected_logps": ref[n:]}
    loss = DPOTrainer._compute_loss(me, fake_model, inputs, return_outputs=False)
    return float(loss), {k: v[0] for k, v in me._metrics["train"].items()}


@pytest.mark.parametrize("loss_type, beta", [("sigmoid", 0.1), ("sigmoid", 0.5), ("ipo", 0.1)])
def test_loss_equals_trl_dpo_trainer(tmp_path, pair_rows, tiny_model, tiny_processor, loss_type, beta):
    batch = pair_batch(tmp_path, pair_rows[:3], tiny_processor)   # understanding and text pairs
    model = with_random_adapter(tiny_model)
    with torch.no_grad():
        policy = target_logps(model, batch)
        with model.disable_adapter():
            ref = target_logps(model, batch).sums
    n = 3
    ours = preference_loss(policy.sums[:n], policy.sums[n:], ref[:n], ref[n:], policy.counts[:n],
                           policy.counts[n:], beta, loss_type)
    theirs, metrics = trl_loss(policy.tokens, policy.mask, ref, loss_type, beta)
    assert abs(float(ours.losses.mean()) - theirs) < 1e-5
    assert abs(float(ours.chosen_rewards.mean()) - metrics["rewards/chosen"]) < 1e-5
    assert abs(float(ours.rejected_rewards.mean()) - metrics["rewards/rejected"]) < 1e-5
    assert float((ours.chosen_rewards > ours.rejected_rewards).float().mean()) == metrics["rewards/accuracies"]
    assert abs(float(policy.sums[:n].mean()) - metrics["logps/chosen"]) < 1e-4
    assert 0.05 < theirs and abs(float(ours.chosen_rewards.mean())) > 1e-3   # the adapter moved the policy


def test_generation_pair_loss_equals_hand_computation(tmp_path, pair_rows, tiny_model, tiny_processor):
    """Each side's log-prob is the sum over all N codes, the first one included, through the
    generation head -- computed here by hand from the model's parts -- and the loss is the formula."""
    batch = pair_batch(tmp_path, pair_rows[3:4], tiny_processor)
    model = with_random_adapter(tiny_model, seed=1)
    n_codes, boi_id = tiny_processor.num_image_tokens, tiny_processor.tokenizer.convert_tokens_to_ids("<begin_of_image>")

    def by_hand(row):
        ids, labels = batch["input_ids"][row], batch["labels"][row]
        boi = int((ids == boi_id).nonzero()[0])
        codes = labels[boi + 1: boi + 1 + n_codes]
        core = model.base_model.model
        embeds = torch.cat([core.model.language_model.embed_tokens(ids[: boi + 1]),
                            core.model.generation_aligner(core.model.generation_embeddings(codes)),
                            core.model.language_model.embed_tokens(ids[boi + 1 + n_codes:])])
        hidden = core.model.language_model(inputs_embeds=embeds[None]).last_hidden_state[0]
        logits = core.model.generation_head(hidden[boi: boi + n_codes])
        return float(F.log_softmax(logits, -1).gather(1, codes[:, None]).sum())

    with torch.no_grad():
        policy = target_logps(model, batch)
        hand = [by_hand(0), by_hand(1)]
        with model.disable_adapter():
            ref = target_logps(model, batch).sums
            hand_ref = [by_hand(0), by_hand(1)]
    assert policy.sums.tolist() == pytest.approx(hand, abs=1e-4)
    assert ref.tolist() == pytest.approx(hand_ref, abs=1e-4)
    assert policy.counts.tolist() == [n_codes, n_codes]
    beta, eps, alpha = 0.3, 0.2, 0.5
    h = beta * ((hand[0] - hand_ref[0]) - (hand[1] - hand_ref[1]))
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    want = -(1 - eps) * math.log(sig(h)) - eps * math.log(sig(-h)) + alpha * -hand[0] / n_codes
    got = preference_loss(policy.sums[:1], policy.sums[1:], ref[:1], ref[1:], policy.counts[:1], policy.counts[1:],
                          beta, "sigmoid", eps, alpha)
    assert abs(float(got.losses[0]) - want) < 1e-5
    assert abs(h) > 1e-3


def run_dpo_cli(recipe: str, out: Path, *overrides: str) -> int:
    return main(["dpo", "--recipe", str(REPO / "recipes" / recipe), f"output_dir={out}", "train.disable_tqdm=true",
                 *overrides])


def test_mixed_run_logs_per_task_metrics_and_writes_a_peft_adapter(tmp_path, tiny_dir):
    out = tmp_path / "mixed"
    assert run_dpo_cli("dpo_mixed.yaml", out, "train.max_steps=4", "train.logging_steps=2", "train.eval_steps=4",
                       "train.eval_answers=3", "train.eval_images=2") == 0
    log = json.loads((out / "trainer_state.json").read_text())["log_history"]
    # the evaluation probe answers the chosen side of held-out pairs and draws their captions
    probed = [e for e in log if "eval_understanding_exact_match" in e]
    assert probed and 0 <= probed[-1]["eval_understanding_exact_match"] <= 1
    assert "eval_rewards/accuracies_understanding" in probed[-1]   # one entry per evaluation
    from PIL import Image
    assert Image.open(out / "samples" / "step-4.png").size[0] > 0
    train = [e for e in log if "loss" in e]
    for task in ("understanding", "text", "generation"):
        for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
                    "logps/rejected"):
            assert math.isfinite(train[-1][f"{key}_{task}"])
        assert math.isfinite(train[-1][f"loss_{task}"])
    assert "eval_rewards/accuracies_generation" in log[-1] or any("eval_rewards/accuracies_generation" in e for e in log)
    consumed = json.loads((out / "mixture.json").read_text())["consumed"]
    assert consumed == {"understanding": 8, "text": 4, "generation": 4, "edit": 0}
    from peft import PeftModel
    from transformers import JanusForConditionalGeneration

    tuned = PeftModel.from_pretrained(JanusForConditionalGeneration.from_pretrained(tiny_dir), out).eval()
    assert main(["merge", "--adapter", str(out), "--output", str(tmp_path / "merged")]) == 0
    merged = JanusForConditionalGeneration.from_pretrained(tmp_path / "merged").eval()
    ids = torch.tensor([[1, 5, 9, 14, 20]])
    with torch.no_grad():
        assert torch.allclose(tuned(input_ids=ids).logits, merged(input_ids=ids).logits, atol=1e-5)


def test_resume_equals_straight_run(tmp_path):
    from safetensors.torch import load_file

    common = ["train.max_steps=4", "train.save_steps=2", "train.eval_steps=null", "data.val=[]",
              "train.per_device_train_batch_size=2", "train.gradient_accumulation_steps=2", "data.cfg_dropout=0.3"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert run_dpo_cli("dpo_mixed.yaml", straight, *common) == 0
    resumed.mkdir()
    shutil.copytree(straight / "checkpoint-2", resumed / "checkpoint-2")
    assert run_dpo_cli("dpo_mixed.yaml", resumed, *common, "train.resume=true") == 0
    a, b = (load_file(str(d / "adapter_model.safetensors")) for d in (straight, resumed))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    mid = load_file(str(straight / "checkpoint-2" / "adapter_model.safetensors"))
    assert any(not torch.allclose(mid[k], a[k]) for k in a)
    logs = [[e["loss"] for e in json.loads((d / "trainer_state.json").read_text())["log_history"] if "loss" in e]
            for d in (straight, resumed)]
    assert logs[0][2:] == pytest.approx(logs[1][-2:], abs=1e-6)


def test_recipe_dpo_section_takes_trl_names_and_refuses_the_rest(tmp_path):
    r = load_recipe(REPO / "recipes/dpo_mixed.yaml", ["dpo.beta=0.3", "dpo.loss_type=ipo"])
    assert (r.dpo.beta, r.dpo.loss_type) == (0.3, "ipo")
    from janus_ft.errors import RecipeError
    from janus_ft.recipe.dpo import validate_dpo

    with pytest.raises(RecipeError, match="dpo.precompute_ref"):
        load_recipe(REPO / "recipes/dpo_mixed.yaml", ["dpo.precompute_ref_log_probs=true"])
    with pytest.raises(RecipeError, match="did you mean 'dpo.beta'"):
        load_recipe(REPO / "recipes/dpo_mixed.yaml", ["dpo.betta=0.3"])
    for override, message in (("dpo.use_weighting=true", "does not implement"), ("dpo.loss_type=hinge", "unknown"),
                              ("dpo.label_smoothing=0.5", "label_smoothing")):
        with pytest.raises(RecipeError, match=message):
            validate_dpo(load_recipe(REPO / "recipes/dpo_mixed.yaml", [override]))


def test_shipped_pairs_are_what_the_generator_writes_and_parse(tmp_path):
    import sys

    sys.path.insert(0, str(REPO / "data_templates"))
    from make_preference import make_preference

    make_preference(tmp_path / "p", n=60)
    fresh = {p.relative_to(tmp_path / "p"): p.read_bytes() for p in (tmp_path / "p").rglob("*") if p.is_file()}
    shipped = {p.relative_to(PREF): p.read_bytes() for p in PREF.rglob("*") if p.is_file()}
    assert fresh == shipped
    for task, shape in (("understanding", "rejected_response"), ("text", "chosen"), ("generation", "rejected_images")):
        for split in ("", "_val"):
            pairs = read_source(parse_source(str(PREF / f"{task}{split}.jsonl"), "s"), parse=parse_pair)
            assert {p.task for p in pairs} == {task} and len(pairs) == (40 if not split else 20)
        assert shape in json.loads((PREF / f"{task}.jsonl").read_text().splitlines()[0])


def test_precomputed_reference_gives_the_losses_of_the_live_reference(tmp_path):
    common = ["train.max_steps=3", "train.logging_steps=1", "train.eval_steps=null", "data.val=[]",
              "train.save_steps=1000"]
    logs = []
    for precompute in ("true", "false"):
        out = tmp_path / precompute
        assert run_dpo_cli("dpo_mixed.yaml", out, *common, f"dpo.precompute_ref={precompute}") == 0
        logs.append([e for e in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in e])
    for a, b in zip(*logs):
        for key in ("loss", "rewards/margins_generation", "rewards/margins_understanding", "loss_text"):
            assert a[key] == pytest.approx(b[key], abs=1e-5), key
    assert logs[0][-1]["rewards/margins"] != 0


@pytest.mark.multiprocess
@pytest.mark.parametrize("launch", ["ddp", "zero2", "zero3"])
def test_two_gloo_ranks_train_like_one_process(tmp_path, launch):
    """Two ranks (DDP, or DeepSpeed ZeRO-2 / ZeRO-3) train like one process; under ZeRO-3 the
    reference pass (adapter disabled) and the saved adapter work on sharded weights."""
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    common = ["train.max_steps=3", "train.logging_steps=1", "train.eval_steps=null", "data.val=[]", "data.cfg_dropout=0",
              "lora.dropout=0", "train.gradient_accumulation_steps=1", 'train.extra={save_strategy: "no"}',
              "train.disable_tqdm=true", f"data.code_cache={tmp_path / 'vq'}"]
    single, ranks = tmp_path / "single", tmp_path / "ranks"
    assert run_dpo_cli("dpo_mixed.yaml", single, *common, "train.per_device_train_batch_size=4") == 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "janus_ft.cli",
           "dpo", "--recipe", str(REPO / "recipes/dpo_mixed.yaml"), *common, "train.per_device_train_batch_size=2",
           f"output_dir={ranks}"]
    if launch != "ddp":
        need("deepspeed")
        cmd.append(f"train.deepspeed=recipes/deepspeed/{launch}.json")
    run = subprocess.run(cmd, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-6000:]
    if launch != "ddp":   # DeepSpeed really ran: it logs its CPU communication op (a DDP run never mentions it)
        assert "DeepSpeed" in run.stdout + run.stderr
    logs = [[e for e in json.loads((d / "trainer_state.json").read_text())["log_history"] if "loss" in e]
            for d in (single, ranks)]
    assert len(logs[0]) == len(logs[1]) == 3
    for a, b in zip(*logs):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        for key in [k for k in a if k.startswith(("rewards/", "logps/", "loss_"))]:
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    # Adam divides by the gradient's root mean square: where a gradient is ~0 the last-bit
    # differences of a different reduction order move a weight by up to lr; measured: 2.7e-5.
    a, b = (load_file(str(d / "adapter_model.safetensors")) for d in (single, ranks))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)


def test_pairs_with_a_side_too_long_are_dropped_and_named(tmp_path, tiny_model, tiny_processor, caplog):
    """A pair with a side over data.max_length leaves training, with one warning naming the first."""
    import logging

    from accelerate import PartialState

    from janus_ft.train.dpo import build_pair_datasets, read_pairs

    PartialState()   # accelerate's rank-aware logger needs the process state, as training sets it up

    path = write_jsonl(tmp_path / "pairs.jsonl", [
        {"prompt": "Which is a colour: red or circle?", "chosen": "red", "rejected": "circle"},
        {"prompt": "Which?", "chosen": "red", "rejected": "circle " * 40}])
    recipe = load_recipe(REPO / "recipes/dpo_mixed.yaml", ["data.max_length=64"])
    with caplog.at_level(logging.WARNING):
        sets = build_pair_datasets(read_pairs([str(path)], 0), tiny_model, tiny_processor, recipe, "janus-pro")
    assert len(sets["text"]) == 1
    assert (f"dropped 1 text pair(s) with a side longer than data.max_length=64 tokens (first: {path}:2)"
            in caplog.text)
