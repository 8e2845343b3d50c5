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

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..errors import BadRecord
from .collate import collate, loss_plan
from .dataset import JanusDataset
from .edit import FULL, NONE, EditSettings
from .images import check_images
from .records import Record, image_paths, parse_record

_TRL = ("prompt", "chosen", "rejected")


@dataclass
class Pair:
    chosen: Record
    rejected: Record
    rejected_field: str = "rejected_images[0]"   # where the pair names its rejected target image

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
        chosen = _side(rest, path, line, {})
        if chosen.task == "edit":
            return _edit_pair(chosen, obj["rejected_images"], path, line)
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
                  "rejected_response (text, understanding) or rejected_images (generation, edit)")
    chosen, rejected = (_side(o, path, line, n) for o, n in zip(sides, names))
    if chosen.task == "edit":
        raise bad(other, "an edit pair differs in its target image only: give it as rejected_images")
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


def _edit_pair(chosen: Record, value, path: Path, line) -> Pair:
    """An edit pair: the rejected side is the chosen edit with another target, `value` being that
    target or the whole image list (the chosen sources, then the rejected target)."""
    def bad(fld, problem):
        return BadRecord(path, line, fld, problem)

    paths = _side_field(lambda: image_paths({"images": value}, path, bad), "rejected_images")
    sources = chosen.sources
    if len(paths) not in (1, len(sources) + 1):
        raise bad("rejected_images", f"{len(paths)} image(s): an edit pair's rejected_images is the rejected target "
                  f"(1 image) or the chosen side's {len(sources)} source(s) then the rejected target")
    for i, (theirs, ours) in enumerate(zip(paths[:-1], sources)):
        if theirs != ours:
            raise bad(f"rejected_images[{i}]", f"is {theirs}, the chosen side's source is {ours}: "
                      "both sides of an edit pair edit the same sources")
    if paths[-1] == chosen.images[-1]:
        raise bad(f"rejected_images[{len(paths) - 1}]", "is the chosen target: the pair prefers nothing")
    return Pair(chosen, replace(chosen, images=[*sources, paths[-1]]), f"rejected_images[{len(paths) - 1}]")


def _side_field(parse, name: str):
    """`parse()`, its errors' `images` field renamed `name` (`images[1]` -> `rejected_images[1]`)."""
    try:
        return parse()
    except BadRecord as err:
        fld = name + err.field.removeprefix("images") if err.field else name
        raise BadRecord(err.path, err.line, fld, err.problem) from None


def check_pair_images(pairs: list[Pair]) -> list[BadRecord]:
    """Decode every image of both sides once; a rejected generation or edit target is named
    `rejected_images[i]` (an edit's: the index of its target in the whole image list)."""
    errors = check_images([p.chosen for p in pairs])
    rejected = [p for p in pairs if p.task in ("generation", "edit")]
    fields = {(p.rejected.source, p.rejected.line): p.rejected_field for p in rejected}
    for err in check_images([replace(p.rejected, images=p.rejected.images[-1:]) for p in rejected]):
        errors.append(BadRecord(err.path, err.line, fields[err.path, err.line], err.problem))
    return errors


class PairDataset(torch.utils.data.Dataset):
    """The pairs of one task for one checkpoint: `sample(i)` is `{"chosen": s, "rejected": s}` (two
    `JanusDataset` samples), plus `"ref"` (reference log-probs of both sides) once `set_reference` ran
    for the layout drawn. A pair with a side longer than `max_length` is dropped whole.

    A layout (`variant`) is what CFG dropout left of the prompt, the same for both sides of a pair:
    `unconditional` (bool) for the other tasks, an edit's drawn (condition, source codes) for edits
    (`edit.EditSettings.draw`), so the reference log-probs are those of the rows the policy scores."""

    def __init__(self, pairs: list[Pair], processor, fmt: str, max_length: int = 2048,
                 system_prompt: str | None = None, last_turn_only: bool = False, codes: dict | None = None,
                 edit: EditSettings | None = None):
        sides = [JanusDataset([getattr(p, side) for p in pairs], processor, fmt, 1 << 62, system_prompt,
                              last_turn_only, codes, edit) for side in ("chosen", "rejected")]
        self.chosen, self.rejected = sides
        self.edit = self.chosen.edit
        self.keep = [i for i in range(len(pairs)) if max(s.lengths()[i] for s in sides) <= max_length]
        self.dropped = [pairs[i] for i in range(len(pairs)) if i not in set(self.keep)]
        self.is_edit = bool(pairs) and pairs[0].task == "edit"
        # `MixtureDataset(group_by_length=True)` orders by these lengths: the longer side of each pair.
        self._lengths = [int(max(s.lengths()[i] for s in sides)) for i in self.keep]
        self.ref: dict = {}   # variant -> (pairs, 2) reference log-probs

    def __len__(self) -> int:
        return len(self.keep)

    def lengths(self):
        """Tokens of each pair's longer side (edit source code blocks included)."""
        return self._lengths

    def __getitem__(self, index: int) -> dict:
        return self.sample(index)

    def sample(self, index: int, unconditional: bool = False, draw=None) -> dict:
        """Pair `index`; `unconditional` blanks both prompts, `draw` (a `random.Random`) draws an
        edit pair's dropouts once for both sides (as `JanusDataset.sample`)."""
        if not self.is_edit:
            return self.variant_sample(index, unconditional)
        if unconditional:
            return self.variant_sample(index, (NONE, self.edit.source_codes))
        return self.variant_sample(index, self.edit.draw(draw) if draw is not None else (FULL, self.edit.source_codes))

    def variant_sample(self, index: int, variant) -> dict:
        i = self.keep[index]
        if self.is_edit:
            out = {"chosen": self.chosen.edit_sample(i, *variant), "rejected": self.rejected.edit_sample(i, *variant)}
        else:
            out = {"chosen": self.chosen.sample(i, variant), "rejected": self.rejected.sample(i, variant)}
        if variant in self.ref:
            out["ref"] = self.ref[variant][index]
        return out

    def variants(self, cfg_dropout: float) -> list:
        """The layouts training draws: conditional, blanked generation prompts with `cfg_dropout`,
        every edit layout the `data.edit_*` dropouts can draw."""
        if self.is_edit:
            return self.edit.variants()
        return [False, True] if cfg_dropout > 0 and self.chosen.task_of(0) == "generation" else [False]

    def evaluation_variant(self):
        """The layout `sample(i)` builds (what evaluation scores)."""
        return (FULL, self.edit.source_codes) if self.is_edit else False

    def set_reference(self, variant, logps: torch.Tensor) -> None:
        """Reference log-probs (pairs, 2: chosen, rejected) of the rows of one layout."""
        self.ref[variant] = logps.detach().float().cpu()


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
