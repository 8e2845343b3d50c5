"""DPO learns preferences that carry over to held-out pairs, on both Janus paths: the implicit
reward of the trained adapter ranks chosen above rejected on >= 90% of unseen pairs, where the base
model's own log-probs prefer chosen on about half.

Understanding pairs on the tiny model (the colour of a shape: only the pixels tell); generation
pairs (the caption's colour against another colour, unseen noisy shots) on the tiny model with the
`mid` preset's 512 x 4 language model, which conditions on captions where the 64 x 2 one barely does.
Margins over seeds and thread counts are in docs/dpo.md."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "data_templates"))

from make_preference import make_preference  # noqa: E402


@pytest.fixture(scope="module")
def pref(tmp_path_factory):
    out = tmp_path_factory.mktemp("pref")
    make_preference(out, n=240, n_val=40)
    return out


def base_preference(model_path: str, val: Path) -> float:
    """Share of val pairs whose chosen side the untrained model already scores higher."""
    from transformers import JanusForConditionalGeneration, JanusProcessor

    from janus_ft.data.preference import PairCollator
    from janus_ft.model.logprobs import target_logps
    from janus_ft.recipe import load_recipe
    from janus_ft.train.dpo import build_pair_datasets, read_pairs

    model = JanusForConditionalGeneration.from_pretrained(model_path).eval()
    processor = JanusProcessor.from_pretrained(model_path)
    recipe = load_recipe(REPO / "recipes/dpo_mixed.yaml", [f"model.path={model_path}"])
    (ds,) = build_pair_datasets(read_pairs([str(val)], 0), model, processor, recipe, "janus-pro").values()
    batch = PairCollator(processor.tokenizer.pad_token_id, model.config.image_token_id)([ds[i] for i in range(len(ds))])
    with torch.no_grad():
        sums = target_logps(model, batch).sums
    return float((sums[: len(ds)] > sums[len(ds):]).float().mean())


def train_heldout(recipe: str, model_path: str, pref: Path, task: str, out: Path, *overrides: str) -> dict:
    from janus_ft.cli import main

    assert main(["dpo", "--recipe", str(REPO / "recipes" / recipe), f"model.path={model_path}", f"output_dir={out}",
                 f"data.train=[{pref / f'{task}.jsonl'}]", f"data.val=[{pref / f'{task}_val.jsonl'}]",
                 "data.cfg_dropout=0", "train.eval_steps=null", "train.save_steps=1000", "train.disable_tqdm=true",
                 *overrides]) == 0
    log = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return next(e for e in reversed(log) if "eval_rewards/accuracies" in e)


def test_understanding_preferences_carry_to_heldout_pairs(pref, tiny_dir, tmp_path):
    before = base_preference(str(tiny_dir), pref / "understanding_val.jsonl")
    after = train_heldout("dpo_understanding.yaml", "tiny", pref, "understanding", tmp_path / "u")
    assert 0.3 <= before <= 0.7
    assert after["eval_rewards/accuracies"] >= 0.9 and after["eval_rewards/margins"] > 0.5


@pytest.fixture(scope="module")
def mid_llm_dir(tmp_path_factory):
    from janus_ft.tiny import build_tiny

    return build_tiny(tmp_path_factory.mktemp("mid_llm"), llm="mid")


def colour_hits(model, processor, pref: Path, cache: Path, seed: int = 0, per_caption: int = 32) -> float:
    """Share of CFG samples (32 per caption, guidance 5) whose codes are closest to the caption's
    colour among the four colours of the caption's shape: each colour's prototype is the per-position
    most frequent code of its training shots (ties between colours share the hit)."""
    from collections import defaultdict

    from janus_ft.data.vq import CodeCache, codes_for_files
    from janus_ft.infer.generate import sample_codes

    rows = [json.loads(line) for line in (pref / "generation.jsonl").read_text().splitlines()]
    shots = defaultdict(list)
    for r in rows:
        shots[r["query"]].append(str(pref / r["images"][0]))
    paths = sorted(p for ps in shots.values() for p in ps)
    codes = dict(zip(paths, codes_for_files(model, paths, CodeCache(cache))))
    proto = {cap: torch.stack([codes[p] for p in ps]).mode(0).values for cap, ps in shots.items()}
    hits, n = 0.0, 0
    for cap in sorted(proto):
        colour, shape = cap.split()[1:]
        rivals = {c: proto[f"a {c} {s}"] for c, s in (k.split()[1:] for k in proto) if s == shape}
        for sample in sample_codes(model, processor, cap, "janus-pro", n=per_caption, cfg=5.0, seed=seed):
            agree = {c: int((sample == p).sum()) for c, p in rivals.items()}
            best = [c for c, a in agree.items() if a == max(agree.values())]
            hits += (colour in best) / len(best)
            n += 1
    return hits / n


@pytest.mark.slow
def test_generation_preferences_carry_to_heldout_pairs_and_to_cfg_samples(pref, mid_llm_dir, tmp_path):
    from peft import PeftModel
    from transformers import JanusForConditionalGeneration, JanusProcessor

    before = base_preference(str(mid_llm_dir), pref / "generation_val.jsonl")
    after = train_heldout("dpo_t2i.yaml", str(mid_llm_dir), pref, "generation", tmp_path / "g",
                          "train.max_steps=80", "train.learning_rate=5e-4")
    assert 0.3 <= before <= 0.7
    assert after["eval_rewards/accuracies"] >= 0.9 and after["eval_rewards/margins"] > 1.0
    # What CFG sampling draws: the caption's colour more often after training than before.
    processor = JanusProcessor.from_pretrained(mid_llm_dir)
    base = JanusForConditionalGeneration.from_pretrained(mid_llm_dir).eval()
    drawn_before = colour_hits(base, processor, pref, tmp_path / "vq")
    tuned = PeftModel.from_pretrained(JanusForConditionalGeneration.from_pretrained(mid_llm_dir), tmp_path / "g")
    drawn_after = colour_hits(tuned.merge_and_unload().eval(), processor, pref, tmp_path / "vq")
    # Measured on 384 samples: 0.25 before (no sample shares a code position with any colour's
    # prototype more than with another's: every sample is a 4-way tie) -> 0.335 / 0.314 / 0.283 after
    # (train.seed 42 / 1 / 2; seed 42 at 2 threads the same): a weak but steady rise.
    assert drawn_after > drawn_before, (drawn_before, drawn_after)
