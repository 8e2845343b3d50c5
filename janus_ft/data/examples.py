"""What the other trainers read, for `janus-ft data check` and `data preview`: preference pairs
(`janus-ft dpo`) and prompts (`janus-ft grpo`), every bad one collected with its file:line (or
source:row) and field, every image of them decoded once -- what the trainers would stop on."""

from __future__ import annotations

from .images import check_images
from .preference import check_pair_images, parse_pair
from .prompts import parse_prompt
from .sources import read_source

TRAINERS = ("sft", "dpo", "grpo")


def read_examples(trainer: str, sources, seed: int, errors: list) -> list:
    """The pairs (`dpo`) or prompts (`grpo`) of `sources`; bad rows and bad images go to `errors`."""
    if trainer == "dpo":
        pairs = [p for src in sources for p in read_source(src, seed, errors, parse=parse_pair)]
        errors += check_pair_images(pairs)
        return pairs
    if trainer == "grpo":
        prompts = [p for src in sources for p in read_source(src, seed, errors, parse=parse_prompt, every_column=True)]
        errors += check_images([p.record for p in prompts])
        return prompts
    raise ValueError(f"no example reader for trainer {trainer!r}")


def pair_sides(pairs) -> list[tuple[str, object]]:
    """("chosen" | "rejected", record) for every pair, in order: the two samples DPO scores."""
    return [(side, record) for p in pairs for side, record in (("chosen", p.chosen), ("rejected", p.rejected))]
