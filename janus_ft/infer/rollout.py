"""Rollouts for reinforcement learning: G completions of one prompt, sampled as inference samples
them, and the batch that scores them.

* Text and understanding: `model.generate` in text mode with temperature / top-p, the prompt built
  by `prompts.record_inputs` (training's rendering and tokenization). An answer ends at its EOS
  (kept: it is a supervised token in SFT too); one that reaches `max_new_tokens` first is truncated.
* Generation: `generate.sample_codes`, the exact CFG sampling of `janus-ft generate`. An image is
  always N codes: it is never truncated (the rule that fires on every image when applied to
  fixed-length outputs zeroed UniRL's text-to-image rewards).

`completion_batch` lays prompt + completion out as the SFT collator does (labels only on the
completion: text tokens, or the N codes at the image-token positions), so
`janus_ft.model.logprobs.target_logps` scores exactly the sampled tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.collate import collate, loss_plan
from ..data.records import Record
from ..janus import IGNORE_INDEX, TASK_IDS, SpecialIds
from .generate import prompt_inputs, sample_codes
from .prompts import record_inputs, to_model


@dataclass
class Rollout:
    task: str
    prompt_ids: list[int]
    completions: list[list[int]]     # token ids (text, EOS included when emitted) or N VQ codes (images)
    truncated: list[bool]            # text answers cut by max_new_tokens; never an image
    pixel_values: torch.Tensor | None = None   # the prompt's images (understanding)


@torch.no_grad()
def sample_text(model, processor, record: Record, fmt: str, n: int, temperature: float = 1.0, top_p: float = 1.0,
                max_new_tokens: int = 256, seed: int = 0, system_prompt: str | None = None, top_k: int = 0) -> Rollout:
    """`n` sampled answers to a text / understanding record's last question. `top_k=0` samples the
    whole distribution (transformers' default of 50 would never draw an answer the policy ranks lower,
    however much the reward wants it)."""
    inputs = record_inputs(processor, record, fmt, system_prompt)
    tok = processor.tokenizer
    torch.manual_seed(seed)
    out = model.generate(**to_model(inputs, model), do_sample=True, temperature=temperature, top_p=top_p, top_k=top_k,
                         max_new_tokens=max_new_tokens, max_length=None, num_return_sequences=n,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    prompt = inputs["input_ids"][0].tolist()
    completions, truncated = [], []
    for row in out[:, len(prompt):].tolist():
        if tok.eos_token_id in row:
            completions.append(row[:row.index(tok.eos_token_id) + 1])
            truncated.append(False)
        else:
            completions.append(row)
            truncated.append(True)
    return Rollout(record.task, prompt, completions, truncated, inputs.get("pixel_values"))


def sample_images(model, processor, caption: str, fmt: str, n: int, cfg: float, temperature: float = 1.0,
                  seed: int = 0, top_p: float = 1.0, top_k: int = 0) -> Rollout:
    """`n` images (as VQ codes) for a caption, with CFG, as `janus-ft generate` draws them."""
    prompt = prompt_inputs(processor, caption, fmt)["input_ids"][0].tolist()
    codes = sample_codes(model, processor, caption, fmt, n=n, cfg=cfg, temperature=temperature, seed=seed,
                         top_k=top_k, top_p=top_p)
    return Rollout("generation", prompt, codes.tolist(), [False] * n)


def completion_samples(rollout: Rollout, special: SpecialIds) -> list[dict]:
    """One training sample per completion: prompt + completion, labels on the completion only."""
    samples = []
    for completion in rollout.completions:
        if rollout.task == "generation":
            ids = rollout.prompt_ids + [special.image] * len(completion) + [special.eoi]
            labels = [IGNORE_INDEX] * len(rollout.prompt_ids) + list(completion) + [IGNORE_INDEX]
        else:
            ids = rollout.prompt_ids + list(completion)
            labels = [IGNORE_INDEX] * len(rollout.prompt_ids) + list(completion)
        samples.append({"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "task": TASK_IDS[rollout.task],
                        "pixel_values": rollout.pixel_values})
    return samples


def completion_batch(rollouts: list[Rollout], special: SpecialIds, image_token_id: int) -> dict:
    """The collated batch of every completion of `rollouts`, row after row, group after group."""
    batch = collate([s for r in rollouts for s in completion_samples(r, special)], special.pad)
    batch["loss_plan"] = loss_plan(batch, image_token_id)
    return batch
