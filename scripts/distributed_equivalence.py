"""Loss curves of one process against two (DDP, DeepSpeed ZeRO-2, ZeRO-3), same global batch.

    python scripts/distributed_equivalence.py [--steps 4] [--nproc 2] [--out runs/equivalence]

Runs `janus-ft sft --recipe recipes/demo.yaml` once in one process (global batch 4) and then under
`torchrun --nproc_per_node N` with 4/N samples per rank, deterministically (no LoRA or caption
dropout), and prints each run's per-step loss, its largest difference from the single process, the
largest adapter difference and the wall time. ZeRO runs are skipped when DeepSpeed is not installed.
On a machine without a GPU the ranks are CPU processes talking over gloo. docs/distributed.md quotes
its output.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GLOBAL_BATCH = 4


def run(name: str, nproc: int, steps: int, out: Path, extra: list[str]) -> tuple[Path, float]:
    target = out / name
    overrides = [f"train.max_steps={steps}", "train.gradient_accumulation_steps=1", "lora.dropout=0",
                 "data.cfg_dropout=0", "train.logging_steps=1", "data.val=[]", "train.eval_steps=null",
                 "train.disable_tqdm=true", 'train.extra={save_strategy: "no"}', "train.overwrite_output_dir=true",
                 f"train.per_device_train_batch_size={GLOBAL_BATCH // nproc}", f"output_dir={target}", *extra]
    launcher = ([] if nproc == 1 else
                ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"])
    cmd = [sys.executable, *launcher, "-m", "janus_ft.cli", "sft", "--recipe", "recipes/demo.yaml", *overrides]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{name} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return target, time.perf_counter() - start


def losses(target: Path) -> list[float]:
    log = json.loads((target / "trainer_state.json").read_text())["log_history"]
    return [e["loss"] for e in log if "loss" in e]


def adapter_diff(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    x, y = load_file(str(a / "adapter_model.safetensors")), load_file(str(b / "adapter_model.safetensors"))
    return max(float((x[k] - y[k]).abs().max()) for k in x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--nproc", type=int, default=2, choices=(2, 4))
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "equivalence")
    args = parser.parse_args()

    runs = [("1 process", 1, []), (f"DDP x{args.nproc}", args.nproc, [])]
    if importlib.util.find_spec("deepspeed"):
        runs += [(f"ZeRO-{s} x{args.nproc}", args.nproc, [f"train.deepspeed=recipes/deepspeed/zero{s}.json"])
                 for s in (2, 3)]
    results = [(label, *run(label.split()[0].lower() + f"-{n}", n, args.steps, args.out, extra))
               for label, n, extra in runs]
    reference = losses(results[0][1])
    print(f"{'run':<12} {'loss per step':<{9 * args.steps}} {'max |dloss|':>11} {'max |dadapter|':>14} {'wall s':>7}")
    for label, target, seconds in results:
        curve = losses(target)
        dloss = max(abs(a - b) for a, b in zip(curve, reference))
        print(f"{label:<12} {' '.join(f'{x:.6f}' for x in curve):<{9 * args.steps}} {dloss:>11.1e} "
              f"{adapter_diff(target, results[0][1]):>14.1e} {seconds:>7.1f}")


if __name__ == "__main__":
    main()
