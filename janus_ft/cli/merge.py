"""`janus-ft merge --adapter DIR --output DIR`: a LoRA adapter merged into its base."""

from __future__ import annotations

from ..export.merge import merge_adapter
from ..janus import DTYPES


def configure(parser) -> None:
    parser.add_argument("--adapter", required=True, help="adapter directory written by `janus-ft sft`")
    parser.add_argument("--output", required=True, help="directory for the merged checkpoint")
    parser.add_argument("--base", default=None,
                        help="base checkpoint (default: the adapter's base_model_name_or_path, else its recipe's model.path)")
    parser.add_argument("--dtype", choices=DTYPES, default=None,
                        help="dtype of the saved weights (default: float32, the dtype the merge runs in)")
    parser.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard, e.g. 5GB or 500MB")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")


def run(args) -> int:
    out = merge_adapter(args.adapter, args.output, base=args.base, dtype=args.dtype,
                        max_shard_size=args.max_shard_size, overwrite=args.overwrite)
    print(f"janus-ft merge: merged checkpoint in {out}")
    return 0
