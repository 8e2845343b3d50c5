"""`janus-ft eval --recipe R.yaml [--adapter DIR] [--compare-base]`: what a fine-tune did, per task.

On the validation records (`data.val`, or `--data`):
- every task: token-weighted loss and perplexity, from the same forward and loss as training
  (`compute_loss_parts` over `JanusDataset` + `collate` batches; generation targets are the VQ codes
  of the val images, so the generation loss is the NLL per held-out image token);
- understanding / text: a greedy answer per record (its last query, given its history), scored with
  exact match, character error rate and normalised edit distance;
- generation: a sample grid for up to 4 fixed val captions with a fixed seed (references on top);
- edit: a grid of source(s) | target | result for up to 4 val edits (seeded as the captions are).

With `--compare-base` the base model is evaluated first, then the adapter is attached to it; the
report shows base, adapter and their delta. Writes eval.json, eval.md, predictions and grids.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data.collate import collate
from ..data.dataset import JanusDataset, build_datasets, read_sources
from ..data.images import open_rgb
from ..data.vq import decode_codes_to_pil
from ..errors import UserError
from ..infer.chat import Decoding, answer_batch
from ..infer.generate import contact_sheet, edit_sheet, sample_codes, sample_edit_codes
from ..infer.prompts import resolve_format, to_model
from ..janus import IGNORE_INDEX, TASK_NAMES
from ..model.heads import HEAD_CHUNK_SIZE
from ..model.loading import attach_adapter, load_base, load_processor
from ..model.loss import compute_loss_parts
from ..recipe import DataSource
from .metrics import mean_nll, perplexity, text_scores

TEXT_METRICS = ("exact_match", "cer", "edit_distance")
MAX_SAMPLES = 4


@dataclass
class EvalSettings:
    max_new_tokens: int = 128   # longest greedy answer
    cfg: float = 5.0            # guidance scale of the sample grids
    seed: int = 0               # caption i of the grid is sampled with seed + i


def evaluate(recipe, sources: list[DataSource], adapter: str | None = None, compare_base: bool = False,
             settings: EvalSettings | None = None) -> tuple[dict, dict]:
    """(report, sample grids by label and task): base first (when asked), then the adapter on top of it."""
    settings = settings or EvalSettings()
    model = load_base(recipe.model.path, recipe.model.dtype)
    processor = load_processor(recipe.model.path, adapter)
    fmt = resolve_format(processor, recipe.model.format)
    records = read_sources(sources, recipe.train.seed)
    datasets = {task: ds for task, ds in build_datasets(records, model, processor, recipe, fmt).items()
                if len(ds)}
    labels = (["base"] if compare_base or not adapter else []) + (["adapter"] if adapter else [])
    results, grids, predictions = {}, {}, {}
    for label in labels:
        if label == "adapter":
            model = attach_adapter(model, adapter)
        results[label], grids[label], predictions[label] = evaluate_model(
            model, processor, fmt, datasets, recipe, settings)
    report = {"model": recipe.model.path, "adapter": adapter, "data": [str(s.path) for s in sources],
              "records": {task: len(ds) for task, ds in datasets.items()}, "results": results,
              "predictions": predictions}
    if len(results) == 2:
        report["delta"] = delta(results["base"], results["adapter"])
    return report, grids


def evaluate_model(model, processor, fmt: str, datasets: dict, recipe, settings: EvalSettings):
    """(metrics per task, sample grids by task -- generation, edit --, predictions per record) for one model."""
    batch_size = recipe.train.per_device_eval_batch_size
    results, grids, predictions = {}, {}, []
    for task, ds in datasets.items():
        total, tokens = task_loss(model, ds, processor.tokenizer.pad_token_id, batch_size, recipe.model.head_chunk_size)
        nll = mean_nll(total, tokens)
        results[task] = {"loss": nll, "perplexity": perplexity(nll), "tokens": tokens, "records": len(ds)}
        if task == "generation":
            grids[task] = sample_grid(model, processor, fmt, ds, settings)
        elif task == "edit":
            grids[task] = edit_grid(model, processor, fmt, ds, settings)
        else:
            decoding = Decoding(settings.max_new_tokens, system_prompt=recipe.data.system_prompt)
            scores, preds = answer_records(model, processor, fmt, ds, decoding, batch_size)
            results[task].update(scores)
            predictions += preds
    return results, grids, predictions


@torch.no_grad()
def task_loss(model, ds: JanusDataset, pad_id: int, batch_size: int,
              head_chunk_size: int = HEAD_CHUNK_SIZE) -> tuple[float, int]:
    """Sum of token losses and number of supervised tokens over a dataset (no CFG dropout)."""
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    for start in range(0, len(ds), batch_size):
        batch = collate([ds[i] for i in range(start, min(start + batch_size, len(ds)))], pad_id)
        parts = compute_loss_parts(model, to_model(batch, model), head_chunk_size=head_chunk_size)
        for task_sum, task_tokens in parts.per_task.values():
            total, tokens = total + task_sum, tokens + task_tokens
    model.train(was_training)
    return total, tokens


def answer_records(model, processor, fmt: str, ds: JanusDataset, decoding: Decoding,
                   batch_size: int = 8, limit: int | None = None) -> tuple[dict, list]:
    """Mean text metrics over greedy answers (batched), and one prediction row per record."""
    records = [ex.record for ex in ds.examples[:limit]]
    predictions = [p for start in range(0, len(records), batch_size)
                   for p in answer_batch(model, processor, records[start:start + batch_size], fmt, decoding)]
    rows = []
    for record, prediction in zip(records, predictions):
        reference = record.turns[-1][1]
        rows.append({"task": record.task, "source": record.source, "line": record.line,
                     "query": record.turns[-1][0], "reference": reference, "prediction": prediction,
                     **text_scores(prediction, reference)})
    means = {name: sum(r[name] for r in rows) / len(rows) for name in TEXT_METRICS}
    return means, rows


def sample_grid(model, processor, fmt: str, ds: JanusDataset, settings: EvalSettings, limit: int = MAX_SAMPLES):
    """References (decoded from their VQ codes) over one sample each, for the first val captions.
    Caption i always uses seed + i, so base and adapter grids differ only by the model."""
    examples = ds.examples[:limit]
    references = torch.tensor([[c for c in ex.labels if c != IGNORE_INDEX] for ex in examples])
    samples = [sample_codes(model, processor, ex.record.caption, fmt, n=1, cfg=settings.cfg,
                            temperature=1.0, seed=settings.seed + i)[0] for i, ex in enumerate(examples)]
    images = decode_codes_to_pil(model, torch.cat([references, torch.stack(samples)]))
    return {"captions": [ex.record.caption for ex in examples],
            "image": contact_sheet(images, columns=len(examples))}


def edit_grid(model, processor, fmt: str, ds: JanusDataset, settings: EvalSettings, limit: int = MAX_SAMPLES):
    """A row per val edit: its source(s) | its target (decoded from its VQ codes) | a sample. Edit i
    always uses seed + i, as the captions of `sample_grid` do; sources enter as the run trained them
    (the dataset's `data.edit_source_codes`)."""
    examples = ds.examples[:limit]
    targets = torch.tensor([[c for c in ex.labels if c != IGNORE_INDEX] for ex in examples])
    samples = [sample_edit_codes(model, processor, ex.record.caption, ex.record.sources, fmt, n=1, cfg=settings.cfg,
                                 seed=settings.seed + i, source_codes=ds.edit.source_codes)[0]
               for i, ex in enumerate(examples)]
    decoded = decode_codes_to_pil(model, torch.cat([targets, torch.stack(samples)]))
    rows = [[*map(open_rgb, ex.record.sources), decoded[i], decoded[len(examples) + i]]
            for i, ex in enumerate(examples)]
    return {"captions": [ex.record.caption for ex in examples], "image": edit_sheet(rows)}


def delta(base: dict, adapter: dict) -> dict:
    """adapter - base for every numeric metric both have."""
    out = {}
    for task in base.keys() & adapter.keys():
        out[task] = {k: adapter[task][k] - base[task][k] for k in base[task]
                     if k in adapter[task] and k not in ("records", "tokens")}
    return out


def write_report(report: dict, grids: dict, out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"output={out}: cannot create it ({err.strerror or err})") from None
    predictions = report.pop("predictions")
    for label, by_task in grids.items():
        for task, grid in by_task.items():   # samples_<label>.png; edits_<label>.png (source | target | result)
            name, key = ("edits", "edit_samples") if task == "edit" else ("samples", "samples")
            grid["image"].save(out / f"{name}_{label}.png")
            report.setdefault(key, {})[label] = {"file": f"{name}_{label}.png", "captions": grid["captions"]}
    for label, rows in predictions.items():
        if rows:
            with open(out / f"predictions_{label}.jsonl", "w", encoding="utf-8") as f:
                f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    (out / "eval.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out / "eval.md").write_text(markdown(report), encoding="utf-8")


_NAMES = {"loss": "loss (NLL / token)", "perplexity": "perplexity", "exact_match": "exact match",
          "cer": "CER", "edit_distance": "normalised edit distance", "tokens": "tokens", "records": "records"}


def markdown(report: dict) -> str:
    """A readable table: one row per task and metric, a column per model, then the delta."""
    results, labels = report["results"], list(report["results"])
    has_delta = "delta" in report
    head = ["task", "metric"] + labels + (["delta"] if has_delta else [])
    lines = [f"# janus-ft eval\n\nmodel: `{report['model']}`  ",
             f"adapter: `{report['adapter']}`  ", f"data: {', '.join(f'`{d}`' for d in report['data'])}\n",
             "| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * (len(head) - 2)]
    tasks = [t for t in TASK_NAMES.values() if any(t in r for r in results.values())]
    for task in tasks:
        for metric in results[labels[0]].get(task, {}):
            row = [task, _NAMES.get(metric, metric)] + [_fmt(results[lab][task].get(metric)) for lab in labels]
            if has_delta:
                row.append(_fmt(report["delta"].get(task, {}).get(metric), signed=True))
            lines.append("| " + " | ".join(row) + " |")
    for label, sample in report.get("samples", {}).items():
        lines.append(f"\n{label} samples (top: references; bottom: seed-fixed samples): "
                     f"![{label}]({sample['file']})  \ncaptions: " + "; ".join(sample["captions"]))
    for label, sample in report.get("edit_samples", {}).items():
        lines.append(f"\n{label} edits (a row per edit: source | target | seed-fixed sample): "
                     f"![{label} edits]({sample['file']})  \ninstructions: " + "; ".join(sample["captions"]))
    return "\n".join(lines) + "\n"


def _fmt(value, signed: bool = False) -> str:
    if value is None:
        return ""
    if isinstance(value, int):
        return f"{value:+d}" if signed else str(value)
    return f"{value:+.4f}" if signed else f"{value:.4f}"
