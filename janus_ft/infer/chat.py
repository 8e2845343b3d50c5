"""`janus-ft chat`: understanding / text inference with a base model and optional LoRA adapter.

One question from `--prompt` (streamed to stdout), or every record of a JSONL file with `--jsonl`
(the last query of each record is answered given its history; records come back with a
`prediction` field). Prompts are built as training builds them (`janus_ft.infer.prompts`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.records import Record
from .prompts import record_inputs, to_model


@dataclass
class Decoding:
    """How answers are decoded: temperature 0 is greedy (deterministic), > 0 samples."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    system_prompt: str | None = None   # for records without a `system` field (None: Janus's default)

    def generate_kwargs(self) -> dict:
        # max_length=None: Janus's text-mode generate prepares its config twice, and the second pass
        # warns that the default max_length (20) competes with max_new_tokens on every call.
        lengths = {"max_new_tokens": self.max_new_tokens, "max_length": None}
        if self.temperature <= 0:
            return {"do_sample": False, **lengths}
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p, **lengths}


@torch.no_grad()
def answer_ids(model, processor, record: Record, fmt: str, decoding: Decoding, streamer=None) -> list[int]:
    """The new token ids answering the record's last query (plain `model.generate`, text mode)."""
    inputs = to_model(record_inputs(processor, record, fmt, decoding.system_prompt), model)
    if decoding.seed is not None:
        torch.manual_seed(decoding.seed)
    tok = processor.tokenizer
    out = model.generate(**inputs, **decoding.generate_kwargs(), streamer=streamer,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    return out[0, inputs["input_ids"].shape[1]:].tolist()


def answer(model, processor, record: Record, fmt: str, decoding: Decoding, streamer=None) -> str:
    ids = answer_ids(model, processor, record, fmt, decoding, streamer)
    return processor.tokenizer.decode(ids, skip_special_tokens=True).strip()


def left_pad(inputs: list[dict], tokenizer) -> dict:
    """Prompts of one record each -> one batch, padded on the left (the tokenizer's own `pad`) so
    every answer starts at the same column. `pixel_values` are concatenated in row order, the
    order in which the model scatters image features into placeholder positions."""
    batch = dict(tokenizer.pad({"input_ids": [x["input_ids"][0].tolist() for x in inputs]},
                               padding_side="left", return_tensors="pt"))
    pixels = [x["pixel_values"] for x in inputs if "pixel_values" in x]
    if pixels:
        batch["pixel_values"] = torch.cat(pixels)
    return batch


@torch.no_grad()
def answer_batch(model, processor, records: list[Record], fmt: str, decoding: Decoding) -> list[str]:
    """Answers to several records from one `generate` call (greedy: the same answers as `answer`
    one by one; sampling draws from one seeded stream for the whole batch)."""
    tok = processor.tokenizer
    batch = to_model(left_pad([record_inputs(processor, r, fmt, decoding.system_prompt) for r in records], tok),
                     model)
    if decoding.seed is not None:
        torch.manual_seed(decoding.seed)
    out = model.generate(**batch, **decoding.generate_kwargs(), pad_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id)
    answers = []
    for row in out[:, batch["input_ids"].shape[1]:].tolist():
        if tok.eos_token_id in row:      # finished rows are padded after their EOS
            row = row[:row.index(tok.eos_token_id)]
        answers.append(tok.decode(row, skip_special_tokens=True).strip())
    return answers
