"""Chunked heads at Janus-Pro size: time and tensor memory of scoring N targets, forward and backward,
by chunk size and by method -- the measurements behind `model.head_chunk_size`'s default
(docs/benchmarks.md, "Chunked heads").

    python scripts/bench_heads.py [--hidden 2048] [--targets 3072] [--codes 1728] [--chunks 0 256 512 1024 2048]

Heads of a Janus-Pro-1B (hidden 2048) or -7B (4096), random weights in --dtype: the LM head
(hidden -> 102,400) on --targets text targets and the generation head (hidden -> hidden -> GELU ->
16,384) on --codes image codes. Methods: `one piece` (chunk 0); `frozen head` (janus_ft's path for a
head with no trainable weight: each chunk's input gradient taken in the forward);
`checkpointed chunks` (the other way to chunk a frozen head: each chunk under activation
checkpointing, its logits recomputed in backward); `trained head` (the weights train, float32
under bf16 autocast: janus_ft checkpoints each chunk). Memory is the peak of the tensors allocated
during forward + backward (`janus_ft.bench.memory.TensorMemory`, above the weights and the
input). Variants take turns, and the time is the median of --repeats rounds.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from janus_ft.bench.memory import TensorMemory
from janus_ft.model.heads import nll, target_nll


def checkpointed(head, hidden, targets, chunk_size):
    return torch.cat([checkpoint(nll, head, h, t, use_reentrant=False)
                      for h, t in zip(hidden.split(chunk_size), targets.split(chunk_size))])


def run(head, hidden, targets, chunk_size, method) -> tuple[float, int]:
    """Seconds and peak bytes of one forward + backward. A trained head holds float32 weights and
    runs under bf16 autocast (as on a GPU: float32 master weights, or LoRA adapters)."""
    x = hidden.detach().requires_grad_()
    score = checkpointed if method == "checkpointed chunks" else target_nll
    head.zero_grad(set_to_none=True)
    memory = TensorMemory({102400, 16384}, list(head.parameters()))
    autocast = torch.autocast("cpu", dtype=hidden.dtype, enabled=method == "trained head")
    start = time.perf_counter()
    with memory:
        with autocast:
            losses = score(head, x, targets, chunk_size)
        losses.sum().backward()
    seconds = time.perf_counter() - start
    head.zero_grad(set_to_none=True)
    return seconds, memory.peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--targets", type=int, default=3072)
    parser.add_argument("--codes", type=int, default=1728)
    parser.add_argument("--chunks", type=int, nargs="+", default=[0, 256, 512, 1024, 2048])
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    heads = {"LM head": (nn.Linear(args.hidden, 102400, bias=False), args.targets),
             "generation head": (nn.Sequential(nn.Linear(args.hidden, args.hidden), nn.GELU(),
                                               nn.Linear(args.hidden, 16384)), args.codes)}
    print(f"hidden {args.hidden}, {args.dtype}, {torch.get_num_threads()} threads; peak tensor memory of forward + "
          "backward (GiB) and median time (s)\n")
    print("| head | targets | method | chunk | peak (GiB) | time (s) |\n|---|---:|---|---:|---:|---:|")
    for name, (trained, n) in heads.items():
        frozen = copy.deepcopy(trained).to(dtype).requires_grad_(False)
        hidden = torch.randn(n, args.hidden, dtype=dtype)
        targets = torch.randint(0, 16384, (n,))
        variants = [(method, c) for method in ("frozen head", "checkpointed chunks", "trained head")
                    for c in args.chunks if c or method != "checkpointed chunks"]
        times = {v: [] for v in variants}
        peaks = {}
        for r in range(args.repeats):
            for method, chunk in (variants if r % 2 == 0 else variants[::-1]):
                head = trained if method == "trained head" else frozen
                seconds, peaks[method, chunk] = run(head, hidden, targets, chunk, method)
                times[method, chunk].append(seconds)
        for method, chunk in variants:
            label = "one piece" if chunk == 0 else method
            print(f"| {name} | {n} | {label}{' (trained)' if chunk == 0 and method == 'trained head' else ''} | "
                  f"{chunk or '-'} | {peaks[method, chunk] / 2 ** 30:.3f} | {statistics.median(times[method, chunk]):.2f} |")


if __name__ == "__main__":
    main()
