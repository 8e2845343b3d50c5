"""GRPO step time and peak memory per group size (docs/benchmarks.md, section "GRPO").

    python scripts/bench_grpo.py [--steps 4] [--groups 4 8 16]

Each configuration runs `janus-ft grpo` in its own process (peak RSS is per process) on 2 prompts
per step: understanding prompts on the embedded tiny model (`recipes/grpo_format.yaml`, answers of
up to 16 tokens) and text-to-image prompts on the 128-channel-VQ tiny model (`recipes/grpo_t2i.yaml`).
Step time is the median over the steps after the first; memory is the process's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, statistics, sys, time
from transformers import TrainerCallback
import janus_ft

times = []
class Clock(TrainerCallback):
    def on_step_begin(self, *a, **k): self.t = time.perf_counter()
    def on_step_end(self, *a, **k): times.append(time.perf_counter() - self.t)

janus_ft.grpo(sys.argv[1], json.loads(sys.argv[2]), callbacks=[Clock()])
rss = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
print("RESULT", json.dumps({"step_s": statistics.median(times[1:]), "peak_rss_mib": rss / 1024}))
"""


def run(recipe: str, overrides: list[str]) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, recipe, json.dumps(overrides)], capture_output=True, text=True)
    line = [x for x in out.stdout.splitlines() if x.startswith("RESULT")]
    if not line:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(line[-1].split(" ", 1)[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--groups", type=int, nargs="+", default=[4, 8, 16])
    args = parser.parse_args()
    repo = Path(__file__).resolve().parent.parent
    tmp = Path(tempfile.mkdtemp())
    from janus_ft.tiny import build_tiny

    colour = build_tiny(tmp / "tiny-colour", vq_channels=128)
    print("| task | G | completions / step | step time (s) | peak RSS (MiB) |\n|---|---|---|---|---|")
    for task, recipe, extra in (("understanding", "grpo_format.yaml", ["grpo.max_completion_length=16"]),
                                ("generation", "grpo_t2i.yaml", [f"model.path={colour}"])):
        for g in args.groups:
            overrides = extra + [f"grpo.num_generations={g}", f"train.per_device_train_batch_size={2 * g}",
                                 f"train.max_steps={args.steps}", "data.val=[]", "train.save_steps=1000",
                                 "train.disable_tqdm=true", f"output_dir={tmp / f'{task}-{g}'}"]
            r = run(str(repo / "recipes" / recipe), overrides)
            print(f"| {task} | {g} | {2 * g} | {r['step_s']:.2f} | {r['peak_rss_mib']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
