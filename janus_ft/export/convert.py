"""`janus-ft convert`: DeepSeek's original Janus checkpoints <-> transformers' native layout.

The original (`multi_modality`) layout is what `deepseek-ai/Janus-1.3B` and `deepseek-ai/Janus-Pro-*`
ship and what DeepSeek's own `janus` package loads; the native layout is what
`JanusForConditionalGeneration` loads and what janus_ft trains. Tensor names, shapes and
config.json in `janus_ft.export.names` and `.config`, tokenizer and processor files in `.assets`,
reading and writing shards in `.io`; this module checks, streams the tensors and stages the output.

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

import shutil
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import UserError
from ..files import publish
from . import assets
from . import names as layout
from .config import deepseek_config_from_janus, janus_config_from_deepseek
from .io import MemoryMeter, ShardWriter, main_dtype, parse_size, read_headers, read_json, stream, weight_files, write_json

DEFAULT_MAX_SHARD_SIZE = "5GB"
@dataclass
class ConversionResult:
    """What a conversion wrote, and the most tensor bytes it held in memory at once."""

    output_dir: Path
    num_tensors: int = 0
    total_bytes: int = 0
    num_shards: int = 0
    peak_bytes: int = 0
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- output directory

@contextmanager
def staged_output(output: Path, overwrite: bool):
    """A hidden sibling directory that becomes `output` only if the block succeeds."""
    if output.exists() and not overwrite:
        raise UserError(f"output={output} already exists (pass overwrite=True to replace it)")
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
    publish(staging, output)


def _check_dirs(input_dir, output_dir) -> tuple[Path, Path]:
    source, target = Path(input_dir).expanduser(), Path(output_dir).expanduser()
    if not (source / "config.json").is_file():
        raise UserError(f"{source}: no config.json (is this a checkpoint directory?)")
    if target.resolve() == source.resolve():
        raise UserError("output= must differ from input=")
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
    original = read_json(source / "config.json")
    tokenizer = assets.load_deepseek_tokenizer(source)
    files = weight_files(source)
    headers = read_headers(files)
    config = janus_config_from_deepseek(original, assets.token_ids(tokenizer))
    config.dtype = main_dtype(headers)
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
    model_type = read_json(source / "config.json").get("model_type")
    if model_type != "janus":
        raise UserError(f"{source / 'config.json'}: model_type is {model_type!r}, not transformers' 'janus' "
                        "(an original DeepSeek checkpoint: convert it from DeepSeek's layout instead)")
    try:
        config = JanusConfig.from_pretrained(source)
    except Exception as err:  # wrong model_type, malformed fields: the user's file
        raise UserError(f"{source / 'config.json'}: not a transformers Janus config ({err})") from err
    files = weight_files(source)
    headers = read_headers(files)
    plan = layout.plan_to_deepseek({k: h[0] for k, h in headers.items()}, config)
    dtype = main_dtype(headers)
    original, notes = deepseek_config_from_janus(config, dtype)
    processor = assets.load_native_processor(source)

    result = ConversionResult(target, notes=notes)
    with staged_output(target, overwrite) as staging:
        writer = ShardWriter(staging, "model", max_bytes, MemoryMeter())
        result.num_tensors = stream(files, plan, writer)
        writer.add(layout.CODEBOOK_USED, torch.zeros(layout.CODEBOOK_USED_SIZE, dtype=dtype))
        result.num_tensors += 1
        result.num_shards = writer.close()
        write_json(staging / "config.json", original)
        assets.write_deepseek_assets(staging, source, processor, config)
    result.total_bytes, result.peak_bytes = writer.total_bytes, writer.meter.peak
    return result


# --------------------------------------------------------------------------- command line
