"""Evaluation during training: at every evaluation the Trainer runs (`train.eval_steps`), answer a
few validation records, draw a few captions and make a few edits, with the metrics and sample grids
of `janus-ft eval` (edits below the captions in the same grid: source | target | result rows).

The Trainer already logs the validation loss per task; this adds what a loss cannot show -- exact
match / CER on generated answers, and what the image path draws -- so a regression on the other
path shows up while the run can still be stopped. Metrics go to the Trainer's log (TensorBoard
included, as scalars); the trainer (`base.JanusTrainer.publish_grid`) writes the grid to
`output_dir/samples/step-N.png` and, when TensorBoard is a logger, as an image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.dataset import JanusDataset
from ..data.vq import decode_codes_to_pil
from ..eval.evaluate import EvalSettings, answer_records, edit_grid, sample_grid
from ..infer.chat import Decoding
from ..infer.generate import contact_sheet, sample_codes

IMAGE_TASKS = ("generation", "edit")   # drawn, not answered


@dataclass
class TrainingProbe:
    processor: object
    fmt: str
    val_sets: dict          # task -> JanusDataset
    answers: int            # understanding / text records answered per evaluation
    images: int             # generation captions drawn (and edits made) per evaluation
    prompts: list           # fixed captions to draw instead of the first val captions
    batch_size: int = 8
    max_new_tokens: int = 64
    system_prompt: str | None = None

    def enabled(self) -> bool:
        return (bool(self.answers and any(t not in IMAGE_TASKS for t in self.val_sets)) or bool(self.image_count())
                or bool(self.edit_count()))

    def image_count(self) -> int:
        if not self.images:
            return 0
        return len(self.prompts[:self.images]) if self.prompts else min(self.images, len(self.val_sets.get("generation", ())))

    def edit_count(self) -> int:
        return min(self.images, len(self.val_sets.get("edit", ())))

    @torch.no_grad()
    def run(self, model, state=None) -> tuple[dict, object]:
        """(metrics named `eval_<task>_<metric>`, the step's sample grid as an image, or None)."""
        was_training = model.training
        model.eval()
        try:
            return self._answer(model), self._draw(model)
        finally:
            model.train(was_training)

    def _answer(self, model) -> dict:
        metrics = {}
        decoding = Decoding(self.max_new_tokens, system_prompt=self.system_prompt)
        for task, ds in self.val_sets.items():
            if task in IMAGE_TASKS or not self.answers or not len(ds):
                continue
            scores, _ = answer_records(model, self.processor, self.fmt, ds, decoding, self.batch_size, self.answers)
            metrics.update({f"eval_{task}_{name}": value for name, value in scores.items()})
        return metrics

    def _draw(self, model):
        grids = [grid for grid in (self._draw_captions(model), self._draw_edits(model)) if grid is not None]
        return grids[0] if len(grids) == 1 else stacked(grids) if grids else None

    def _draw_edits(self, model):
        n = self.edit_count()
        return edit_grid(model, self.processor, self.fmt, self.val_sets["edit"], EvalSettings(), limit=n)["image"] if n else None

    def _draw_captions(self, model):
        n = self.image_count()
        if not n:
            return None
        if not self.prompts:
            ds: JanusDataset = self.val_sets["generation"]
            return sample_grid(model, self.processor, self.fmt, ds, EvalSettings(), limit=n)["image"]
        codes = [sample_codes(model, self.processor, caption, self.fmt, n=1, seed=i)[0]
                 for i, caption in enumerate(self.prompts[:n])]
        return contact_sheet(decode_codes_to_pil(model, torch.stack(codes)), columns=n)


def stacked(images: list, gap: int = 6):
    """Grids one above the other on white, left-aligned."""
    from PIL import Image

    sheet = Image.new("RGB", (max(im.width for im in images), sum(im.height for im in images) + gap * (len(images) - 1)),
                      "white")
    top = 0
    for im in images:
        sheet.paste(im, (0, top))
        top += im.height + gap
    return sheet
