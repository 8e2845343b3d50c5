"""Margins of the learning tests over train seeds x model initialisations x thread counts.

    python scripts/learning_margins.py CASE [CASE ...] [--seeds 42 1 2] [--inits 0 1 2] [--threads 1 2]
                                       [--out runs/margins] [--set section.key=value ...]

CASE: sft_colour, sft_demo, sft_captioned, dpo_understanding, dpo_generation, grpo_format, grpo_t2i,
qlora; and, without training, dpo_codes (how the random VQ codes the preference shots) and
grpo_decoder (the colours the random decoder draws). Each runs its test's training configuration
and measurement (the functions live in tests/test_*.py, so the numbers are the tests' own) once per
cell, one cell after the other. An init is the seed `janus_ft.tiny.build_tiny` draws the weights
with, at the size the test uses (the tiny model, the `mid` LLM, the 128-channel VQ); init 0 is the
model the tests use. Each thread count runs in a process of its own with OMP_NUM_THREADS set, as the
suite does. `--set` adds recipe overrides (where the case passes overrides through) and
`--pref-noise` redraws the preference shots with another pixel noise, to try a variant. Prints a
row per cell, then min / median / max per metric, and appends every cell to OUT/margins.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def load(model_dir: Path):
    from transformers import JanusForConditionalGeneration, JanusProcessor

    return JanusForConditionalGeneration.from_pretrained(model_dir).eval(), JanusProcessor.from_pretrained(model_dir)


def sft_colour(model_dir, seed, work, data, extra):
    import test_sft

    run = test_sft.train_colour(data[0], work / "run", str(model_dir), seed)
    base, processor = load(model_dir)
    got = test_sft.colour_margins(run, base, processor, data[1])
    report = test_sft.compare_base(run, data[1], "understanding", work / "eval")
    return got | {"cb_delta_loss": report["delta"]["loss"], "cb_base_em": report["base"]["exact_match"],
                  "cb_tuned_em": report["adapter"]["exact_match"]}


def sft_captioned(model_dir, seed, work, data, extra):
    import test_sft

    run = test_sft.train_captioned(data[0], work / "run", str(model_dir), seed)
    base, processor = load(model_dir)
    got = test_sft.captioned_margins(run, base, processor, data)
    return got | {"cb_delta_loss": test_sft.compare_base(run, data[1], "generation", work / "eval")["delta"]["loss"]}


def sft_demo(model_dir, seed, work, data, extra):
    import test_sft

    return test_sft.demo_margins(work / "demo", f"model.path={model_dir}", f"train.seed={seed}", *extra)


def dpo_understanding(model_dir, seed, work, data, extra):
    import test_dpo_learning

    return test_dpo_learning.understanding_margins(str(model_dir), data, work / "u", f"train.seed={seed}", *extra)


def dpo_generation(model_dir, seed, work, data, extra):
    import test_dpo_learning

    # Evaluations every 20 steps show the curve; the last one is what the test reads.
    return test_dpo_learning.generation_margins(str(model_dir), data, work / "g", "train.eval_steps=20",
                                                f"train.seed={seed}", *extra)


def dpo_codes(model_dir, seed, work, data, extra):
    """No training: how the random VQ codes the generation shots, at the test's noise and at +-3."""
    import test_dpo_learning

    base, _ = load(model_dir)
    got = {}
    for noise, pref in data.items():
        proto = test_dpo_learning.prototypes(base, pref, work / "vq")
        got[f"shared_codes@noise{noise}"] = test_dpo_learning.shared_codes(base, pref, work / "vq")
        got[f"colours_shared@noise{noise}"] = test_dpo_learning.colours_shared(proto)
    return got


def grpo_format(model_dir, seed, work, data, extra):
    import test_grpo

    return test_grpo.format_margins(work / "run", str(model_dir), seed)


def grpo_t2i(model_dir, seed, work, data, extra):
    import test_grpo

    got = test_grpo.t2i_colour_margins(model_dir, work / "run", seed, *extra)
    return {k: v for k, v in got.items() if k != "history"}


