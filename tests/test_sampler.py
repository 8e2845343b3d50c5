"""Sampling and scoring as TRL hands completions to its rewards: strings for standard prompts,
messages for conversational ones, PIL images (with their VQ codes as `completion_ids`) for
generation; TRL's None-aware weighted sum; the log hooks."""

import math

from PIL import Image

from janus_ft.data.prompts import parse_prompt
from janus_ft.eval.rewards import load_rewards
from janus_ft.eval.sampler import Sampler, evaluate_rewards
from janus_ft.recipe.grpo import GrpoArgs


def test_what_the_rewards_receive(tiny_base, tmp_path):
    model, processor = tiny_base
    records = [{"prompt": "Say hi", "solution": "hi"},
               {"prompt": [{"role": "user", "content": "Say hi"}], "solution": "hi"},
               {"prompt": "a red square", "task": "generation"}]
    prompts = [parse_prompt(r, tmp_path / "p.jsonl", i + 1) for i, r in enumerate(records)]
    seen = {}

    def recorder(prompts, completions, completion_ids, trainer_state, log_extra, log_metric, **columns):
        seen.update(prompts=prompts, completions=completions, ids=completion_ids, state=trainer_state, columns=columns)
        log_extra("note", [f"#{i}" for i in range(len(completions))])
        log_metric("calls", 1.0)
        return [None if isinstance(c, Image.Image) else 1.0 for c in completions]

    def images_only(completions, **kwargs):
        return [2.0 if isinstance(c, Image.Image) else None for c in completions]

    sampler = Sampler(processor, "janus-pro", GrpoArgs(max_completion_length=3), load_rewards([recorder, images_only]))
    state = object()
    scored = sampler.sample(model, prompts, 2, [1, 2, 3], trainer_state=state)
    assert seen["prompts"] == ["Say hi"] * 2 + [records[1]["prompt"]] * 2 + ["a red square"] * 2
    text, conv, images = seen["completions"][:2], seen["completions"][2:4], seen["completions"][4:]
    assert all(isinstance(c, str) for c in text) and all(isinstance(im, Image.Image) for im in images)
    assert all(c[0]["role"] == "assistant" and isinstance(c[0]["content"], str) and len(c) == 1 for c in conv)
    ids = seen["ids"]
    assert [processor.tokenizer.decode(i, skip_special_tokens=True).strip() for i in ids[:2]] == text
    assert all(len(i) == processor.num_image_tokens for i in ids[4:])
    labels = scored.batch["labels"]   # the codes the GRPO loss scores are the ones the rewards saw
    assert all(labels[i][labels[i] != -100].tolist() == ids[i] for i in range(6))
    assert seen["state"] is state
    assert seen["columns"] == {"solution": ["hi"] * 4 + [None] * 2, "task": [None] * 4 + ["generation"] * 2}
    assert scored.extra == {"note": [f"#{i}" for i in range(6)]} and sampler.logged == {"calls": [1.0]}
    assert scored.total.tolist() == [1.0] * 4 + [2.0] * 2
    assert math.isnan(scored.rewards[4, 0]) and math.isnan(scored.rewards[0, 1])


def test_evaluation_means_leave_none_out(tiny_base, tmp_path):
    model, processor = tiny_base
    prompts = [parse_prompt({"prompt": f"Say {w}", "kind": k}, tmp_path / "p.jsonl", i + 1)
               for i, (w, k) in enumerate([("a", "scored"), ("b", "skipped")])]

    def half(completions, kind, **kwargs):
        return [0.25 if k == "scored" else None for k in kind]

    def never(completions, **kwargs):
        return [None] * len(completions)

    sampler = Sampler(processor, "janus-pro", GrpoArgs(max_completion_length=2), load_rewards([half, never]))
    assert evaluate_rewards(sampler, model, prompts, 2, seed=0) == {"eval_reward": 0.25, "eval_rewards/half": 0.25}
