"""`janus-ft` command line. Each command lives in its own module of this package exposing
`configure(parser)` and `run(args) -> int`: they parse, check input and print, and call the library
for everything else. This file only routes, and turns user errors into exit code 2.

Nothing in janus_ft imports this package: it is the top of the layering (see docs/architecture.md).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import re
import sys

from ..errors import UserError
from ..train.console import quiet_third_party
from ..train.distributed import end_processes

# command -> (module, one-line help). Modules are imported only when their command runs.
COMMANDS = {
    "sft": ("janus_ft.cli.sft", "fine-tune with a YAML recipe"),
    "data": ("janus_ft.cli.data", "check or preview a dataset"),
    "tiny": ("janus_ft.cli.tiny", "write a tiny random Janus checkpoint"),
    "merge": ("janus_ft.cli.merge", "merge a LoRA adapter into its base model"),
    "convert": ("janus_ft.cli.convert", "convert between DeepSeek's original and transformers layouts"),
    "chat": ("janus_ft.cli.chat", "understanding / text inference"),
    "generate": ("janus_ft.cli.generate", "text-to-image with classifier-free guidance"),
    "eval": ("janus_ft.cli.eval", "per-task validation loss and task metrics"),
    "bench": ("janus_ft.cli.bench", "training throughput, memory and MFU of a recipe, with comparisons"),
    "ui": ("janus_ft.cli.ui", "a web page to chat, draw, compare adapters and watch runs"),
    "grpo": ("janus_ft.cli.grpo", "reinforcement learning (GRPO) with LoRA and reward functions in Python"),
    "dpo": ("janus_ft.cli.dpo", "preference tuning (DPO / IPO) with LoRA on pairs of any task"),
    "cache": ("janus_ft.cli.cache", "list or prune the prepared-rows and VQ-code caches"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="janus-ft", description="Fine-tune DeepSeek Janus / Janus-Pro.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        cmd.set_defaults(_module=module, _parser=cmd)
        importlib.import_module(module).configure(cmd)
    return parser


class _Console(logging.StreamHandler):
    """janus_ft's own log messages on stdout, found at each message (tests swap `sys.stdout`)."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value):
        pass


class _Format(logging.Formatter):
    """accelerate's logger prefixes every message with `[RANK n] `: worth keeping when several
    processes print, noise when one does."""

    def format(self, record):
        text = super().format(record)
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            text = text.replace("janus-ft: [RANK 0] ", "janus-ft: ", 1)
        return text


def show_janus_ft_logs() -> None:
    """Messages janus_ft logs (INFO and up; the main process only, unless a message is per rank)
    printed as `janus-ft: ...`. Libraries leave logging to the application: this is ours."""
    logger = logging.getLogger("janus_ft")
    logger.setLevel(logging.INFO)
    if not any(isinstance(h, _Console) for h in logger.handlers):
        handler = _Console()
        handler.setFormatter(_Format("janus-ft: %(message)s"))
        logger.addHandler(handler)


def main(argv: list[str] | None = None) -> int:
    # Around the parser too: building it imports transformers, which imports the optional
    # libraries (DeepSpeed, bitsandbytes) that log on import.
    with quiet_third_party():
        code = _run(argv)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # A rank of torchrun / accelerate launch ends here once its work is written and flushed:
        # left to interpreter shutdown, a finished rank aborted now and then while native thread
        # pools were torn down ("terminate called without an active exception", seen in about one
        # two-rank run in five), which turns a complete run into a failed job.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def with_flags(message: str, parser) -> str:
    """A library error names the parameters to change (`overwrite=True`, `adapter=DIR`); here it
    names the command's flags that set them (`--overwrite`, `--adapter DIR`), found by the
    destination argparse gives each option."""
    for action in parser._actions:
        flags = [o for o in action.option_strings if o.startswith("--")]
        if not flags or action.dest == "help":
            continue
        name = re.escape(action.dest)
        message = re.sub(rf"(?<![\w.-]){name}=True\b", flags[0], message)
        message = re.sub(rf"(?<![\w.-]){name}=(?=[\s,;:)]|$)", flags[0], message)
        message = re.sub(rf"(?<![\w.-]){name}=", flags[0] + " ", message)
    return message


def _run(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    show_janus_ft_logs()
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except UserError as err:
        print(f"janus-ft {args.command}: error: {with_flags(str(err), args._parser)}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"janus-ft {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        end_processes()

