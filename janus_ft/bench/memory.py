"""`janus-ft bench --memory TASK:TOKENS`: the peak memory of one training step, split by what holds
it -- the weights, the trainable weights with their gradients and optimizer state, activations,
logits -- the number that says whether a configuration fits a card.

Two measures of the peak:

* **tensors**: every storage torch allocates during the step, its live bytes counted op by op
  (`TensorMemory`, a tracemalloc for torch tensors), on top of what the weights and the optimizer
  state hold when the step starts. These are the tensors the step allocates on any device, so a CPU
  run says what a GPU run allocates, except what the GPU adds: its caching allocator rounds blocks
  up and keeps freed ones, kernels take workspace (cuBLAS, flash attention) and CUDA its context.
* **the process**: peak RSS on a CPU (`VmHWM`, reset when the step starts: the step's own peak with
  everything loaded before it), `torch.cuda.max_memory_allocated` on a GPU.

The step is the trainer's step, bare: forward (`compute_loss_parts`, the recipe's
`model.head_chunk_size`), backward, AdamW. The optimizer state exists before it (created by a
zero-gradient step, which moves no weight), as in every step after the first. A bf16 recipe runs
under bf16 autocast, as the trainer runs it on a GPU -- here on a CPU too, so that the tensors are
the ones the GPU would hold.
"""

from __future__ import annotations

import contextlib
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

TASKS = ("text", "understanding", "generation")
STEP_KINDS = ("trainable", "activations", "logits")


class TensorMemory(TorchDispatchMode):
    """Live bytes of the storages torch allocates while the mode is on, by kind, and their peak.

    A storage is counted from the op that creates it until it is freed (a finalizer on torch's
    Python storage object, which lives exactly as long as the storage). An op's output that shares
    storage with an input (views, in-place ops) is not new memory. Kinds: `logits` for tensors as
    wide as a head's vocabulary (logits, their float32 copy, log-softmax, their gradients) and casts
    of a head's weight (autocast's bf16 copy of a float32 head); `trainable` for gradients of
    trainable weights (`track_gradients`); `activations` for the rest (saved activations,
    temporaries, gradients of activations). Memory a kernel takes and frees inside one op is not seen.
    """

    def __init__(self, vocab_sizes: set[int], head_weights: list[torch.Tensor]):
        super().__init__()
        self.vocab_sizes = vocab_sizes
        self.head_storages = {_key(w) for w in head_weights}
        self.live: dict[int, tuple[int, str]] = {}
        self.now = dict.fromkeys(STEP_KINDS, 0)
        self.peak, self.at_peak = 0, dict(self.now)
        self.peak_logits = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        seen = {_key(t) for t in inputs}
        out = func(*args, **kwargs)
        head_cast = func is torch.ops.aten._to_copy.default and inputs and _key(inputs[0]) in self.head_storages
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type != "meta" and _key(t) not in seen:
                wide = t.dim() > 0 and t.shape[-1] in self.vocab_sizes
                self._count(t, "logits" if wide or head_cast else "activations")
        return out

    def _count(self, t: torch.Tensor, kind: str) -> None:
        storage = t.untyped_storage()
        key = id(storage)
        if key in self.live:
            return
        self.live[key] = (storage.nbytes(), kind)
        self.now[kind] += storage.nbytes()
        weakref.finalize(storage, self._free, key)
        total = sum(self.now.values())
        if total > self.peak:
            self.peak, self.at_peak = total, dict(self.now)
        self.peak_logits = max(self.peak_logits, self.now["logits"])

    def _free(self, key: int) -> None:
        nbytes, kind = self.live.pop(key)
        self.now[kind] -= nbytes

    def track_gradients(self, params: list[torch.Tensor]) -> list:
        """Count the gradients of `params` as `trainable` once accumulated (hook handles returned)."""
        def move(param):
            key = id(param.grad.untyped_storage())
            if key in self.live and self.live[key][1] != "trainable":
                nbytes, kind = self.live[key]
                self.live[key] = (nbytes, "trainable")
                self.now[kind] -= nbytes
                self.now["trainable"] += nbytes
        return [p.register_post_accumulate_grad_hook(move) for p in params]


