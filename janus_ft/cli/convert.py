"""`janus-ft convert --from deepseek | --to deepseek`: between DeepSeek's original checkpoint layout
and transformers-native Janus (`janus_ft.export.convert`)."""

from __future__ import annotations

import argparse

from ..errors import UserError
from ..export.convert import (
    DEFAULT_MAX_SHARD_SIZE,
    convert_from_deepseek,
    convert_to_deepseek,
    parse_size,
)


def _size_arg(text: str) -> int:
    try:
        return parse_size(text)
    except UserError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def configure(parser: argparse.ArgumentParser) -> None:
    direction = parser.add_mutually_exclusive_group(required=True)
    direction.add_argument("--from", dest="source_format", choices=["deepseek"],
                           help="convert an original DeepSeek checkpoint to the transformers layout")
    direction.add_argument("--to", dest="target_format", choices=["deepseek"],
                           help="convert a transformers-layout checkpoint to DeepSeek's original layout")
    parser.add_argument("--input", required=True, help="checkpoint directory to read")
    parser.add_argument("--output", required=True, help="directory to create (must not exist unless --overwrite)")
    parser.add_argument("--max-shard-size", type=_size_arg, default=DEFAULT_MAX_SHARD_SIZE,
                        help="largest safetensors shard to write, e.g. 5GB, 500MB (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    parser.add_argument("--format", dest="fmt", choices=["auto", "janus-pro", "janus"], default="auto",
                        help="chat template for --from deepseek: janus-pro, janus (Janus-1.3B) or auto")


def run(args: argparse.Namespace) -> int:
    if args.source_format:
        result = convert_from_deepseek(args.input, args.output, max_shard_size=args.max_shard_size,
                                       overwrite=args.overwrite, fmt=args.fmt)
    else:
        result = convert_to_deepseek(args.input, args.output, max_shard_size=args.max_shard_size,
                                     overwrite=args.overwrite)
    for note in result.notes:
        print(f"note: {note}")
    print(f"wrote {result.num_tensors} tensors ({result.total_bytes / 1e9:.2f} GB) in "
          f"{result.num_shards} shard(s) to {result.output_dir}; "
          f"peak tensor memory held: {result.peak_bytes / 1e6:.1f} MB")
    return 0
