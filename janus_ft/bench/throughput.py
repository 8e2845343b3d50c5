"""Throughput: what a batch holds, what it costs in model FLOPs, how long each stage of a step
takes and the peak memory -- the measurements behind `janus-ft bench`.

Model FLOPs are counted from the matmuls each token really goes through (a padded slot is not a
token, the VQ encoder is not part of training), per component of the Janus tree:

    FLOPs = sum over components c of  tokens_c * (2 M_c  +  2 M_c [c needs an input gradient]
                                                          +  2 M_c^trainable)
            + attention

`M_c` is the multiply-accumulates per token of c's Linear / Conv2d layers (LoRA's A and B
included), `M_c^trainable` those whose weight trains. The three terms are the forward, the
activation gradient (wanted wherever c or anything upstream of it trains) and the weight gradient.
With every weight training this is the usual `6 * params * tokens`; with LoRA on a frozen model
it is about `4 * params * tokens`, which is what LoRA training really executes. Tokens per
component: the LLM sees every real token, the vision tower and aligner the patches (576 per
384-px image), the LM head the text targets, the generation aligner and head the image-code
targets. Attention adds
`2 * L * d * n^2` per sample of length n for the causal LLM (half of the n x n scores) and
`4 * L * d * n^2` per image for the bidirectional vision tower, times 3 when its gradient flows.
Activation recomputation (gradient checkpointing) is not counted: it is hardware work, not model
work, as in the PaLM paper's MFU.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..model.lora import component_of
from ..model.loss import core_model, target_masks

STAGES = ("data", "vq_encode", "forward", "backward", "optimizer")

# what feeds each component; a component needs an input gradient when it or any of these trains
UPSTREAM = {
    "vision": (), "aligner": ("vision",), "gen_embed": (), "gen_aligner": ("gen_embed",),
    "llm": ("vision", "aligner", "gen_embed", "gen_aligner"),
    "lm_head": ("vision", "aligner", "gen_embed", "gen_aligner", "llm"),
    "gen_head": ("vision", "aligner", "gen_embed", "gen_aligner", "llm"),
}


def batch_stats(batch: dict, image_token_id: int) -> dict[str, int]:
    """Counts for one collated batch (padded or packed).

    >>> import torch
    >>> from janus_ft.data.collate import collate
    >>> b = collate([{"input_ids": torch.tensor([1, 5, 6]), "labels": torch.tensor([-100, 5, 6]), "task": 0},
    ...              {"input_ids": torch.tensor([1, 8]), "labels": torch.tensor([-100, 8]), "task": 0}], pad_id=2)
    >>> s = batch_stats(b, image_token_id=99)
    >>> s["samples"], s["slots"], s["real_tokens"], s["supervised_tokens"], s["sum_sq_len"]
    (2, 6, 5, 3, 13)
    """
    ids = batch["input_ids"]
    real = batch["attention_mask"].bool() if "attention_mask" in batch else torch.ones_like(ids, dtype=torch.bool)
    starts = (batch["position_ids"] == 0) & real
    sum_sq = 0
    for row in range(ids.shape[0]):   # sample lengths: real tokens between position-id restarts
        bounds = starts[row].nonzero().flatten().tolist() + [int(real[row].sum())]
        sum_sq += sum((b - a) ** 2 for a, b in zip(bounds, bounds[1:]))
    text, gen = target_masks(batch, image_token_id)
    pixels = batch.get("pixel_values")
    return {"samples": int(starts.sum()), "slots": ids.numel(), "real_tokens": int(real.sum()),
            "supervised_tokens": int((batch["labels"][:, 1:] != -100).sum()),
            "text_targets": int(text[:, 1:].sum()), "gen_targets": int(gen[:, 1:].sum()),
            "images": 0 if pixels is None else int(pixels.shape[0]), "sum_sq_len": sum_sq}


def _macs(module: nn.Module) -> int:
    """Multiply-accumulates per output position (bitsandbytes layers keep in/out_features)."""
    if isinstance(module, nn.Linear):
        return module.in_features * module.out_features
    if isinstance(module, nn.Conv2d):
        return module.weight.numel()
    return 0


@dataclass
class FlopModel:
    per_token: dict[str, float]    # component -> FLOPs per token of that component, fwd + bwd
    llm_attention: float           # per (sample length)^2
    vision_attention: float        # per image
    patches_per_image: int
    image_token_id: int

    @classmethod
    def of(cls, model) -> FlopModel:
        macs: dict[str, list[int]] = {}
        for name, module in model.named_modules():
            if "original_module" in name:   # PEFT keeps an unused copy of modules_to_save
                continue
            m = _macs(module)
            if m:
                row = macs.setdefault(component_of(name), [0, 0])
                row[0] += m
                row[1] += m if module.weight.requires_grad else 0
        trains = {c: row[1] > 0 for c, row in macs.items()}
        needs_grad = {c: trains.get(c, False) or any(trains.get(u, False) for u in UPSTREAM[c]) for c in UPSTREAM}
        per_token = {c: 2 * m + 2 * m * needs_grad[c] + 2 * t for c, (m, t) in macs.items() if c in UPSTREAM}
        cfg = core_model(model).config
        text, vision = cfg.text_config, cfg.vision_config
        llm_dim = text.num_attention_heads * getattr(text, "head_dim", text.hidden_size // text.num_attention_heads)
        patches = (vision.image_size // vision.patch_size) ** 2
        return cls(per_token,
                   2 * text.num_hidden_layers * llm_dim * (3 if needs_grad["llm"] else 1),
                   4 * vision.num_hidden_layers * vision.hidden_size * patches ** 2 * (3 if needs_grad["vision"] else 1),
                   patches, cfg.image_token_id)

    def batch_flops(self, stats: dict[str, int]) -> float:
        tokens = {"llm": stats["real_tokens"], "lm_head": stats["text_targets"],
                  "vision": stats["images"] * self.patches_per_image,
                  "aligner": stats["images"] * self.patches_per_image,
                  "gen_aligner": stats["gen_targets"], "gen_head": stats["gen_targets"]}
        flops = sum(self.per_token.get(c, 0) * n for c, n in tokens.items())
        return flops + self.llm_attention * stats["sum_sq_len"] + self.vision_attention * stats["images"]


def peak_matmul_flops(device: torch.device, dtype: torch.dtype, size: int | None = None,
                      repeats: int = 10) -> float:
    """FLOP/s of the fastest of `repeats` square matmuls on `device` in `dtype` (after a warm-up):
    the denominator of MFU, measured on this machine rather than read off a datasheet."""
    size = size or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    best = float("inf")
    for i in range(repeats + 2):
        sync()
        start = time.perf_counter()
        a @ b
        sync()
        if i >= 2:
            best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best


class StepTimer:
    """Wall time per optimizer step, split into named parts, plus what each step's batches held and
    the process's CPU time (the step's work, nearly blind to other processes sharing the cores)."""

    def __init__(self, flop_model, device):
        self.flop_model, self.cuda = flop_model, torch.device(device).type == "cuda"
        self.steps: list[dict] = []
        self.restart()

    def now(self) -> float:
        if self.cuda:   # GPU work is asynchronous: charge it to the stage that queued it
            torch.cuda.synchronize()
        return time.perf_counter()

    def restart(self, start: float | None = None) -> None:
        """Open a new step; its clock starts now (or at `start`)."""
        self.start = self.now() if start is None else start
        self.cpu_start = time.process_time()
        self.parts, self.stats, self.loss = dict.fromkeys(STAGES, 0.0), {}, 0.0
        self.last_backward_end = self.moved_at = self.start

    def exclude(self, wall: float, cpu: float) -> None:
        """Leave out of the open step work done meanwhile for something else (the other half of an
        interleaved pair)."""
        self.start += wall
        self.cpu_start += cpu

    @contextlib.contextmanager
    def part(self, name: str):
        start = self.now()
        try:
            yield
        finally:
            self.parts[name] += self.now() - start

    def add(self, name: str, seconds: float) -> None:
        self.parts[name] += seconds

    def count(self, batch: dict) -> None:
        stats = batch_stats(batch, self.flop_model.image_token_id)
        stats["flops"] = self.flop_model.batch_flops(stats)
        for key, value in stats.items():
            self.stats[key] = self.stats.get(key, 0) + value

    def end_step(self) -> None:
        end = self.now()
        self.steps.append({"time": end - self.start, "cpu": time.process_time() - self.cpu_start, "parts": self.parts,
                           "stats": self.stats, "loss": self.loss})
        self.restart(end)


def summarize(name: str, steps: list[dict], peak: float, memory: dict) -> dict:
    """Rates, stage averages and MFU over the measured steps (`StepTimer.steps` after warm-up)."""
    seconds = sum(s["time"] for s in steps)
    total = {k: sum(s["stats"].get(k, 0) for s in steps) for k in steps[0]["stats"]}
    breakdown = {p: sum(s["parts"][p] for s in steps) / len(steps) for p in STAGES}
    breakdown["other"] = max(seconds / len(steps) - sum(breakdown.values()), 0.0)
    return {
        "name": name, "measured_steps": len(steps), "step_time_s": seconds / len(steps),
        "median_step_time_s": statistics.median(s["time"] for s in steps),
        "median_cpu_time_s": statistics.median(s["cpu"] for s in steps),
        "breakdown_s": breakdown, "samples_per_s": total["samples"] / seconds,
        "supervised_tokens_per_s": total["supervised_tokens"] / seconds,
        "real_tokens_per_s": total["real_tokens"] / seconds,
        "real_token_fraction": total["real_tokens"] / total["slots"],
        **memory,
        "model_flops_per_step": total["flops"] / len(steps), "model_flops_per_s": total["flops"] / seconds,
        "mfu": total["flops"] / seconds / peak, "losses": [s["loss"] for s in steps], "totals": total,
        "per_step": steps}


def speed_vs(base: dict, variant: dict, key: str = "time") -> float:
    """The variant's speed over the baseline's: the median, over every measured step of every
    round, of (baseline step time / variant step time) for the same step of the same round. Both
    trained on the very same batches there, back to back, so each ratio compares equal work, and a
    machine that gets busier between rounds, or another process slowing one step, moves a few
    ratios and not the median.

    `key`: "time" (wall) or "cpu" (the process's CPU time).

    Interleaved steps (`--interleave`) say in which order the variants ran (`order`): the first of
    a pair pays for what the step before left behind (another batch shape's memory to give back
    and fault in), so the ratios of each order of the pair are taken apart, and the result is the
    geometric mean of the two orders' medians, where that cost cancels.

    >>> speed_vs({"rounds": [[{"time": 1.0}, {"time": 2.0}], [{"time": 1.0}, {"time": 4.0}]]},
    ...          {"rounds": [[{"time": 2.0}, {"time": 2.0}], [{"time": 1.25}, {"time": 1.0}]]})
    0.9
    >>> order = [["a", "c", "b"], ["b", "a", "c"]]
    >>> round(speed_vs({"name": "a", "rounds": [[{"time": 1.0, "order": order[0]}, {"time": 1.2, "order": order[1]}]]},
    ...                {"name": "b", "rounds": [[{"time": 1.25, "order": order[0]}, {"time": 1.0, "order": order[1]}]]}), 4)
    0.9798
    """
    pairs = [(b, v) for base_round, round_ in zip(base["rounds"], variant["rounds"]) for b, v in zip(base_round, round_)]
    firsts = [min(base["name"], variant["name"], key=b["order"].index) if "order" in b else None for b, _ in pairs]
    if None in firsts or len(set(firsts)) < 2:
        return statistics.median(b[key] / v[key] for b, v in pairs)
    medians = [statistics.median(b[key] / v[key] for (b, v), f in zip(pairs, firsts) if f == first)
               for first in sorted(set(firsts))]
    return math.prod(medians) ** (1 / len(medians))


class PeakMemory:
    """Peak allocated GPU memory, or the process's peak RSS (Linux: the high-water mark is reset
    through /proc/self/clear_refs, so it covers this variant only; elsewhere ru_maxrss)."""

    def __init__(self, device):
        self.cuda = torch.device(device).type == "cuda"
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        else:
            with contextlib.suppress(OSError):
                Path("/proc/self/clear_refs").write_text("5")
        self.at_start = torch.cuda.memory_allocated() if self.cuda else _status_bytes("VmRSS")

    def read(self) -> dict:
        """Peak bytes, what was held when measuring began (weights loaded), and which measure."""
        if self.cuda:
            peak, kind = torch.cuda.max_memory_allocated(), "cuda_max_allocated"
        else:
            import resource
            peak = _status_bytes("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            kind = "rss_peak"
        return {"peak_memory_bytes": peak, "memory_at_start_bytes": self.at_start, "memory_kind": kind}


def _status_bytes(field: str) -> int:
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0
