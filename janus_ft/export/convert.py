"""`janus-ft convert`: DeepSeek's original Janus checkpoints <-> transformers' native layout.

The original (`multi_modality`) layout is what `deepseek-ai/Janus-1.3B` and `deepseek-ai/Janus-Pro-*`
ship and what DeepSeek's own `janus` package loads; the native layout is what
`JanusForConditionalGeneration` loads and what janus_ft trains. Tensor names, shapes and
config.json live in `janus_ft.convert_layout`, tokenizer and processor files in
`janus_ft.convert_assets`; this module checks, streams the tensors and stages the output.

How a conversion runs, and why:
- Everything a user can get wrong is checked before anything is written: config.json, every key
  and shape (against a meta-device model built from the config), the tokenizer. A missing or
  unexpected tensor is a `UserError` naming it.
- Tensors are streamed one input file at a time (`safe_open`, `torch.load(mmap=True)`) into
  size-bounded safetensors shards, so at most about one output shard is held in memory
  (`ConversionResult.peak_bytes` measures it). The output is built in a hidden sibling directory
  and renamed into place at the end: a failed run leaves no output directory.

Tensors the native layout does not have, and what `--to deepseek` does about them:
- `vision_model.vision_tower.attn_pool.*`: DeepSeek's SigLIP always builds this attention-pooling
  head (every preset has `global_pool="map"`) but `create_siglip_vit` sets `ignore_head=True`, so
  the head never runs. Its weights are not recoverable and are NOT written: inventing them would
  pass random numbers off as trained ones. DeepSeek's loader (`from_pretrained`, non-strict) reports
  them as newly initialised and the model's outputs are unaffected.
- `gen_vision_model.quantize.codebook_used`: a codebook-usage counter buffer (65536 floats) that
  only training statistics read. It is written as zeros, the value DeepSeek's constructor gives it,
  so the VQ model loads without a missing-key warning.
Both are accepted as absent by `--from deepseek`, so a round trip works.

Original-style `config.json` can only name DeepSeek's fixed architectures (SigLIP presets by
`model_name`, `VQ-16`). A model of other sizes (janus_ft's tiny test model) gets extra `params`
keys (`width`, `heads`, `ch`, ...), ignored by DeepSeek's code and read back by `--from deepseek`;
such a checkpoint round-trips through janus_ft but DeepSeek's code cannot run it (a note says so).
"""

from __future__ import annotations

import re
import shutil
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import UserError
from . import assets
from . import names as layout

DEFAULT_MAX_SHARD_SIZE = "5GB"
_WEIGHT_FILES = (("model.safetensors.index.json", "model.safetensors"),
                 ("pytorch_model.bin.index.json", "pytorch_model.bin"))


@dataclass
class ConversionResult:
    """What a conversion wrote, and the most tensor bytes it held in memory at once."""

    output_dir: Path
    num_tensors: int = 0
    total_bytes: int = 0
    num_shards: int = 0
    peak_bytes: int = 0
    notes: list[str] = field(default_factory=list)


def parse_size(size: int | str) -> int:
    """`5GB` -> 5 * 10**9, `50MiB` -> 50 * 2**20, `1000` -> 1000 (transformers' conventions)."""
    if isinstance(size, int):
        return size
    units = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
             "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*", str(size).lower())
    if not match or match.group(2) not in units or float(match.group(1)) <= 0:
        raise UserError(f"max shard size {size!r} is not a size like 5GB, 500MB or 2GiB")
    return int(float(match.group(1)) * units[match.group(2)])


# --------------------------------------------------------------------------- reading tensors

def weight_files(directory: Path) -> list[Path]:
    """The weight files of a checkpoint directory, sharded (index) or single, safetensors first."""
    for index_name, single_name in _WEIGHT_FILES:
        index = directory / index_name
        if index.is_file():
            names = dict.fromkeys(assets.read_json(index).get("weight_map", {}).values())
            if not names:
                raise UserError(f"{index}: its weight_map lists no shard files")
            missing = [n for n in names if not (directory / n).is_file()]
            if missing:
                raise UserError(f"{index}: shard file {missing[0]} not found")
            return [directory / n for n in names]
        if (directory / single_name).is_file():
            return [directory / single_name]
    raise UserError(f"{directory}: no weights found (model.safetensors, pytorch_model.bin, or an index)")


