"""`janus-ft bench --recipe R.yaml [section.key=value ...]`: how fast a recipe trains, and where the
time and memory go.

Runs warm-up + N optimizer steps of the recipe with the real trainer and reports samples/s,
supervised tokens/s, the real-token fraction of batches, peak memory (RSS on CPU, allocated on
GPU), the step time split into data / forward / backward / optimizer, and MFU (model FLOPs per
second, `janus_ft.bench.throughput`, over a matmul timed on the same device in the same dtype).
`--compare` adds variants on the same batches, side by side:

    bare           a plain PyTorch loop (AdamW, same model, LoRA, collator and loss)
    cache          generation targets re-encoded by the VQ encoder every step vs the code cache
    checkpointing  gradient checkpointing on vs off (peak memory)
    "KEY=VALUE .."  the recipe with these overrides: how the same model trains on the same samples
                   (train.*, data.packing, data.packed_attention, data.group_by_length, model.compile,
                   model.head_chunk_size),
                   e.g. --compare data.packing=true --compare "data.packing=true data.packed_attention=mask"

Timing wraps the trainer's own stages (a subclass hook per stage, plus callbacks), with a device
synchronisation at each boundary so GPU work is charged to the stage that launched it.

`--interleave` (with `--compare bare` and / or override variants) runs janus-ft and the variants in
one process, one step each in turn, on copies of the model sharing their frozen weights: step k of
every variant trains on batch k seconds apart, so a machine whose speed drifts between processes or
over minutes (a shared cloud host: the same run's median step moved by a third between processes
on an idle 2-core VM) shifts them all alike. A janus-ft variant is a second trainer run one step at
a time (`loops.TrainerTurns`). The order of the variants is drawn per step (`turn_orders`: seeded,
each variant before and after each other one equally often), and a ratio averages the two orders
of its pair (`throughput.speed_vs`). Against the bare loop the ratio is then the framework's cost
alone, to within the step-to-step noise. Peak memory is the shared process's, so not per variant.
"""

from __future__ import annotations

import copy
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from .interleave import bench_interleaved
from .random_model import random_model_path
from .setup import BASELINE, Setup, compute_dtype, prepare, release_memory

INTERLEAVED = "interleaved"   # a child process's --variant under --interleave
COMPARISONS = {"bare": "bare", "cache": "reencode", "checkpointing": "checkpointing"}
# What an override variant may change: how the same model trains on the same samples (the model,
# its LoRA and the datasets are built once for every variant).
VARIANT_KEYS = ("train.", "data.packing", "data.packed_attention", "data.group_by_length", "model.compile",
                "model.head_chunk_size")


def benchmark(args) -> dict:
    """Run the variants `args` names (from `janus-ft bench`) and return the report."""
    from ..errors import RecipeError

    if args.steps < 1 or args.warmup < 0 or args.rounds < 1:
        raise RecipeError("--steps and --rounds must be >= 1, --warmup >= 0")
    variants = variant_names(args.compare)
    recipes = {name: variant_recipe(args, name) for name in variants if name not in COMPARISONS.values()}
    recipe = recipes[BASELINE]
    if args.interleave and (len(variants) < 2 or set(variants) & {"reencode", "checkpointing"}):
        raise RecipeError("--interleave runs variants that take turns step by step in one process: give it "
                          "--compare bare and / or override variants (--compare KEY=VALUE), not cache or checkpointing")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = compute_dtype(recipe)
    from .throughput import peak_matmul_flops, speed_vs
    peak = args.peak_flops or peak_matmul_flops(device, dtype)
    if args.variant:   # a child process of the loop below: one variant, or the interleaved ones
        variants = variants if args.variant == INTERLEAVED else [args.variant]
        own = recipe if args.variant in (INTERLEAVED, *COMPARISONS.values()) else variant_recipe(args, args.variant)
        setup = Setup(own)
        runs = (bench_interleaved(recipes, variants, setup, args.steps, args.warmup, peak) if args.variant == INTERLEAVED
                else [bench_variant(own, args.variant, setup, args.steps, args.warmup, peak)])
    elif args.interleave:   # each round one process holding them all, a fresh process per round
        setup = Setup(recipe) if args.in_process else None
        runs = [run for _ in range(args.rounds)
                for run in (bench_interleaved(recipes, variants, setup, args.steps, args.warmup, peak)
                            if args.in_process else run_child(args, INTERLEAVED, peak))]
    else:
        order = [name for r in range(args.rounds) for name in (variants if r % 2 == 0 else variants[::-1])]
        if len(variants) > 1 and not args.in_process:
            runs = [run for name in order for run in run_child(args, name, peak)]
        else:
            setup = Setup(recipe)
            runs = [bench_variant(recipes.get(name, recipe), name, setup, args.steps, args.warmup, peak)
                    for name in order]
    if not args.peak_flops:   # a busy machine lowers one reading: keep the better of before and after
        peak = max(peak, peak_matmul_flops(device, dtype))
    results = [merge_rounds([r for r in runs if r["name"] == name], peak) for name in variants]
    for result in results:
        result.update(speed_vs_baseline_median=speed_vs(results[0], result),
                      cpu_speed_vs_baseline_median=speed_vs(results[0], result, "cpu"))
    report = {"command": command_line(args), "machine": machine(device), "recipe": args.recipe, "overrides": args.overrides,
              "model": {"path": recipe.model.path, "dtype": recipe.model.dtype,
                        "quantization": recipe.model.quantization, "random_model": args.random_model},
              "steps": args.steps, "warmup": args.warmup, "interleaved": bool(args.interleave),
              "compute_dtype": str(dtype).replace("torch.", ""),
              "peak_matmul_flops": peak, "variants": results}
    return report


