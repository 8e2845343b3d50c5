"""`janus-ft chat`: understanding / text inference with a base model and optional LoRA adapter.

One question from `--prompt` (streamed to stdout), or every record of a JSONL file with `--jsonl`
(the last query of each record is answered given its history; records come back with a
`prediction` field). Prompts are built as training builds them (`janus_ft.inference`).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import UserError
from .inference import load_for_inference, prompt_record, record_inputs, resolve_format, to_model
from .records import Record, parse_line, read_lines


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


def configure(parser) -> None:
    parser.add_argument("--model", help="transformers-native Janus directory or 'tiny' "
                        "(default: the adapter's base_model_name_or_path)")
    parser.add_argument("--adapter", help="LoRA adapter directory (e.g. the output_dir of janus-ft sft)")
    parser.add_argument("--image", action="append", default=[], metavar="PATH",
                        help="an image for the prompt (repeat for several); placed at <image> tags, "
                        "or at the start of the prompt when it has none")
    parser.add_argument("--prompt", help="the question")
    parser.add_argument("--jsonl", metavar="FILE", help="answer every record of a JSONL file instead")
    parser.add_argument("--output", metavar="FILE", help="with --jsonl: write records here (default: stdout)")
    parser.add_argument("--system", help="system prompt (default: Janus's own; '' for none); with --jsonl, for "
                        "records without a 'system' field")
    parser.add_argument("--format", default="auto", choices=["auto", "janus-pro", "janus"],
                        help="conversation format (default: from the chat template)")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="longest answer in tokens")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy; > 0 samples")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold (when sampling)")
    parser.add_argument("--seed", type=int, default=None, help="seed for sampling")
    parser.add_argument("--batch-size", type=int, default=8, help="with --jsonl: records answered per generate call")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--no-stream", action="store_true", help="print the answer only when it is complete")


def run(args) -> int:
    if (args.prompt is None) == (args.jsonl is None):
        raise UserError("give exactly one of --prompt TEXT or --jsonl FILE")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    # Bad input is reported before the (possibly minutes-long) model load.
    rows = read_rows(Path(args.jsonl)) if args.jsonl else None
    if rows is None:
        record = prompt_record(args.prompt, len(args.image), args.system)
        record.images = [Path(p) for p in args.image]
        missing = [p for p in record.images if not p.is_file()]
        if missing:
            raise UserError(f"--image {missing[0]}: file not found")
    model, processor = load_for_inference(args.model, args.adapter, args.dtype)
    fmt = resolve_format(processor, args.format)
    decoding = Decoding(args.max_new_tokens, args.temperature, args.top_p, args.seed, args.system)
    if rows is not None:
        return answer_rows(model, processor, fmt, rows, args.output, decoding, args.batch_size)
    streamer = None if args.no_stream else _streamer(processor)
    text = answer(model, processor, record, fmt, decoding, streamer)
    if args.no_stream:
        print(text)
    return 0


def _streamer(processor):
    from transformers import TextStreamer

    class AnswerStreamer(TextStreamer):
        """Prints the answer as it is generated, without the space that opens every Janus answer
        (the prompt ends at `{R_a}:` and the answer is ` text`), as `--no-stream` prints it."""

        started = False

        def on_finalized_text(self, text: str, stream_end: bool = False):
            if not self.started:
                text = text.lstrip()
                self.started = bool(text)
            super().on_finalized_text(text, stream_end)

    return AnswerStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True)


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


def left_pad(inputs: list[dict], pad_id: int) -> dict:
    """Prompts of one record each -> one batch, padded on the left so every answer starts at the
    same column. `pixel_values` are concatenated in row order, the order in which the model
    scatters image features into placeholder positions.

    >>> b = left_pad([{"input_ids": torch.tensor([[5, 6, 7]])}, {"input_ids": torch.tensor([[8]])}], pad_id=0)
    >>> b["input_ids"].tolist(), b["attention_mask"].tolist()
    ([[5, 6, 7], [0, 0, 8]], [[1, 1, 1], [0, 0, 1]])
    """
    width = max(x["input_ids"].shape[1] for x in inputs)
    ids = torch.full((len(inputs), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, x in enumerate(inputs):
        n = x["input_ids"].shape[1]
        ids[row, width - n:] = x["input_ids"][0]
        mask[row, width - n:] = 1
    batch = {"input_ids": ids, "attention_mask": mask}
    pixels = [x["pixel_values"] for x in inputs if "pixel_values" in x]
    if pixels:
        batch["pixel_values"] = torch.cat(pixels)
    return batch


@torch.no_grad()
def answer_batch(model, processor, records: list[Record], fmt: str, decoding: Decoding) -> list[str]:
    """Answers to several records from one `generate` call (greedy: the same answers as `answer`
    one by one; sampling draws from one seeded stream for the whole batch)."""
    tok = processor.tokenizer
    batch = to_model(left_pad([record_inputs(processor, r, fmt, decoding.system_prompt) for r in records],
                              tok.pad_token_id), model)
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


def read_rows(path: Path) -> list[tuple[dict, Record]]:
    """(original object, validated record) for every line; the first bad record raises."""
    if not path.is_file():
        raise UserError(f"--jsonl {path}: file not found")
    rows = []
    for number, line in read_lines(path):
        record = parse_line(line, path, number)   # raises a BadRecord before json.loads could
        rows.append((json.loads(line), record))
    return rows


def answer_rows(model, processor, fmt: str, rows, output: str | None, decoding: Decoding,
                batch_size: int = 1) -> int:
    """Answer each understanding/text record, `batch_size` at a time; generation records are passed
    through unanswered. Rows are written in input order as soon as their batch is done."""
    out = open(output, "w", encoding="utf-8") if output else sys.stdout
    answered = skipped = 0
    try:
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            todo = [record for _, record in chunk if record.task != "generation"]
            answers = iter(answer_batch(model, processor, todo, fmt, decoding) if todo else [])
            for obj, record in chunk:
                if record.task == "generation":
                    skipped += 1
                else:
                    obj["prediction"] = next(answers)
                    answered += 1
                out.write(json.dumps(obj, ensure_ascii=False) + "\n")
            out.flush()
    finally:
        if output:
            out.close()
    note = f", {skipped} generation record(s) passed through (use janus-ft generate)" if skipped else ""
    print(f"janus-ft chat: answered {answered} record(s){note}", file=sys.stderr)
    return 0
