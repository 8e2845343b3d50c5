"""`janus-ft sft` end to end on the tiny model: it learns a task that needs the image, trains exactly
the selected parameters, leaves everything else bit-identical, writes a plain-PEFT adapter, and
resumes to the same result."""

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from janus_ft.cli import main
from janus_ft.data.records import read_records

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "data_templates"))
COLOURS = ["red", "green", "blue", "yellow"]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from make_shapes import make_shapes
    return make_shapes(tmp_path_factory.mktemp("shapes"), n=240, seed=1, size=64, n_val=40)


def answer_scores(model, processor, record):
    """Log-likelihood of each colour as the answer, scored by the model's own text head."""
    from janus_ft.data.collate import collate
    from janus_ft.data.dataset import JanusDataset
    from janus_ft.model.loss import compute_loss_parts

    scores = []
    for colour in COLOURS:
        record.turns = [(record.turns[0][0], colour)]
        ds = JanusDataset([record], processor, "janus-pro")
        with torch.no_grad():
            parts = compute_loss_parts(model, collate([ds[0]], processor.tokenizer.pad_token_id))
        scores.append(-float(parts.total))
    return scores


def accuracy(model, processor, val_path):
    records = list(read_records(val_path))
    right = 0
    for record in records:
        truth = record.turns[0][1]
        scores = answer_scores(model, processor, record)
        right += COLOURS[max(range(4), key=scores.__getitem__)] == truth
    return right / len(records)


@pytest.fixture(scope="module")
def trained(shapes, tmp_path_factory, tiny_dir):
    out = tmp_path_factory.mktemp("run") / "shapes"
    train, _ = shapes
    import janus_ft
    from janus_ft.recipe import load_recipe
    recipe = load_recipe(None, [
        f"data.train=[{{path: {train}}}]", "data.mix={understanding: 1}", f"output_dir={out}",
        "lora.targets=[llm]", "lora.modules_to_save=[aligner]", "lora.r=8", "lora.alpha=16", "lora.dropout=0.0",
        # 150 steps: held-out accuracy (and greedy exact match) 0.95-1.00 over train.seed 1, 2, 3, 7, 42
        # x 1|2 threads and a second data seed (70 steps gave 0.75-0.78 on some machines and seeds,
        # under the 0.85 this test asks for).
        "train.max_steps=150", "train.learning_rate=5e-3", "train.per_device_train_batch_size=8",
        "train.lr_scheduler_type=constant", "train.save_steps=75", "train.logging_steps=5",
        "train.disable_tqdm=true", "data.max_length=256"])
    return janus_ft.sft(recipe)


def test_learns_a_task_that_needs_the_image(trained, shapes, tiny_model, tiny_processor):
    _, val = shapes
    before = accuracy(tiny_model, tiny_processor, val)
    after = accuracy(trained.model.eval(), tiny_processor, val)
    print(f"held-out colour accuracy: untrained {before:.2f}, trained {after:.2f} (chance 0.25)")
    assert before <= 0.45          # untrained: about chance
    assert after >= 0.85           # trained: far above chance
    losses = [e["loss"] for e in trained.log_history if "loss" in e]
    assert losses[-1] < 0.5 * losses[0]