def variant_names(compare: list[str]) -> list[str]:
    """The baseline, then each `--compare` once: a named comparison, or an override variant named by
    its overrides (spaces between them).

    >>> variant_names(["bare", "data.packing=true", "bare", "data.packing=true  model.compile=true"])
    ['janus-ft', 'bare', 'data.packing=true', 'data.packing=true model.compile=true']
    """
    names = [BASELINE]
    for c in compare:
        name = COMPARISONS.get(c) or " ".join(shlex.split(c))
        if name not in names:
            names.append(name)
    return names


def variant_recipe(args, name: str):
    """The recipe of the baseline or of an override variant: `--recipe` with its overrides, then the
    variant's, which may only change how the same model trains on the same samples."""
    from ..errors import RecipeError
    from ..recipe import load_recipe

    extra = [] if name == BASELINE else shlex.split(name)
    for override in extra:
        key = override.split("=", 1)[0]
        if "=" not in override or not key.startswith(VARIANT_KEYS):
            raise RecipeError(f"bench --compare {name!r}: {override!r} is neither bare, cache nor checkpointing, "
                              f"nor an override of how the same model trains on the same samples ({', '.join(VARIANT_KEYS)}); "
                              "a different model or data is a run of its own")
    recipe = load_recipe(args.recipe, [*args.overrides, *extra])
    if args.random_model:
        recipe.model.path = str(random_model_path(args.random_model))
    return recipe


def bench_variant(recipe, name: str, setup: Setup, steps: int, warmup: int, peak: float) -> dict:
    from .loops import BareLoop, Reencoder, trainer_loop
    from .throughput import PeakMemory, summarize

    recipe = copy.deepcopy(recipe)
    recipe.train.gradient_checkpointing = name == "checkpointing" or recipe.train.gradient_checkpointing
    with tempfile.TemporaryDirectory(prefix="janus-ft-bench-") as out:
        recipe.output_dir = out
        model, mixture, collator, args, timer = prepare(recipe, setup, warmup + steps)
        reencode = Reencoder(model, setup.train_sets) if name == "reencode" else None
        memory = PeakMemory(args.device)
        if name == "bare":
            loop = BareLoop(model, mixture, collator, args, warmup + steps, timer, recipe.model.head_chunk_size)
            for _ in range(warmup + steps):
                loop.step()
        else:
            trainer_loop(model, mixture, collator, args, setup.processor, timer, reencode,
                         head_chunk_size=recipe.model.head_chunk_size)
        result = summarize(name, timer.steps[warmup:], peak, memory.read())
        if reencode is not None:
            result["reencoded_codes_differing"] = reencode.differing
    del model
    release_memory()
    return result


def merge_rounds(runs: list[dict], peak: float) -> dict:
    """One variant's rounds as one result: its measured steps together, the highest peak memory."""
    from .throughput import summarize

    memory = max(({k: r[k] for k in ("peak_memory_bytes", "memory_at_start_bytes", "memory_kind")}
                  for r in runs), key=lambda m: m["peak_memory_bytes"])
    result = summarize(runs[0]["name"], [s for r in runs for s in r["per_step"]], peak, memory)
    if "reencoded_codes_differing" in runs[0]:
        result["reencoded_codes_differing"] = sum(r["reencoded_codes_differing"] for r in runs)
    return dict(result, rounds=[[{k: s[k] for k in ("time", "cpu", "order") if k in s} for s in r["per_step"]] for r in runs])


# --- isolation and output ----------------------------------------------------------------------

