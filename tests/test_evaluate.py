"""janus_ft.eval.evaluate: `janus-ft eval` on the tiny model and the bundled val samples. Losses are
checked against independent computations (transformers' own loss for understanding, a hand-built
generation forward for image tokens); `--compare-base` reports base, adapter and their delta."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import random_adapter
from PIL import Image

from janus_ft.cli import main
from janus_ft.data.records import read_records
from janus_ft.data.vq import encode_images
from janus_ft.eval.metrics import mean_nll, token_nll

SAMPLES = Path(__file__).resolve().parent.parent / "data_templates" / "samples"
UND_VAL, GEN_VAL = SAMPLES / "understanding_val.jsonl", SAMPLES / "generation_val.jsonl"


@pytest.fixture(scope="module")
def tiny(tiny_dir) -> Path:
    return tiny_dir


@pytest.fixture(scope="module")
def recipe(tiny, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("recipe")
    path = root / "eval.yaml"
    path.write_text(
        f"model: {{path: '{tiny}'}}\n"
        f"data:\n  train: [{{path: '{SAMPLES / 'understanding.jsonl'}'}}]\n"
        f"  val: [{{path: '{UND_VAL}'}}, {{path: '{GEN_VAL}'}}]\n"
        f"  code_cache: '{root / 'codes'}'\n"
        f"train: {{per_device_eval_batch_size: 8}}\n"
        f"output_dir: '{root / 'run'}'\n")
    return path


@pytest.fixture(scope="module")
def adapter(tiny, tmp_path_factory) -> Path:
    """LoRA on the LLM and generation head with random non-zero weights."""
    return random_adapter(tiny, ["llm", "aligner", "gen_head", "gen_aligner"],
                          tmp_path_factory.mktemp("adapter"), seed=3)


@pytest.fixture(scope="module")
def compared(recipe, adapter) -> Path:
    """One `eval --compare-base` run, reported in the default place (ADAPTER/eval)."""
    assert main(["eval", "--recipe", str(recipe), "--adapter", str(adapter), "--compare-base",
                 "--max-new-tokens", "3"]) == 0
    return adapter / "eval"


def _models(tiny, adapter):
    from peft import PeftModel
    from transformers import JanusForConditionalGeneration, JanusProcessor

    base = JanusForConditionalGeneration.from_pretrained(tiny).eval()
    merged = PeftModel.from_pretrained(JanusForConditionalGeneration.from_pretrained(tiny), adapter)
    return base, merged.merge_and_unload().eval(), JanusProcessor.from_pretrained(tiny)


@torch.no_grad()
def _understanding_loss(model, processor) -> float:
    """Token-weighted loss of the answers (and their EOS) with transformers' own `forward(labels=...)`."""
    total, tokens = 0.0, 0
    for record in read_records(UND_VAL):
        user = [{"type": "image"}, {"type": "text", "text": record.turns[0][0].replace("<image>", "")}]
        prompt = processor.apply_chat_template([{"role": "user", "content": user}], add_generation_prompt=True)
        text = prompt + " " + record.turns[0][1] + processor.tokenizer.eos_token
        image = [Image.open(record.images[0]).convert("RGB")]
        inputs = processor(text=text, images=image, return_tensors="pt")
        n_prompt = processor(text=prompt, images=image, return_tensors="pt")["input_ids"].shape[1]
        labels = inputs["input_ids"].clone()
        labels[:, :n_prompt] = -100
        n = int((labels[:, 1:] != -100).sum())
        total += float(model(**inputs, labels=labels).loss) * n
        tokens += n
    return mean_nll(total, tokens)


@torch.no_grad()
def _generation_nll(model, processor) -> float:
    """NLL per image token of the val images' faithful codes, from a hand-built forward."""
    total, tokens = 0.0, 0
    for record in read_records(GEN_VAL):
        codes = encode_images(model, [Image.open(record.images[0])])
        messages = [{"role": "user", "content": [{"type": "text", "text": record.caption}]}]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
        ids = processor(text=prompt, generation_mode="image", return_tensors="pt")["input_ids"]
        image_embeds = model.prepare_embeddings_for_image_generation(codes)
        embeds = torch.cat([model.get_input_embeddings()(ids), image_embeds], dim=1)
        hidden = model.model.language_model(inputs_embeds=embeds).last_hidden_state
        # <begin_of_image> predicts code 0; code i predicts code i+1.
        logits = model.model.generation_head(hidden[0, ids.shape[1] - 1:-1])
        t, n = token_nll(logits, codes[0])
        total, tokens = total + t, tokens + n
    return mean_nll(total, tokens)