def _read_file(path: Path, wanted=None):
    """Yield (key, tensor) for the keys of one weight file that `wanted(key)` accepts (default all);
    the others are never read."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                if wanted is None or wanted(key):
                    yield key, f.get_tensor(key)
        return
    # mmap: a tensor is paged in from disk when used, not the whole file up front.
    try:
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except RuntimeError as err:
        if "mmap" not in str(err):
            raise
        # Pre-zipfile torch.save format (torch < 1.6) cannot be mmapped: read it whole.
        state = torch.load(path, map_location="cpu", weights_only=True)
    for key in list(state):
        tensor = state.pop(key)
        if wanted is None or wanted(key):
            yield key, tensor


_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
                       "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32,
                       "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}


def read_headers(files: list[Path]) -> dict[str, tuple[tuple[int, ...], torch.dtype | None, Path]]:
    """Shape, dtype and file of every tensor, from headers only (mmap keeps .bin data on disk)."""
    found: dict[str, tuple[tuple[int, ...], torch.dtype | None, Path]] = {}
    for path in files:
        try:
            if path.suffix == ".safetensors":
                from safetensors import safe_open

                with safe_open(str(path), framework="pt") as f:
                    header = {k: (tuple(f.get_slice(k).get_shape()),
                                  _SAFETENSORS_DTYPES.get(f.get_slice(k).get_dtype())) for k in f.keys()}
            else:
                header = {k: (tuple(t.shape), t.dtype) for k, t in _read_file(path)}
        except Exception as err:  # a truncated or foreign file: the user's problem, not ours
            raise UserError(f"{path}: cannot read weights ({err})") from err
        for key, (shape, dtype) in header.items():
            if key in found:
                raise UserError(f"tensor '{key}' appears in both {found[key][2].name} and {path.name}")
            found[key] = (shape, dtype, path)
    return found


def _main_dtype(headers) -> torch.dtype:
    """The language model embedding's dtype: what config.json's dtype should say."""
    dtypes = [d for k, (_, d, _) in headers.items() if k.endswith("embed_tokens.weight") and d is not None]
    return dtypes[0] if dtypes else torch.float32


class MemoryMeter:
    """Bytes of tensor storage held at once; a storage shared by views is counted once."""

    def __init__(self):
        self.current = self.peak = 0
        self._live: dict[int, list[int]] = {}  # storage pointer -> [bytes, references]

    def hold(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        entry = self._live.setdefault(storage.data_ptr(), [storage.nbytes(), 0])
        entry[1] += 1
        if entry[1] == 1:
            self.current += entry[0]
            self.peak = max(self.peak, self.current)

    def release(self, tensor: torch.Tensor) -> None:
        ptr = tensor.untyped_storage().data_ptr()
        self._live[ptr][1] -= 1
        if self._live[ptr][1] == 0:
            self.current -= self._live.pop(ptr)[0]


# --------------------------------------------------------------------------- writing tensors

class ShardWriter:
    """Collects tensors into safetensors shards of at most `max_bytes` (one tensor may exceed it)
    and names them the way `save_pretrained` does once their number is known."""

    def __init__(self, directory: Path, prefix: str, max_bytes: int, meter: MemoryMeter):
        self.directory, self.prefix, self.max_bytes, self.meter = directory, prefix, max_bytes, meter
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = self.total_bytes = 0
        self.files: list[tuple[Path, list[str]]] = []

    def add(self, name: str, tensor: torch.Tensor) -> None:
        nbytes = tensor.numel() * tensor.element_size()
        if self.pending and self.pending_bytes + nbytes > self.max_bytes:
            self._flush()
        # safetensors refuses views sharing one storage (e.g. tied weights in a .bin): copy those.
        if any(t.untyped_storage().data_ptr() == tensor.untyped_storage().data_ptr()
               for t in self.pending.values()):
            tensor = tensor.clone()
        tensor = tensor.contiguous()
        self.meter.hold(tensor)
        self.pending[name] = tensor
        self.pending_bytes += nbytes
        self.total_bytes += nbytes

    def _flush(self) -> None:
        from safetensors.torch import save_file

        path = self.directory / f".{self.prefix}-part{len(self.files):05d}.safetensors"
        save_file(self.pending, str(path), metadata={"format": "pt"})
        self.files.append((path, list(self.pending)))
        for tensor in self.pending.values():
            self.meter.release(tensor)
        self.pending, self.pending_bytes = {}, 0

    def close(self) -> int:
        """Write the last shard, give all shards their final names and the index; shard count."""
        if self.pending or not self.files:
            self._flush()
        count, weight_map = len(self.files), {}
        for i, (path, keys) in enumerate(self.files, start=1):
            name = (f"{self.prefix}.safetensors" if count == 1
                    else f"{self.prefix}-{i:05d}-of-{count:05d}.safetensors")
            path.rename(self.directory / name)
            weight_map.update(dict.fromkeys(keys, name))
        if count > 1:
            index = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
            assets.write_json(self.directory / f"{self.prefix}.safetensors.index.json", index)
        return count


def stream(files: list[Path], plan: dict[str, list[layout.Step]], writer: ShardWriter) -> int:
    """Convert every tensor of `files` by its plan steps into `writer`; the number written.

    Input tensors are released as soon as their outputs are in the writer, so memory stays near
    one output shard. Fused q/k/v parts wait in `parts` until their three pieces have arrived
    (they may sit in different input files).
    """
    meter, parts, written = writer.meter, {}, 0
    for path in files:
        for key, tensor in _read_file(path, wanted=plan.get):  # dropped tensors are not read
            meter.hold(tensor)
            for step in plan[key]:
                for name, out in layout.apply_step(step, tensor, parts, meter):
                    writer.add(name, out)
                    written += 1
            meter.release(tensor)
            del tensor
    if parts:  # cannot happen after planning; a guard against silently dropping a tensor
        raise RuntimeError(f"incomplete fused tensors: {sorted(parts)}")
    return written


# --------------------------------------------------------------------------- output directory

@contextmanager
def staged_output(output: Path, overwrite: bool):
    """A hidden sibling directory that becomes `output` only if the block succeeds."""
    if output.exists() and not overwrite:
        raise UserError(f"output {output} already exists (pass --overwrite to replace it)")
    if output.exists() and not output.is_dir():
        raise UserError(f"output {output} exists and is not a directory")
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.parent / f".{output.name}.partial-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if output.exists():
        old = output.parent / f".{output.name}.old-{uuid.uuid4().hex[:8]}"
        output.rename(old)
        staging.rename(output)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(output)


def _check_dirs(input_dir, output_dir) -> tuple[Path, Path]:
    source, target = Path(input_dir).expanduser(), Path(output_dir).expanduser()
    if not (source / "config.json").is_file():
        raise UserError(f"{source}: no config.json (is this a checkpoint directory?)")
    if target.resolve() == source.resolve():
        raise UserError("--output must differ from --input")
    return source, target


# --------------------------------------------------------------------------- the two directions

def convert_from_deepseek(input_dir, output_dir, *, max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
                          overwrite: bool = False, fmt: str = "auto") -> ConversionResult:
    """Original DeepSeek `multi_modality` checkpoint -> transformers-native Janus checkpoint.

    `fmt` picks the chat template: "janus-pro", "janus" (Janus-1.3B's `User:`/`Assistant:`), or
    "auto" (a template already in the tokenizer files, else guessed; the guess is in `notes`).
    """
    source, target = _check_dirs(input_dir, output_dir)
    max_bytes = parse_size(max_shard_size)
    original = assets.read_json(source / "config.json")
    tokenizer = assets.load_deepseek_tokenizer(source)
    files = weight_files(source)
    headers = read_headers(files)
    config = layout.janus_config_from_deepseek(original, assets.token_ids(tokenizer))
    config.dtype = _main_dtype(headers)
    plan = layout.plan_from_deepseek({k: h[0] for k, h in headers.items()}, config)
    template, notes = assets.pick_chat_template(source, tokenizer, fmt)

    result = ConversionResult(target, notes=notes)
    with staged_output(target, overwrite) as staging:
        writer = ShardWriter(staging, "model", max_bytes, MemoryMeter())
        result.num_tensors = stream(files, plan, writer)
        result.num_shards = writer.close()
        config.save_pretrained(staging)
        assets.write_native_assets(staging, source, tokenizer, template, config)
    result.total_bytes, result.peak_bytes = writer.total_bytes, writer.meter.peak
    return result


def convert_to_deepseek(input_dir, output_dir, *, max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
                        overwrite: bool = False) -> ConversionResult:
    """transformers-native Janus checkpoint -> original DeepSeek layout (DeepSeek's own code loads it)."""
    from transformers import JanusConfig

    source, target = _check_dirs(input_dir, output_dir)
    max_bytes = parse_size(max_shard_size)
    model_type = assets.read_json(source / "config.json").get("model_type")
    if model_type != "janus":
        raise UserError(f"{source / 'config.json'}: model_type is {model_type!r}, not transformers' 'janus' "
                        "(an original DeepSeek checkpoint converts with --from deepseek)")
    try:
        config = JanusConfig.from_pretrained(source)
    except Exception as err:  # wrong model_type, malformed fields: the user's file
        raise UserError(f"{source / 'config.json'}: not a transformers Janus config ({err})") from err
    files = weight_files(source)
    headers = read_headers(files)
    plan = layout.plan_to_deepseek({k: h[0] for k, h in headers.items()}, config)
    dtype = _main_dtype(headers)
    original, notes = layout.deepseek_config_from_janus(config, dtype)
    processor = assets.load_native_processor(source)

    result = ConversionResult(target, notes=notes)
    with staged_output(target, overwrite) as staging:
        writer = ShardWriter(staging, "model", max_bytes, MemoryMeter())
        result.num_tensors = stream(files, plan, writer)
        writer.add(layout.CODEBOOK_USED, torch.zeros(layout.CODEBOOK_USED_SIZE, dtype=dtype))
        result.num_tensors += 1
        result.num_shards = writer.close()
        assets.write_json(staging / "config.json", original)
        assets.write_deepseek_assets(staging, source, processor, config)
    result.total_bytes, result.peak_bytes = writer.total_bytes, writer.meter.peak
    return result


# --------------------------------------------------------------------------- command line