def test_output_tree_and_plain_peft_adapter(trained, tiny_dir, tiny_processor):
    from peft import PeftModel
    from transformers import JanusForConditionalGeneration

    out = trained.output_dir
    for name in ("adapter_config.json", "adapter_model.safetensors", "recipe.yaml", "loss.png",
                 "mixture.json", "processor_config.json", "tokenizer.json", "checkpoint-75", "checkpoint-150"):
        assert (out / name).exists(), name
    state = json.loads((out / "trainer_state.json").read_text())
    assert any("loss_understanding" in e for e in state["log_history"])
    assert json.loads((out / "mixture.json").read_text())["consumed"]["understanding"] == 150 * 8

    base = JanusForConditionalGeneration.from_pretrained(tiny_dir).eval()
    loaded = PeftModel.from_pretrained(base, out).eval()   # plain PEFT, no janus_ft involved
    ids = tiny_processor(text="<|User|>: <image_placeholder>\nWhat colour is the shape?\n\n<|Assistant|>:",
                         images=[__import__("PIL.Image").Image.new("RGB", (64, 64), (250, 0, 0))],
                         return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(loaded(**ids).logits, trained.model.eval()(**ids).logits, atol=1e-5)


def test_only_selected_parameters_changed(trained, tiny_dir):
    original = load_file(str(Path(tiny_dir) / "model.safetensors"))
    lora_changed = 0
    full_changed = 0
    for name, param in trained.model.named_parameters():
        if "lora_" in name:
            lora_changed += "lora_B" in name and bool(param.abs().sum() > 0)
            continue
        base_name = (name.replace("base_model.model.", "").replace(".base_layer", "")
                     .replace(".original_module", "").replace(".modules_to_save.default", ""))
        if ".modules_to_save." in name:   # the fully trained aligner copy
            full_changed += not torch.equal(param.detach(), original[base_name])
            continue
        assert torch.equal(param.detach(), original[base_name]), f"frozen weight changed: {base_name}"
    assert lora_changed > 0 and full_changed > 0
    trainable = {n for n, p in trained.model.named_parameters() if p.requires_grad}
    assert {n for n in trainable if "lora_" in n} and all(".language_model." in n for n in trainable if "lora_" in n)
    assert {n for n in trainable if "lora_" not in n} == {
        n for n, _ in trained.model.named_parameters() if "aligner.modules_to_save.default" in n}


def test_resume_equals_straight_run(tmp_path, shapes):
    train, _ = shapes
    common = [f"data.train=[{{path: {train}}}]", "data.mix={understanding: 1}", "lora.targets=[llm, aligner]",
              "train.max_steps=6", "train.save_steps=3", "train.per_device_train_batch_size=4",
              "train.gradient_accumulation_steps=2", "train.learning_rate=1e-2", "lora.dropout=0.1",
              "train.disable_tqdm=true"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(["sft", "--recipe", str(REPO / "recipes/demo.yaml"), *common, f"output_dir={straight}"]) == 0
    resumed.mkdir()
    shutil.copytree(straight / "checkpoint-3", resumed / "checkpoint-3")
    assert main(["sft", "--recipe", str(REPO / "recipes/demo.yaml"), *common, f"output_dir={resumed}",
                 "train.resume=true"]) == 0
    a, b = load_file(str(straight / "adapter_model.safetensors")), load_file(str(resumed / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key
    # and not trivially: the step-3 adapter differs from the final one
    mid = load_file(str(straight / "checkpoint-3" / "adapter_model.safetensors"))
    assert any(not torch.allclose(mid[k], a[k]) for k in a)


def test_demo_recipe_end_to_end(tmp_path, capsys):
    """The README's main job, shortened: all three tasks mixed, adapter and plot written, and the
    console closes with the summary (one process: no `[RANK 0]` prefix)."""
    out = tmp_path / "demo"
    assert main(["sft", "--recipe", str(REPO / "recipes/demo.yaml"), "train.max_steps=6", "train.eval_answers=3",
                 "train.save_steps=100", "train.eval_steps=3", "train.disable_tqdm=true", f"output_dir={out}",
                 "train.report_to=[tensorboard]"]) == 0
    console = capsys.readouterr().out
    assert "janus-ft: 6 steps in " in console and "janus-ft: adapter, processor, recipe.yaml" in console
    assert "[RANK" not in console
    mixture = json.loads((out / "mixture.json").read_text())
    assert mixture["consumed"] == {"understanding": 30, "text": 6, "generation": 24, "edit": 0}
    assert not list(out.glob("checkpoint-*"))   # save_steps beyond max_steps: the final adapter only
    log = json.loads((out / "trainer_state.json").read_text())["log_history"]
    keys = set().union(*log)
    assert {"loss_understanding", "loss_text", "loss_generation", "eval_loss", "eval_loss_generation"} <= keys
    assert (out / "loss.png").stat().st_size > 10_000
    # evaluation during training: losses and generated-answer metrics in one entry before the first
    # step (the recipe's eval_on_start), at 3 and at 6 (not repeated after training), sample grids as
    # PNG and in TensorBoard next to the scalars
    probes = [e for e in log if "eval_understanding_exact_match" in e]
    assert [e["step"] for e in probes] == [e["step"] for e in log if "eval_loss" in e] == [0, 3, 6]
    assert all(0 <= e["eval_understanding_cer"] for e in probes)
    grid = Image.open(out / "samples" / "step-3.png")
    assert grid.size == (4 * 64 + 3 * 2, 2 * 64 + 2)   # 4 val captions: references over samples
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    run_dir, = out.glob("runs/*")
    events = EventAccumulator(str(run_dir), size_guidance={"images": 0}).Reload()
    assert [e.step for e in events.Images("eval/samples")] == [0, 3, 6]
    assert "eval/understanding_exact_match" in events.Tags()["scalars"]


def test_demo_recipe_learns_every_task(tmp_path):
    """The README's main job as shipped: the understanding and generation validation losses fall, and
    generation's at every evaluation (the unrelated scenes bundled before made it rise from step 30
    on: memorised, not learned). Measured on 2 cores, seeds 0, 1, 2, 7, 42: understanding 6.72 ->
    2.52-2.57, generation 5.71 -> 2.55-2.74, generation's smallest fall between two evaluations 0.19
    (0.48 at the recipe's seed 42, where one and two threads give the same numbers to 3 decimals)."""
    out = tmp_path / "demo"
    assert main(["sft", "--recipe", str(REPO / "recipes/demo.yaml"), f"output_dir={out}",
                 "train.disable_tqdm=true"]) == 0
    log = json.loads((out / "trainer_state.json").read_text())["log_history"]
    evals = [e for e in log if "eval_loss" in e]
    assert [e["step"] for e in evals] == [0, 20, 40, 60]
    understanding = [e["eval_loss_understanding"] for e in evals]
    generation = [e["eval_loss_generation"] for e in evals]
    print(f"eval_loss_understanding {understanding}\neval_loss_generation {generation}")
    assert understanding[-1] < understanding[0] - 2.0
    assert understanding[-1] < understanding[1] - 0.2     # still learning after step 20: measured 0.45-1.0
    assert generation[-1] < generation[0] - 1.5
    assert all(later < earlier for earlier, later in zip(generation, generation[1:]))


@pytest.fixture(scope="module")
def subjects(tmp_path_factory):
    """8 captioned subjects x 24 noisy shots: 20 per subject to train, 4 unseen shots to val."""
    from captions.make_captions import make_subject_shots
    return make_subject_shots(tmp_path_factory.mktemp("subjects"), subjects=8, shots=24, n_val=4, noise=3)


@pytest.fixture(scope="module")
def trained_generation(subjects, tmp_path_factory):
    import janus_ft
    from janus_ft.recipe import load_recipe

    train, _ = subjects
    out = tmp_path_factory.mktemp("run") / "t2i"
    return janus_ft.sft(load_recipe(REPO / "recipes/t2i_lora.yaml", [
        "model.path=tiny", "model.dtype=float32", f"data.train=[{{path: {train}}}]", f"output_dir={out}",
        "data.max_length=256", "lora.r=8", "lora.alpha=16", "lora.dropout=0.0", "lora.targets=[llm, gen_aligner]",
        "lora.modules_to_save=[gen_head]", "train.max_steps=150", "train.learning_rate=5e-3",
        "train.per_device_train_batch_size=8", "train.gradient_accumulation_steps=1", "train.save_steps=1000",
        "train.disable_tqdm=true"]))


def generation_nll(model, processor, jsonl):
    from janus_ft.data.dataset import build_datasets, read_sources
    from janus_ft.eval.evaluate import task_loss
    from janus_ft.recipe import DataSource, load_recipe

    ds = build_datasets(read_sources([DataSource(str(jsonl))]), model, processor, load_recipe(None, [
        f"data.train=[{{path: {jsonl}}}]"]), "janus-pro")["generation"]
    total, tokens = task_loss(model, ds, processor.tokenizer.pad_token_id, 16)
    return total / tokens, ds


def cfg_match(model, processor, train_ds, per_subject=20, subjects=4):
    """Fraction of code positions where CFG samples (scale 5, temperature 1) for a trained caption
    equal that subject's most frequent training code at the position."""
    from janus_ft.infer.generate import sample_codes

    codes = torch.tensor([[c for c in ex.labels if c != -100] for ex in train_ds.examples])
    hits = []
    for s in range(subjects):
        target = codes[s * per_subject:(s + 1) * per_subject].mode(dim=0).values
        caption = train_ds.examples[s * per_subject].record.caption
        samples = sample_codes(model, processor, caption, "janus-pro", n=8, cfg=5.0, temperature=1.0, seed=s)
        hits.append((samples == target).float().mean().item())
    return sum(hits) / len(hits)


def test_learns_to_generate_a_captioned_set(trained_generation, subjects, tiny_model, tiny_processor):
    train, val = subjects
    before_nll, _ = generation_nll(tiny_model, tiny_processor, val)
    after_nll, _ = generation_nll(trained_generation.model.eval(), tiny_processor, val)
    _, train_ds = generation_nll(tiny_model, tiny_processor, train)
    before = cfg_match(tiny_model, tiny_processor, train_ds)
    after = cfg_match(trained_generation.model, tiny_processor, train_ds)
    print(f"held-out code NLL {before_nll:.2f} -> {after_nll:.2f} nats/token; "
          f"CFG samples matching trained codes {before:.3f} -> {after:.3f}")
    assert before_nll > 5.0                     # about ln(256) = 5.55: the base knows nothing
    # measured over train.seed 1, 2, 3 x 1|2 threads: NLL ratio 0.55-0.56, CFG match 0.002 -> 0.12-0.18
    assert after_nll < 0.7 * before_nll
    assert before < 0.02 and after > 5 * max(before, 0.01)


def test_eval_compare_base_reports_what_training_did(trained, shapes, trained_generation, subjects, tmp_path):
    """`janus-ft eval --compare-base` on the two learning runs: the improvement shows on its own path."""
    for run, val, task in ((trained, shapes[1], "understanding"), (trained_generation, subjects[1], "generation")):
        out = tmp_path / task
        assert main(["eval", "--recipe", str(run.output_dir / "recipe.yaml"), "--adapter", str(run.output_dir),
                     "--compare-base", "--data", str(val), "--max-new-tokens", "3", "--output", str(out)]) == 0
        report = json.loads((out / "eval.json").read_text())
        base, tuned, delta = report["results"]["base"][task], report["results"]["adapter"][task], report["delta"][task]
        print(f"{task}: loss {base['loss']:.2f} -> {tuned['loss']:.2f}", {k: round(v, 3) for k, v in delta.items()})
        assert delta["loss"] < -1.0
        if task == "understanding":
            assert base["exact_match"] <= 0.3 and tuned["exact_match"] >= 0.8
        else:
            assert (out / "samples_base.png").is_file() and (out / "samples_adapter.png").is_file()
        assert "| " + task in (out / "eval.md").read_text()
