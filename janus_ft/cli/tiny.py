"""`janus-ft tiny DIR`."""

from __future__ import annotations


def configure(parser) -> None:
    parser.add_argument("output_dir", help="directory to write the checkpoint into")
    parser.add_argument("--format", choices=["janus-pro", "janus"], default="janus-pro",
                        help="conversation format of the tokenizer's chat template")
    parser.add_argument("--seed", type=int, default=0, help="weight initialisation seed")
    parser.add_argument("--vq-channels", type=int, default=32, choices=[32, 64, 128, 256],
                        help="VQ decoder width: 128 decodes codes to distinct colours (for image rewards)")
    parser.add_argument("--llm", choices=["mid", "narrow"], default=None,
                        help="a wider language model (visual paths stay tiny): mid = 512 x 4, narrow = 256 x 4")


def run(args) -> int:
    from ..tiny import build_tiny

    out = build_tiny(args.output_dir, fmt=args.format, seed=args.seed, vq_channels=args.vq_channels, llm=args.llm)
    print(f"wrote tiny Janus ({args.format}{f', {args.llm} LLM' if args.llm else ''}) to {out}")
    return 0