def grpo_decoder(model_dir, seed, work, data, extra):
    """No training: the colour reward for red of the decoder's one-code images (every position one
    code) and of random-code images, and the score of `drawable_colour`'s target for the latter."""
    import numpy as np
    import test_grpo
    import torch

    from janus_ft.data.vq import decode_codes_to_pil
    from janus_ft.eval.reward_functions import colour_match
    from janus_ft.tiny import CODEBOOK_SIZE, IMAGE_SIZE, PATCH_SIZE

    base, _ = load(model_dir)
    positions = (IMAGE_SIZE // PATCH_SIZE) ** 2
    random_codes = torch.randint(0, CODEBOOK_SIZE, (256, positions), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        one_code = decode_codes_to_pil(base, torch.arange(CODEBOOK_SIZE)[:, None].repeat(1, positions))
        mixed = decode_codes_to_pil(base, random_codes)
    target = test_grpo.drawable_colour(model_dir)
    score = {c: (lambda images, c=c: colour_match([""] * len(images), images, [c] * len(images))) for c in ("red", target)}
    return {"red_best_one_code": max(score["red"](one_code)), "red_random_codes": float(np.mean(score["red"](mixed))),
            "target_random_codes": float(np.mean(score[target](mixed)))}


def qlora(model_dir, seed, work, data, extra):
    import test_qlora

    import janus_ft

    got = {}
    for quantization in ("4bit", "8bit"):
        more = ["train.gradient_checkpointing=true"] if quantization == "4bit" else []
        recipe = test_qlora.sft_recipe(work / quantization, quantization,
                                       [*more, f"model.path={model_dir}", f"train.seed={seed}", *extra])
        losses = [e["loss"] for e in janus_ft.sft(recipe).log_history if "loss" in e]
        got[f"{quantization}_fall"] = losses[0] - losses[-1]
    return got


def shapes(work, args):
    import test_sft
    return test_sft.shapes_data(work / "shapes")


def subjects(work, args):
    import test_sft
    return test_sft.subjects_data(work / "subjects")


def preference(work, args):
    import test_dpo_learning

    if args.pref_noise is None:
        return test_dpo_learning.pref_data(work / "pref")
    return test_dpo_learning.pref_data(work / f"pref-noise{args.pref_noise}", args.pref_noise)


def preference_noises(work, args):
    import test_dpo_learning
    return {noise: test_dpo_learning.pref_data(work / f"pref-noise{noise}", noise) for noise in (1, 3)}


# case -> (measure, data builder or None, build_tiny keywords: the model size the test uses)
CASES = {
    "sft_colour": (sft_colour, shapes, {}),
    "sft_demo": (sft_demo, None, {}),
    "sft_captioned": (sft_captioned, subjects, {}),
    "dpo_understanding": (dpo_understanding, preference, {}),
    "dpo_generation": (dpo_generation, preference, {"llm": "mid"}),
    "dpo_codes": (dpo_codes, preference_noises, {"llm": "mid"}),
    "grpo_format": (grpo_format, None, {}),
    "grpo_t2i": (grpo_t2i, None, {"vq_channels": 128}),
    "grpo_decoder": (grpo_decoder, None, {"vq_channels": 128}),
    "qlora": (qlora, None, {}),
}


def run_cells(args, out: Path, threads: int) -> None:
    """Every (case, init, seed) at this process's thread count, appended to margins.jsonl."""
    import torch

    sys.path.insert(0, str(REPO / "tests"))
    torch.set_num_threads(threads)
    from janus_ft.tiny import build_tiny

    for case in args.cases:
        measure, make_data, size = CASES[case]
        data = make_data(out / "data", args) if make_data else None
        for init in args.inits:
            model_dir = out / "models" / f"{case}-init{init}"
            if not model_dir.is_dir():
                build_tiny(model_dir, seed=init, **size)
            for seed in args.seeds:
                work = out / "work" / f"{case}-t{threads}-i{init}-s{seed}"
                shutil.rmtree(work, ignore_errors=True)
                started = time.monotonic()
                got = measure(model_dir, seed, work, data, args.set)
                row = {"case": case, "threads": threads, "init": init, "seed": seed, "set": args.set,
                       "pref_noise": args.pref_noise,
                       "seconds": round(time.monotonic() - started, 1), "load": os.getloadavg()[0],
                       "metrics": {k: float(v) for k, v in got.items()}}
                with open(out / "margins.jsonl", "a") as f:
                    f.write(json.dumps(row) + "\n")
                print("CELL " + json.dumps(row), flush=True)
                shutil.rmtree(work, ignore_errors=True)


def table(rows: list[dict]) -> str:
    """A row per cell, then min / median / max of every metric over the cells."""
    names = list(dict.fromkeys(k for r in rows for k in r["metrics"]))
    lines = ["| threads | init | seed | s | " + " | ".join(names) + " |", "|" + "---|" * (4 + len(names))]
    for r in rows:
        values = " | ".join(f"{r['metrics'][k]:.3f}" if k in r["metrics"] else "" for k in names)
        lines.append(f"| {r['threads']} | {r['init']} | {r['seed']} | {r['seconds']:.0f} | {values} |")
    for label, stat in (("min", min), ("median", statistics.median), ("max", max)):
        cells = " | ".join(f"{stat([r['metrics'][k] for r in rows if k in r['metrics']]):.3f}" for k in names)
        lines.append(f"| {label} | | | | {cells} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cases", nargs="+", choices=sorted(CASES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 1, 2], help="train.seed values")
    parser.add_argument("--inits", nargs="+", type=int, default=[0, 1, 2], help="build_tiny seeds")
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2], help="OMP_NUM_THREADS values")
    parser.add_argument("--set", nargs="*", default=[], help="extra recipe overrides, where a case takes them")
    parser.add_argument("--pref-noise", type=int, help="pixel noise of the preference shots (default: the test's)")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "margins")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.child:
        run_cells(args, out, args.threads[0])
        return
    # The caches (tiny models, VQ codes, prepared rows) of these runs stay under OUT, not ~/.cache.
    # Idle OpenMP threads sleep instead of spinning: the numbers are the same, but on a loaded machine
    # spinning made a 2-thread cell nine times slower (300 s against 34 s).
    env = {"OMP_WAIT_POLICY": "PASSIVE", **os.environ, "JANUS_FT_CACHE": str(out / "cache"),
           "HF_DATASETS_CACHE": str(out / "hf_datasets")}
    first = sum(1 for _ in open(out / "margins.jsonl")) if (out / "margins.jsonl").exists() else 0
    for threads in args.threads:   # one process at a time: the thread count is what is measured
        cmd = [sys.executable, __file__, *args.cases, "--seeds", *map(str, args.seeds), "--inits",
               *map(str, args.inits), "--threads", str(threads), "--out", str(out), "--child"]
        cmd += ["--set", *args.set] if args.set else []
        cmd += ["--pref-noise", str(args.pref_noise)] if args.pref_noise is not None else []
        subprocess.run(cmd, env={**env, "OMP_NUM_THREADS": str(threads)}, check=True)
    rows = [json.loads(line) for line in open(out / "margins.jsonl")][first:]
    for case in args.cases:
        print(f"\n{case} {' '.join(args.set)}\n" + table([r for r in rows if r["case"] == case]))


if __name__ == "__main__":
    main()
