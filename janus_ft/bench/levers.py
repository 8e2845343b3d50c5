"""`janus-ft bench --levers`: each speed lever of a recipe on and off, one fresh process per run,
side by side -- the table `scripts/gpu_bench.sh` fills on a GPU (docs/benchmarks.md).

A lever is a recipe key with the value that turns it on and the one that turns it off; every
other key keeps the recipe's (or the common overrides') value, so each pair differs in that key
alone. A lever whose key this build's recipes do not have is skipped, and the table says so.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..model.heads import HEAD_CHUNK_SIZE


@dataclass(frozen=True)
class Lever:
    name: str
    key: str          # a recipe key, section.name
    on: str
    off: str
    needs: tuple[str, ...] = ()   # overrides both runs of the pair take (packed attention needs packed rows)


LEVERS = (
    Lever("per-sample attention in packed rows", "data.packed_attention", "per_sample", "mask", ("data.packing=true",)),
    Lever("chunked heads", "model.head_chunk_size", str(HEAD_CHUNK_SIZE), "0"),
    Lever("compiled decoder layers", "model.compile", "true", "false"),
    Lever("data worker processes", "train.dataloader_num_workers", "4", "0"),
)


def has_key(dotted: str) -> bool:
    """Whether this build's recipes have `section.name`."""
    from ..recipe.sections import Recipe

    section, _, name = dotted.partition(".")
    return hasattr(getattr(Recipe(), section, None), name)


def lever_benchmark(args, levers=LEVERS) -> dict:
    """Every lever on and off (`janus-ft bench` on the recipe, a child process each, on then off)."""
    runs = []
    for lever in levers:
        if not has_key(lever.key):
            runs.append({"lever": lever.name, "key": lever.key, "skipped": f"`{lever.key}` is not a recipe key in "
                                                                          "this build"})
            continue
        for setting in (lever.on, lever.off):
            overrides = [*args.overrides, *lever.needs, f"{lever.key}={setting}"]
            runs.append({"lever": lever.name, "key": lever.key, "setting": setting,
                         "report": bench_child(args, overrides)})
    return {"recipe": args.recipe, "overrides": args.overrides, "random_model": args.random_model,
            "steps": args.steps, "warmup": args.warmup, "runs": runs}


def bench_child(args, overrides: list[str]) -> dict:
    """`janus-ft bench` of the recipe with `overrides`, in a fresh process: its report."""
    from ..errors import UserError
    from .run import _die_with_parent

    with tempfile.TemporaryDirectory(prefix="janus-ft-levers-") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "janus_ft.cli", "bench", "--recipe", args.recipe, *overrides,
               "--steps", str(args.steps), "--warmup", str(args.warmup), "--json", str(out)]
        cmd += ["--random-model", args.random_model] if args.random_model else []
        # the child's own table goes to stderr (the log): stdout is this table's
        code = subprocess.run(cmd, stdout=2, preexec_fn=_die_with_parent if sys.platform == "linux" else None).returncode
        if code == 2:
            raise UserError(f"benchmark with {' '.join(overrides)} stopped on the input above")
        if code != 0:
            raise RuntimeError(f"benchmark failed (command: {' '.join(cmd)})")
        return json.loads(out.read_text())


def format_levers(report: dict) -> str:
    """The markdown table: per lever, its on and off runs, and on over off."""
    head = ("| lever | setting | s/step | real tokens/s | MFU | peak memory (GiB) | speed, on / off | memory, on / off |\n"
            "|---|---|---:|---:|---:|---:|---:|---:|")
    lines, first = [head], None
    by_lever: dict[str, list[dict]] = {}
    for run in report["runs"]:
        by_lever.setdefault(run["lever"], []).append(run)
    for name, runs in by_lever.items():
        if "skipped" in runs[0]:
            lines.append(f"| {name} | skipped: {runs[0]['skipped']} | | | | | | |")
            continue
        on, off = (r["report"]["variants"][0] for r in runs)
        first = first or runs[0]["report"]
        for run, v in zip(runs, (on, off)):
            ratios = (f"{off['step_time_s'] / on['step_time_s']:.3f}x | "
                      f"{on['peak_memory_bytes'] / off['peak_memory_bytes']:.3f}x") if v is on else " | "
            lines.append(f"| {name if v is on else ''} | `{run['key']}={run['setting']}` | {v['step_time_s']:.4g} | "
                         f"{v['real_tokens_per_s']:.4g} | {100 * v['mfu']:.1f}% | "
                         f"{v['peak_memory_bytes'] / 2 ** 30:.2f} | {ratios} |")
    if first is not None:
        m = first["machine"]
        lines.insert(0, f"janus-ft bench --levers: {m.get('gpu') or m['cpu']} ({m['torch_threads']} threads), "
                        f"{first['model']['random_model'] or first['model']['path']}, {first['compute_dtype']}, "
                        f"{report['steps']} steps after {report['warmup']} warm-up, memory = "
                        f"{first['variants'][0]['memory_kind']}\n")
    return "\n".join(lines)
