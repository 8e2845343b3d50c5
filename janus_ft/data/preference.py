"""Preference pairs (`janus-ft dpo`): records -> (chosen, rejected) `Record` pairs -> paired samples.

Three shapes, read from every source the data layer reads (`sources.read_source(parse=parse_pair)`):

* TRL: `{"prompt": ..., "chosen": ..., "rejected": ..., "images": [...]}`;
* ms-swift: `query` / `response` / `history` / `images` / `system` plus `rejected_response`;
* generation: `{"query": caption, "response": "<image>", "images": [chosen], "rejected_images": [rejected]}`.

Each side is validated by `records.parse_record` exactly as an SFT record is (so the two sides share
everything but the response), and a bad pair -- identical sides, a missing side, image counts that
differ -- is a `BadRecord` naming file, line and the field as the user wrote it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import BadRecord
from .collate import collate, loss_plan
from .dataset import JanusDataset
from .images import check_images
from .records import Record, parse_record

_TRL = ("prompt", "chosen", "rejected")


@dataclass
class Pair:
    chosen: Record
    rejected: Record

    @property
    def task(self) -> str:
        return self.chosen.task

    @property
    def source(self) -> str:
        return self.chosen.source

    @property
    def line(self) -> int | str:
        return self.chosen.line


def parse_pair(obj, path: Path, line: int | str) -> Pair:
    """One decoded row -> a validated `Pair` (see the module docstring for the shapes)."""
    def bad(fld, problem):
        return BadRecord(path, line, fld, problem)

    if not isinstance(obj, dict):
        raise bad(None, f"expected a JSON object, got {type(obj).__name__}")
    if any(k in obj for k in _TRL):
        missing = [k for k in _TRL if k not in obj]
        if missing:
            raise bad(missing[0], "missing: a TRL-style pair has prompt, chosen and rejected")
        rest = {k: v for k, v in obj.items() if k not in _TRL}
        sides = ({**rest, "query": obj["prompt"], "response": obj["chosen"]},
                 {**rest, "query": obj["prompt"], "response": obj["rejected"]})
        names = ({"query": "prompt", "response": "chosen"}, {"query": "prompt", "response": "rejected"})
        other = "rejected"
    elif "rejected_response" in obj:
        rest = {k: v for k, v in obj.items() if k != "rejected_response"}
        sides = (rest, {**rest, "response": obj["rejected_response"]})
        names, other = ({}, {"response": "rejected_response"}), "rejected_response"
    elif "rejected_images" in obj:
        rest = {k: v for k, v in obj.items() if k != "rejected_images"}
        chosen_images, rejected_images = obj.get("images"), obj["rejected_images"]
        n_chosen = len(chosen_images) if isinstance(chosen_images, list) else int(chosen_images is not None)
        n_rejected = len(rejected_images) if isinstance(rejected_images, list) else int(bool(rejected_images))
        if not n_rejected:
            raise bad("rejected_images", "is empty: a generation pair needs the rejected image")
        if n_rejected != n_chosen:
            raise bad("rejected_images", f"{n_rejected} rejected image(s) for {n_chosen} chosen image(s)")
        sides = (rest, {**rest, "images": rejected_images})
        names, other = ({}, {"images": "rejected_images"}), "rejected_images"
    else:
        raise bad(None, "not a preference pair: expected prompt/chosen/rejected, or query/response with "
                  "rejected_response (text, understanding) or rejected_images (generation)")
    chosen, rejected = (_side(o, path, line, n) for o, n in zip(sides, names))
    if chosen.task == "edit":
        raise bad(None, "an edit pair: janus-ft dpo does not tune edits yet (train them with janus-ft sft)")
    if rejected.task != chosen.task:
        raise bad(other, f"makes the rejected side a {rejected.task} record, the chosen side is {chosen.task}")
    if rejected.turns == chosen.turns and rejected.images == chosen.images:
        raise bad(other, "is identical to the chosen side: the pair prefers nothing")
    return Pair(chosen, rejected)


def _side(obj: dict, path: Path, line, names: dict) -> Record:
    """One side, its errors naming the field as the pair spells it."""
    try:
        return parse_record(obj, path, line)
    except BadRecord as err:
        fld = err.field
        if fld:
            head, sep, tail = fld.partition("[")
            fld = names.get(head, head) + sep + tail
        raise BadRecord(err.path, err.line, fld, err.problem) from None


def check_pair_images(pairs: list[Pair]) -> list[BadRecord]:
    """Decode every image of both sides once; a rejected generation image is named `rejected_images[i]`."""
    errors = check_images([p.chosen for p in pairs])
    for err in check_images([p.rejected for p in pairs if p.task == "generation"]):
        errors.append(BadRecord(err.path, err.line, "rejected_" + (err.field or "images"), err.problem))
    return errors


class PairDataset(torch.utils.data.Dataset):
    """The pairs of one task for one checkpoint: `sample(i)` is `{"chosen": s, "rejected": s}` (two
    `JanusDataset` samples), plus `"ref"` (reference log-probs of both sides) once `set_reference` ran.
    A pair with a side longer than `max_length` is dropped whole."""

    def __init__(self, pairs: list[Pair], processor, fmt: str, max_length: int = 2048,
                 system_prompt: str | None = None, last_turn_only: bool = False, codes: dict | None = None):
        sides = [JanusDataset([getattr(p, side) for p in pairs], processor, fmt, 1 << 62, system_prompt,
                              last_turn_only, codes) for side in ("chosen", "rejected")]
        self.chosen, self.rejected = sides
        self.keep = [i for i in range(len(pairs)) if max(len(s.examples[i].input_ids) for s in sides) <= max_length]
        self.dropped = [pairs[i] for i in range(len(pairs)) if i not in set(self.keep)]
        # `MixtureDataset(group_by_length=True)` orders by these lengths: the longer side of each pair.
        self.examples = [max(self.chosen.examples[i], self.rejected.examples[i], key=lambda e: len(e.input_ids))
                         for i in self.keep]
        self.ref: dict[bool, torch.Tensor] = {}   # unconditional? -> (pairs, 2) reference log-probs

    def __len__(self) -> int:
        return len(self.keep)

    def lengths(self):
        """Tokens of each pair's longer side (`MixtureDataset(group_by_length=True)` orders by them)."""
        return [len(e.input_ids) for e in self.examples]

    def __getitem__(self, index: int) -> dict:
        return self.sample(index)

    def sample(self, index: int, unconditional: bool = False) -> dict:
        i = self.keep[index]
        out = {"chosen": self.chosen.sample(i, unconditional), "rejected": self.rejected.sample(i, unconditional)}
        if unconditional in self.ref:
            out["ref"] = self.ref[unconditional][index]
        return out

    def set_reference(self, unconditional: bool, logps: torch.Tensor) -> None:
        """Reference log-probs (pairs, 2: chosen, rejected) of the conditional or blanked prompts."""
        self.ref[unconditional] = logps.detach().float().cpu()


PAIR_KEYS = ("chosen", "rejected", "ref")


class PairCollator:
    """A batch of B pairs as one padded batch of 2B rows: chosen sides first, then rejected (TRL's
    concatenated layout), with its `loss_plan`; `ref_logps` (B, 2) when every pair carries them."""

    def __init__(self, pad_id: int, image_token_id: int, pad_to_multiple_of: int | None = None):
        self.pad_id, self.image_token_id, self.pad_to_multiple_of = pad_id, image_token_id, pad_to_multiple_of

    def __call__(self, pairs: list[dict]) -> dict:
        rows = [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]
        batch = collate(rows, self.pad_id, self.pad_to_multiple_of)
        batch["loss_plan"] = loss_plan(batch, self.image_token_id)
        if all(p.get("ref") is not None for p in pairs):
            batch["ref_logps"] = torch.stack([torch.as_tensor(p["ref"]) for p in pairs])
        return batch