def test_compare_base_reports_both_models_and_delta(compared):
    report = json.loads((compared / "eval.json").read_text())
    base, adapted = report["results"]["base"], report["results"]["adapter"]
    assert set(base) == set(adapted) == {"understanding", "generation"}
    assert report["records"] == {"understanding": 16, "generation": 8}
    for metric in ("loss", "perplexity", "exact_match", "cer", "edit_distance"):
        assert metric in base["understanding"]
    assert set(base["generation"]) == {"loss", "perplexity", "tokens", "records"}
    assert base["generation"]["tokens"] == 8 * 16
    for task in ("understanding", "generation"):
        assert base[task]["loss"] != pytest.approx(adapted[task]["loss"], rel=1e-3)
        for metric, value in report["delta"][task].items():
            assert value == pytest.approx(adapted[task][metric] - base[task][metric])
    table = (compared / "eval.md").read_text()
    assert "| task | metric | base | adapter | delta |" in table
    assert f"| generation | loss (NLL / token) | {base['generation']['loss']:.4f} |" in table
    assert f"{report['delta']['understanding']['loss']:+.4f}" in table


def test_losses_match_independent_computations(compared, tiny, adapter):
    report = json.loads((compared / "eval.json").read_text())["results"]
    base, merged, processor = _models(tiny, adapter)
    for label, model in (("base", base), ("adapter", merged)):
        got = report[label]
        assert got["understanding"]["loss"] == pytest.approx(_understanding_loss(model, processor), rel=1e-4)
        assert got["generation"]["loss"] == pytest.approx(_generation_nll(model, processor), rel=1e-4)


def test_predictions_and_sample_grids(compared):
    report = json.loads((compared / "eval.json").read_text())
    for label in ("base", "adapter"):
        rows = [json.loads(line) for line in (compared / f"predictions_{label}.jsonl").read_text().splitlines()]
        assert len(rows) == 16 and {r["reference"] for r in rows} <= {"red", "green", "blue", "yellow"}
        mean_em = sum(r["exact_match"] for r in rows) / len(rows)
        assert report["results"][label]["understanding"]["exact_match"] == pytest.approx(mean_em)
        grid = Image.open(compared / f"samples_{label}.png")
        assert grid.size == (4 * 64 + 3 * 2, 2 * 64 + 2)  # 4 captions: references over samples
        assert report["samples"][label]["captions"][0] == "a white square on a black background"
    # Same references on top; different models draw different samples from the same seeds.
    base, adapted = (Image.open(compared / f"samples_{k}.png") for k in ("base", "adapter"))
    assert base.crop((0, 0, 64, 64)).tobytes() == adapted.crop((0, 0, 64, 64)).tobytes()
    assert base.tobytes() != adapted.tobytes()


def test_base_only_with_data_override(recipe, tmp_path):
    out = tmp_path / "eval"
    assert main(["eval", "--recipe", str(recipe), "--data", str(GEN_VAL), "--output", str(out)]) == 0
    report = json.loads((out / "eval.json").read_text())
    assert list(report["results"]) == ["base"] and "delta" not in report
    assert list(report["results"]["base"]) == ["generation"]
    assert "| task | metric | base |" in (out / "eval.md").read_text()


def test_eval_user_errors_exit_2(recipe, tmp_path, capsys):
    assert main(["eval", "--recipe", str(recipe), "--compare-base"]) == 2
    assert "--compare-base needs --adapter" in capsys.readouterr().err
    assert main(["eval", "--recipe", str(recipe), "data.val=[]"]) == 2
    assert "data.val is empty" in capsys.readouterr().err
    assert main(["eval", "--recipe", str(recipe), "--adapter", str(tmp_path)]) == 2