def run_child(args, name: str, peak: float) -> list[dict]:
    """One variant (or, under --interleave, the pair) in a fresh Python process: its peak RSS is
    its own."""
    with tempfile.TemporaryDirectory(prefix="janus-ft-bench-") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "janus_ft.cli", "bench", "--recipe", args.recipe, *args.overrides,
               "--steps", str(args.steps), "--warmup", str(args.warmup), "--variant", name,
               "--peak-flops", repr(peak), "--json", str(out)]
        if args.random_model:
            cmd += ["--random-model", args.random_model]
        if args.interleave:
            cmd += [arg for c in args.compare for arg in ("--compare", c)] + ["--interleave"]
        code = subprocess.run(cmd, preexec_fn=_die_with_parent if sys.platform == "linux" else None).returncode
        if code == 2:   # bad input: the child has printed the message naming it
            from ..errors import UserError
            raise UserError(f"benchmark variant {name!r} stopped on the input above")
        if code != 0:
            raise RuntimeError(f"benchmark variant {name!r} failed (command: {' '.join(cmd)})")
        return json.loads(out.read_text())["variants"]


def _die_with_parent() -> None:
    """In the child, before it runs: the kernel ends it when the benchmark process ends, however
    that is stopped (a killed parent would otherwise leave a model-sized orphan running)."""
    import ctypes
    import signal

    ctypes.CDLL(None).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG


def command_line(args) -> str:
    parts = ["janus-ft bench --recipe", args.recipe, *map(shlex.quote, args.overrides),
             f"--steps {args.steps} --warmup {args.warmup}"]
    parts += [f"--compare {shlex.quote(c)}" for c in args.compare] + (["--interleave"] if args.interleave else [])
    parts += [f"--rounds {args.rounds}"] if args.rounds > 1 else []
    parts += [f"--random-model {args.random_model}"] if args.random_model else []
    return " ".join(parts)


def machine(device: torch.device) -> dict:
    import transformers

    info = {"device": device.type, "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "load_average": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2 ** 30, 1))
    return info


def format_table(report: dict) -> str:
    from .throughput import STAGES

    variants = report["variants"]
    base = variants[0]
    rows = [("samples/s", lambda v: f"{v['samples_per_s']:.3g}"),
            ("supervised tokens/s", lambda v: f"{v['supervised_tokens_per_s']:.4g}"),
            ("real tokens/s", lambda v: f"{v['real_tokens_per_s']:.4g}"),
            ("real-token fraction", lambda v: f"{v['real_token_fraction']:.3f}"),
            ("step time (s)", lambda v: f"{v['step_time_s']:.4g}")]
    rows += [(f"  {p}", lambda v, p=p: f"{v['breakdown_s'][p]:.4g}") for p in (*STAGES, "other")]
    rows += [("median step time (s)", lambda v: f"{v['median_step_time_s']:.4g}"),
             ("  CPU time, median (s)", lambda v: f"{v['median_cpu_time_s']:.4g}"),
             ("peak memory (GiB)", lambda v: f"{v['peak_memory_bytes'] / 2 ** 30:.2f}"),
             ("  held at start (GiB)", lambda v: f"{v['memory_at_start_bytes'] / 2 ** 30:.2f}"),
             ("model TFLOP/s", lambda v: f"{v['model_flops_per_s'] / 1e12:.3g}"),
             ("MFU (%)", lambda v: f"{100 * v['mfu']:.2f}"),
             ("loss, first measured step", lambda v: f"{v['losses'][0]:.5g}")]
    if len(variants) > 1:
        rows += [(f"speed vs {base['name']}", lambda v: f"{v['samples_per_s'] / base['samples_per_s']:.3f}x"),
                 ("  median of paired steps", lambda v: f"{v['speed_vs_baseline_median']:.3f}x"),
                 ("  CPU time, paired steps", lambda v: f"{v['cpu_speed_vs_baseline_median']:.3f}x"),
                 (f"memory vs {base['name']}", lambda v: f"{v['peak_memory_bytes'] / base['peak_memory_bytes']:.3f}x")]
    width = max(12, *(len(v["name"]) + 2 for v in variants))
    m = report["machine"]
    head = (f"janus-ft bench: {report['steps']} steps after {report['warmup']} warm-up, "
            f"{m.get('gpu') or m['cpu']} ({m['torch_threads']} threads), "
            f"peak {report['compute_dtype']} matmul {report['peak_matmul_flops'] / 1e12:.3g} TFLOP/s, "
            f"memory = {base['memory_kind']}"
            + (" of the process both variants shared (--interleave)" if report.get("interleaved") else ""))
    lines = [head, f"{'':<28}" + "".join(f"{v['name']:>{width}}" for v in variants)]
    for label, cell in rows:
        lines.append(f"{label:<28}" + "".join(f"{cell(v):>{width}}" for v in variants))
    bad = [v["name"] for v in variants if not all(math.isfinite(x) for x in v["losses"])]
    if bad:
        lines.append(f"warning: non-finite loss in {', '.join(bad)}")
    return "\n".join(lines)
