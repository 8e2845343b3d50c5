"""`janus-ft bench`: training throughput, memory and MFU of a recipe, with comparisons
(`janus_ft.bench.run`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..bench.run import COMPARISONS, benchmark, format_table


def configure(parser) -> None:
    from ..tiny import SIZE_PRESETS

    parser.add_argument("--recipe", help="recipe YAML (see recipes/); required unless --startup")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="override recipe keys")
    parser.add_argument("--steps", type=int, default=5, help="measured optimizer steps (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="steps run first and not measured (default 1)")
    parser.add_argument("--compare", action="append", default=[], metavar="VARIANT",
                        help=f"add a variant side by side (repeatable): {' | '.join(COMPARISONS)}, or the recipe "
                             "with overrides of how the same model trains on the same samples, e.g. "
                             "data.packing=true or \"data.packing=true data.packed_attention=mask\"")
    parser.add_argument("--random-model", choices=list(SIZE_PRESETS), default=None,
                        help="instead of model.path, a random model of this real size (built once, no download)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run the variants N times, reversing their order every other round (A B, B A, ...), "
                             "so a machine that gets busier or quieter favours none of them")
    parser.add_argument("--interleave", action="store_true",
                        help="with --compare bare and / or override variants: janus-ft and the variants in one "
                             "process, a step of each in turn on the same batch, so drift of the machine's speed "
                             "cancels in each pair (memory is then the process's)")
    parser.add_argument("--in-process", action="store_true",
                        help="run all variants in this process (faster to start, but later variants find "
                             "kernels for the same batch shapes already warm, and on CPU share the peak RSS)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--memory", metavar="TASK:TOKENS",
                        help="instead: the peak memory of one training step of the recipe on a synthetic batch of "
                             "per_device_train_batch_size rows of TOKENS tokens of TASK (text | understanding | "
                             "generation), split into weights, trainable + optimizer state, activations and logits")
    parser.add_argument("--levers", action="store_true",
                        help="instead: each speed lever (per-sample attention in packed rows, chunked heads, compiled "
                             "layers, data workers) on and off, a fresh process per run, as one table")
    parser.add_argument("--startup", type=int, metavar="N",
                        help="instead: time `janus-ft sft` to its first step on N synthetic records (half "
                             "understanding, half text), cold and warm, with peak RSS per process")
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2], help="with --startup: rank counts (default 1 2)")
    parser.add_argument("--work-dir", default="bench-startup", help="with --startup: where data and runs go")
    parser.add_argument("--variant", help=argparse.SUPPRESS)            # set for a child process
    parser.add_argument("--peak-flops", type=float, help=argparse.SUPPRESS)


def run(args) -> int:
    from ..errors import UserError

    if args.startup:
        from ..bench.startup import format_startup, startup_benchmark
        report = startup_benchmark(args.startup, args.ranks, Path(args.work_dir))
        print(format_startup(report))
    elif not args.recipe:
        raise UserError("bench: give --recipe (or --startup N)")
    elif args.levers:
        from ..bench.levers import format_levers, lever_benchmark
        report = lever_benchmark(args)
        print(format_levers(report))
    elif args.memory:
        from ..bench.memory import format_memory, memory_benchmark
        report = memory_benchmark(args)
        print(format_memory(report))
    else:
        report = benchmark(args)
        print(format_table(report))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0
