"""Reading and writing checkpoint tensors for conversion: size strings, weight files (safetensors or
`.bin`, sharded or not), headers without loading data, size-bounded safetensors shards, and the
stream between them that holds about one output shard in memory.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import UserError
from . import names as layout

_WEIGHT_FILES = (("model.safetensors.index.json", "model.safetensors"),
                 ("pytorch_model.bin.index.json", "pytorch_model.bin"))

def parse_size(size: int | str) -> int:
    """A shard size as `save_pretrained(max_shard_size=...)` reads it (transformers' own parser:
    `5GB` = 5 * 10**9, `2GiB` = 2 * 2**30), or a plain byte count."""
    from transformers.utils.hub import convert_file_size_to_int

    text = str(size).strip()
    try:
        value = int(text) if text.isdigit() else convert_file_size_to_int(text.replace(" ", ""))
    except ValueError:
        value = 0
    if value <= 0:
        raise UserError(f"max shard size {size!r} is not a size like 5GB, 500MB or 2GiB")
    return value


# --------------------------------------------------------------------------- reading tensors

def weight_files(directory: Path) -> list[Path]:
    """The weight files of a checkpoint directory, sharded (index) or single, safetensors first."""
    for index_name, single_name in _WEIGHT_FILES:
        index = directory / index_name
        if index.is_file():
            names = dict.fromkeys(read_json(index).get("weight_map", {}).values())
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


def main_dtype(headers) -> torch.dtype:
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
            write_json(self.directory / f"{self.prefix}.safetensors.index.json", index)
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


def read_json(path: Path) -> dict:
    """A JSON file's content, {} when the file is absent; UserError when it is not JSON."""
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: cannot read JSON ({err})") from err


def write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
