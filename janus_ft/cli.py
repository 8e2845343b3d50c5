"""`janus-ft` command line. Each command lives in its own module exposing `configure(parser)`
and `run(args) -> int`; this file only routes, and turns user errors into exit code 2."""

from __future__ import annotations

import argparse
import importlib
import sys

from .console import quiet_third_party
from .errors import UserError

# command -> (module, one-line help). Modules are imported only when their command runs.
COMMANDS = {
    "sft": ("janus_ft.sft", "fine-tune with a YAML recipe"),
    "data": ("janus_ft.data_cli", "check or preview a dataset"),
    "tiny": ("janus_ft.tiny_cli", "write a tiny random Janus checkpoint"),
    "merge": ("janus_ft.merge", "merge a LoRA adapter into its base model"),
    "convert": ("janus_ft.convert", "convert between DeepSeek's original and transformers layouts"),
    "chat": ("janus_ft.chat", "understanding / text inference"),
    "generate": ("janus_ft.generate", "text-to-image with classifier-free guidance"),
    "eval": ("janus_ft.evaluate", "per-task validation loss and task metrics"),
    "bench": ("janus_ft.bench", "training throughput, memory and MFU of a recipe, with comparisons"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="janus-ft", description="Fine-tune DeepSeek Janus / Janus-Pro.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        cmd.set_defaults(_module=module)
        importlib.import_module(module).configure(cmd)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Around the parser too: building it imports transformers, which imports the optional
    # libraries (DeepSpeed, bitsandbytes) that log on import.
    with quiet_third_party():
        return _run(argv)


def _run(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except UserError as err:
        print(f"janus-ft {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"janus-ft {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