def _key(t: torch.Tensor) -> int:
    return id(t.untyped_storage())


def held_bytes(tensors) -> int:
    """Bytes of the distinct storages behind `tensors`."""
    storages = {}
    for t in tensors:
        storage = t.untyped_storage()
        storages[storage.data_ptr(), storage.device] = storage.nbytes()
    return sum(storages.values())


def weight_tensors(model, trainable: bool) -> list[torch.Tensor]:
    """The model's frozen (or trainable) parameters, with buffers and bitsandbytes' quantization
    state (absmax and codebooks, held beside each 4-bit weight) on the frozen side."""
    params = [p for p in model.parameters() if p.requires_grad == trainable]
    if trainable:
        return params
    out = params + list(model.buffers())
    for p in params:
        state = getattr(p, "quant_state", None)
        while state is not None:
            out += [v for v in vars(state).values() if isinstance(v, torch.Tensor)]
            state = getattr(state, "state2", None)
    return out


def return_freed_memory() -> None:
    """Make the process's RSS follow its live tensors (Linux, glibc). glibc keeps freed heap blocks
    for reuse, and its mmap threshold rises (up to 32 MB) as big buffers are freed, so a CPU step's
    temporaries stay in the heap: the RSS then grows layer after layer far past what is live
    (measured: 10.2 GiB RSS for 6.9 GiB of tensors, 8 decoder layers of a 7B-wide QLoRA model; 7.4
    GiB with this). A fixed 128 KiB threshold hands big buffers back to the system when freed."""
    import ctypes
    import sys

    if sys.platform == "linux":
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024)   # M_MMAP_THRESHOLD


def parse_memory_spec(spec: str) -> tuple[str, int]:
    """`TASK:TOKENS` -> (task, tokens).

    >>> parse_memory_spec("understanding:2048")
    ('understanding', 2048)
    """
    from ..errors import UserError

    task, _, tokens = spec.partition(":")
    if task not in TASKS or not tokens.isdigit() or int(tokens) < 8:
        raise UserError(f"--memory takes TASK:TOKENS with TASK one of {', '.join(TASKS)} and TOKENS >= 8, "
                        f"got {spec!r}")
    return task, int(tokens)


WORDS = ("red", "fox", "in", "the", "snow", "river", "light", "under", "a", "tall", "green", "tree", "and", "quiet")


