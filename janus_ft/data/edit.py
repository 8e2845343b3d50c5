"""Edit rows: the token rows an edit record trains as -- and is sampled from -- with their
classifier-free-guidance variants.

An edit record renders as a generation prompt whose user turn holds the source images
(`{R_u}: <image_placeholder>\\n{instruction}\\n\\n{R_a}:`, each placeholder expanded to
`<begin_of_image>` + N + `<end_of_image>` and filled with SigLIP features), then the target as N
VQ codes from `<begin_of_image>` on, every one of them in the loss, as for generation.

With `data.edit_source_codes` each source also enters through the generation path, as Janus-4o
conditions its edits: right after a source's understanding block comes a second block,
`<begin_of_image>` + N placeholders + `<end_of_image>`, whose positions hold the source's VQ codes
(`source_codes`, aligned with `input_ids`), embedded as target codes are and never supervised.
`data.edit_source_code_dropout` leaves the blocks out of a training row, so the model also edits
from the SigLIP features alone.

Classifier-free guidance has two unconditional branches (InstructPix2Pix's scheme, in tokens):
- `sources` (`data.edit_cfg_dropout`): the instruction dropped -- every prompt token between BOS
  and the target's `<begin_of_image>` becomes pad, except the source image blocks;
- `none` (`data.edit_uncond_dropout`): instruction and sources dropped -- every prompt token between
  BOS and the target's `<begin_of_image>` becomes pad, as text-to-image's unconditional prompt, and
  nothing of the sources is embedded (the pads keep the positions their blocks had).
`infer.generate.sample_edit_codes` builds its rows with `edit_row` too: the branches it samples are
the branches training built.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from ..janus import IGNORE_INDEX, SpecialIds

FULL, SOURCES, NONE = "full", "sources", "none"   # what of the condition a row keeps


@dataclass(frozen=True)
class EditSettings:
    """How edit samples are built in training (the recipe's `data.edit_*` keys)."""

    source_codes: bool = False          # sources also as generation-path codes
    source_code_dropout: float = 0.0    # rows without the code blocks
    cfg_dropout: float = 0.0            # rows with the instruction dropped
    uncond_dropout: float = 0.0         # rows with instruction and sources dropped

    @classmethod
    def from_data(cls, data) -> EditSettings:
        """From a recipe's `data` section (`DataArgs`)."""
        return cls(data.edit_source_codes, data.edit_source_code_dropout, data.edit_cfg_dropout,
                   data.edit_uncond_dropout)

    def draw(self, rng: random.Random) -> tuple[str, bool]:
        """(condition kept, whether the row has the source code blocks) of one training row.

        >>> [EditSettings(True, 0.5, 0.2, 0.2).draw(random.Random(seed)) for seed in range(5)]
        [('full', True), ('none', True), ('full', True), ('sources', True), ('sources', False)]
        """
        u = rng.random()
        condition = NONE if u < self.uncond_dropout else SOURCES if u < self.uncond_dropout + self.cfg_dropout else FULL
        # An unconditional row keeps the blocks' positions (as pad) whenever sources are coded, as
        # inference lays it out next to the conditional rows; code dropout thins the other rows only.
        codes = self.source_codes and (condition == NONE or rng.random() >= self.source_code_dropout)
        return condition, codes

    def variants(self) -> list[tuple[str, bool]]:
        """Every (condition, coded) `draw` can return: the row layouts training builds.

        >>> EditSettings(True, 0.5, 0.2, 0.0).variants()
        [('full', True), ('full', False), ('sources', True), ('sources', False)]
        """
        coded = [c for c, possible in ((True, self.source_codes), (False, not self.source_codes
                                                                    or self.source_code_dropout > 0)) if possible]
        out = [(condition, c) for condition, rate in ((FULL, 1.0), (SOURCES, self.cfg_dropout)) if rate > 0
               for c in coded]
        return out + ([(NONE, self.source_codes)] if self.uncond_dropout > 0 else [])

    def extra_tokens(self, n_sources: int, n_image_tokens: int) -> int:
        """Tokens the code blocks add to a row of `n_sources` sources (length limits count them)."""
        return n_sources * (n_image_tokens + 2) if self.source_codes else 0


def target_start(ids: list[int], boi: int) -> int:
    """Position of the target's `<begin_of_image>` (id `boi`): the last one (source blocks come before it)."""
    return len(ids) - 1 - ids[::-1].index(boi)


def insert_source_codes(ids: list[int], labels: list[int], special: SpecialIds,
                        codes: list[list[int]]) -> tuple[list[int], list[int], list[int]]:
    """(ids, labels, source codes) with a code block after each source image block: `<begin_of_image>`,
    one placeholder per code, `<end_of_image>`; the codes sit at the placeholders, IGNORE elsewhere.

    >>> sp = SpecialIds(bos=1, eos=2, pad=0, image=9, boi=7, eoi=8)
    >>> insert_source_codes([1, 7, 9, 8, 5, 7, 9, 8], [-100] * 6 + [3, -100], sp, [[42]])
    ([1, 7, 9, 8, 7, 9, 8, 5, 7, 9, 8], [-100, -100, -100, -100, -100, -100, -100, -100, -100, 3, -100], \
[-100, -100, -100, -100, -100, 42, -100, -100, -100, -100, -100])
    """
    stop = target_start(ids, special.boi)
    out_ids, out_labels, out_codes, k = [], [], [], 0
    for i, token in enumerate(ids):
        out_ids.append(token)
        out_labels.append(labels[i])
        out_codes.append(IGNORE_INDEX)
        if token == special.eoi and i < stop:
            if k == len(codes):
                raise ValueError(f"more source image blocks than the {len(codes)} code lists given")
            block = list(codes[k])
            out_ids += [special.boi] + [special.image] * len(block) + [special.eoi]
            out_labels += [IGNORE_INDEX] * (len(block) + 2)
            out_codes += [IGNORE_INDEX] + block + [IGNORE_INDEX]
            k += 1
    if k != len(codes):
        raise ValueError(f"{len(codes)} code lists for {k} source image block(s)")
    return out_ids, out_labels, out_codes


def blank_prompt(ids: list[int], special: SpecialIds, keep_sources: bool) -> list[int]:
    """The prompt tokens between BOS and the target's `<begin_of_image>` as pad; with `keep_sources`
    the source image blocks (`<begin_of_image>` ... `<end_of_image>`) stay.

    >>> sp = SpecialIds(bos=1, eos=2, pad=0, image=9, boi=7, eoi=8)
    >>> ids = [1, 4, 7, 9, 8, 5, 6, 7, 9, 8]
    >>> blank_prompt(ids, sp, keep_sources=True), blank_prompt(ids, sp, keep_sources=False)
    ([1, 0, 7, 9, 8, 0, 0, 7, 9, 8], [1, 0, 0, 0, 0, 0, 0, 7, 9, 8])
    """
    stop, out, inside = target_start(ids, special.boi), list(ids), False
    for i in range(1, stop):
        inside = inside or (keep_sources and ids[i] == special.boi)
        if not inside:
            out[i] = special.pad
        inside = inside and ids[i] != special.eoi
    return out


def edit_row(ids: list[int], labels: list[int], special: SpecialIds, condition: str = FULL,
             source_codes: list[list[int]] | None = None) -> dict:
    """`input_ids`, `labels` and, when the row embeds source codes, `source_codes` (aligned with
    them) of one edit row, from the record's tokens (`tokens.encode`); `condition` is what of the
    condition the row keeps (`FULL`, `SOURCES`: the instruction dropped, `NONE`)."""
    codes = None
    if source_codes is not None:
        ids, labels, codes = insert_source_codes(ids, labels, special, source_codes)
    if condition != FULL:
        ids = blank_prompt(ids, special, keep_sources=condition == SOURCES)
    row = {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels)}
    if codes is not None and condition != NONE:
        row["source_codes"] = torch.tensor(codes)
    return row
