"""`janus-ft chat`: understanding / text inference with a base model and optional LoRA adapter.

One question from `--prompt` (streamed to stdout), or every record of a JSONL file with `--jsonl`
(the last query of each record is answered given its history; records come back with a
`prediction` field). Everything is `janus_ft.Janus`'s (`infer.engine`): this module parses and prints.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..data.records import Record, parse_line, read_lines
from ..errors import UserError
from ..infer.engine import Janus
from ..infer.prompts import prompt_record


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
    janus = Janus.load(args.model, args.adapter, args.dtype, args.format)
    settings = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_p": args.top_p,
                "seed": args.seed, "system_prompt": args.system}
    if rows is not None:
        return answer_rows(janus, rows, args.output, settings, args.batch_size)
    streamer = None if args.no_stream else _streamer(janus.processor())
    text = janus.answer(record, streamer=streamer, **settings)
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


def read_rows(path: Path) -> list[tuple[dict, Record]]:
    """(original object, validated record) for every line; the first bad record raises."""
    if not path.is_file():
        raise UserError(f"--jsonl {path}: file not found")
    rows = []
    for number, line in read_lines(path):
        record = parse_line(line, path, number)   # raises a BadRecord before json.loads could
        rows.append((json.loads(line), record))
    return rows


def answer_rows(janus: Janus, rows, output: str | None, settings: dict, batch_size: int = 1) -> int:
    """Answer each understanding/text record, `batch_size` at a time; generation records are passed
    through unanswered. Rows are written in input order as soon as their batch is done."""
    out = open(output, "w", encoding="utf-8") if output else sys.stdout
    answered = skipped = 0
    try:
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            todo = [record for _, record in chunk if record.task != "generation"]
            answers = iter(janus.answer_batch(todo, **settings) if todo else [])
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