def memory_batch(processor, task: str, tokens: int, rows: int, codebook: int, image_token_id: int, folder) -> dict:
    """`rows` x `tokens` tokens of one task, built by the data pipeline from synthetic records: text
    and understanding rows hold one sample each, without a system prompt, whose answer runs to the
    end of the row (understanding: one image, then the question); generation samples (a caption +
    the image's codes) are packed into one row, as many as fit in `rows` x `tokens`."""
    from PIL import Image

    from ..data.collate import JanusCollator
    from ..data.dataset import JanusDataset
    from ..data.records import parse_record

    gen = torch.Generator().manual_seed(0)
    size = processor.image_processor.size["height"]
    image = folder / "image.png"
    Image.fromarray(torch.randint(0, 256, (size, size, 3), generator=gen, dtype=torch.uint8).numpy()).save(image)
    codes = {str(image): torch.randint(0, codebook, (processor.num_image_tokens,), generator=gen).tolist()}
    answer = " ".join(WORDS[i] for i in torch.randint(0, len(WORDS), (tokens,), generator=gen).tolist())
    record = {"text": {"query": "Tell me a long story.", "response": answer, "system": ""},
              "understanding": {"query": "<image>Describe the picture in detail.", "response": answer,
                                "images": [image.name], "system": ""},
              "generation": {"query": "a red fox in the snow", "response": "<image>", "images": [image.name]}}[task]
    dataset = JanusDataset([parse_record(record, folder / "records.jsonl", 1)], processor, "janus-pro",
                           max_length=10 ** 9, codes=codes)
    sample = dataset[0]
    if task == "generation":
        samples = [sample] * max(1, rows * tokens // len(sample["input_ids"]))
    else:
        samples = [dict(sample, input_ids=sample["input_ids"][:tokens], labels=sample["labels"][:tokens])] * rows
    collator = JanusCollator(processor.tokenizer.pad_token_id, packing=task == "generation",
                             image_token_id=image_token_id)
    return collator(samples)


def prepare_model(recipe):
    """The recipe's model with its LoRA, trainable weights in float32, checkpointing as the recipe
    says, on the training device (what `janus-ft sft` trains)."""
    from ..model.loading import load_model_and_processor, train_in_fp32
    from ..model.lora import apply_lora
    from ..model.loss import core_model

    model, processor = load_model_and_processor(recipe.model)
    torch.manual_seed(recipe.train.seed)
    model = apply_lora(model, recipe.lora)
    train_in_fp32(model)
    if not getattr(core_model(model), "hf_device_map", None):   # quantized models are placed at load
        model.to("cuda" if torch.cuda.is_available() else "cpu")
    model.train()
    if recipe.train.gradient_checkpointing:   # as the Trainer does it (non-reentrant: see sft_config)
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    return model, processor


def measure_step(model, batch: dict, head_chunk_size: int, autocast_dtype, learning_rate: float) -> dict:
    """One training step (forward, backward, AdamW) under `TensorMemory`: bytes held before it by
    the weights and by the trainable weights with their optimizer state, the step's peak on top of
    them split by kind, and the process's own peak."""
    from accelerate.utils import send_to_device

    from ..model.loss import compute_loss_parts, core_model
    from .throughput import PeakMemory

    device = next(p.device for p in model.parameters() if p.requires_grad)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate)
    for p in params:   # a zero-gradient step creates AdamW's state and moves no weight
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    states = [t for state in optimizer.state.values() for t in state.values() if torch.is_tensor(t)]
    held = {"weights": held_bytes(weight_tensors(model, trainable=False)), "trainable": held_bytes(params + states)}
    core = core_model(model)
    heads = [p for head in (core.lm_head, core.model.generation_head) for p in head.parameters()]
    tracker = TensorMemory({core.config.text_config.vocab_size, core.config.vq_config.num_embeddings}, heads)
    hooks = tracker.track_gradients(params)
    batch = send_to_device(batch, device)   # tensors, the loss plan's, and a packed batch's max_length as is
    autocast = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
    process = PeakMemory(device)
    with tracker:
        with autocast:
            parts = compute_loss_parts(model, batch, input_grad=False, head_chunk_size=head_chunk_size)
            loss = parts.total / max(parts.n_tokens, 1)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    for hook in hooks:
        hook.remove()
    at_peak = {kind: tracker.at_peak[kind] for kind in STEP_KINDS}
    at_peak["trainable"] += held["trainable"]
    return {"held_bytes": held, "peak_bytes": held["weights"] + held["trainable"] + tracker.peak,
            "at_peak_bytes": {"weights": held["weights"], **at_peak}, "peak_logits_bytes": tracker.peak_logits,
            "process": process.read(), "loss": float(loss.detach())}


def memory_benchmark(args) -> dict:
    """`janus-ft bench --memory TASK:TOKENS --recipe R [--random-model P] [overrides]`: one step of
    the recipe's training on a synthetic batch of `per_device_train_batch_size` rows of TOKENS
    tokens, measured (see the module docstring)."""
    import tempfile
    import time
    from pathlib import Path

    from ..errors import UserError
    from ..recipe import load_recipe
    from ..train.run import apply_levers
    from .random_model import random_model_path
    from .run import command_line, machine

    task, tokens = parse_memory_spec(args.memory)
    return_freed_memory()
    recipe = load_recipe(args.recipe, args.overrides)
    if recipe.model.compile:   # the tensor count is a dispatch mode, which compiled graphs would hide from it
        raise UserError("model.compile: bench --memory measures eager layers; leave it false here "
                        "(bench --levers measures compiled layers)")
    if args.random_model:
        recipe.model.path = str(random_model_path(args.random_model))
    model, processor = prepare_model(recipe)
    # The synthetic generation batch is packed (memory_batch), so it runs the recipe's attention for
    # packed rows (data.packed_attention), as training with data.packing does; the others are single rows.
    recipe.data.packing = task == "generation"
    apply_levers(model, recipe)
    config = model.config
    rows = recipe.train.per_device_train_batch_size
    with tempfile.TemporaryDirectory(prefix="janus-ft-memory-") as folder:
        batch = memory_batch(processor, task, tokens, rows, config.vq_config.num_embeddings, config.image_token_id,
                             Path(folder))
    autocast = torch.bfloat16 if recipe.model.dtype == "bfloat16" else None
    start = time.perf_counter()
    result = measure_step(model, batch, recipe.model.head_chunk_size, autocast, recipe.train.learning_rate)
    plan = batch["loss_plan"]
    device = next(model.parameters()).device
    return {"command": command_line(args) + f" --memory {args.memory}", "machine": machine(device),
            "model": {"path": recipe.model.path, "random_model": args.random_model, "dtype": recipe.model.dtype,
                      "quantization": recipe.model.quantization, "lora_targets": recipe.lora.targets,
                      "lora_r": recipe.lora.r, "modules_to_save": recipe.lora.modules_to_save},
            "gradient_checkpointing": recipe.train.gradient_checkpointing,
            "head_chunk_size": recipe.model.head_chunk_size,
            "packed_attention": recipe.data.packed_attention if recipe.data.packing else None,
            "autocast": str(autocast).replace("torch.", ""),
            "batch": {"task": task, "shape": list(batch["input_ids"].shape), "text_targets": len(plan["text_targets"]),
                      "gen_targets": len(plan["gen_targets"]),
                      "images": int(batch["pixel_values"].shape[0]) if "pixel_values" in batch else 0},
            "step_time_s": time.perf_counter() - start, **result}


def format_memory(report: dict) -> str:
    """The report as the markdown table docs/benchmarks.md shows."""
    gib = 2 ** 30
    m, b, at = report["model"], report["batch"], report["at_peak_bytes"]
    process = report["process"]
    kind = {"rss_peak": "peak RSS of the step", "cuda_max_allocated": "torch.cuda.max_memory_allocated"}
    lines = [f"janus-ft bench --memory: {m.get('random_model') or m['path']}, {m['dtype']}"
             f"{', ' + m['quantization'] if m['quantization'] != 'none' else ''}, LoRA r {m['lora_r']} on "
             f"{'+'.join(m['lora_targets'])}, checkpointing {'on' if report['gradient_checkpointing'] else 'off'}, "
             f"head_chunk_size {report['head_chunk_size']}, autocast {report['autocast']}",
             f"batch: {b['task']} {b['shape'][0]} x {b['shape'][1]} tokens, {b['images']} image(s), "
             f"{b['text_targets']} text targets, {b['gen_targets']} image-code targets; "
             f"loss {report['loss']:.4f}, step {report['step_time_s']:.1f} s",
             "", "| memory at the step's peak | GiB |", "|---|---:|",
             f"| weights (frozen, quantized where 4/8-bit) | {at['weights'] / gib:.2f} |",
             f"| trainable weights + gradients + AdamW state | {at['trainable'] / gib:.2f} |",
             f"| activations and temporaries | {at['activations'] / gib:.2f} |",
             f"| logits (and everything as wide as a vocabulary) | {at['logits'] / gib:.2f} |",
             f"| **peak, tensors** | **{report['peak_bytes'] / gib:.2f}** |",
             f"| logits alone, their own peak | {report['peak_logits_bytes'] / gib:.2f} |",
             f"| {kind.get(process['memory_kind'], process['memory_kind'])} | "
             f"{process['peak_memory_bytes'] / gib:.2f} |"]
    return "\n".join(lines)
