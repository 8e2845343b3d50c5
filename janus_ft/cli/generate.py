"""`janus-ft generate`: text-to-image with classifier-free guidance; writes PNGs, a grid and the codes."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError
from ..infer.engine import Janus, check_drawing
from ..infer.generate import save_images


def configure(parser) -> None:
    parser.add_argument("--model", help="transformers-native Janus directory or 'tiny' "
                        "(default: the adapter's base_model_name_or_path)")
    parser.add_argument("--adapter", help="LoRA adapter directory (e.g. the output_dir of janus-ft sft)")
    parser.add_argument("--prompt", required=True, help="the caption to draw")
    parser.add_argument("--output", required=True, metavar="DIR",
                        help="writes 0.png .. n-1.png, grid.png and codes.json here")
    parser.add_argument("--n", type=int, default=4, help="images to sample")
    parser.add_argument("--cfg", type=float, default=5.0,
                        help="classifier-free guidance scale (Janus: 5; 1 = no guidance, the caption's own distribution)")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature; 0 = greedy")
    parser.add_argument("--top-k", type=int, default=0, help="sample among the k likeliest codes (0 = all, as DeepSeek)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (1 = off, as DeepSeek)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--format", default="auto", choices=["auto", "janus-pro", "janus"],
                        help="conversation format (default: from the chat template)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])


def run(args) -> int:
    check_drawing(args.n, args.cfg, args.temperature, args.top_k, args.top_p)   # before minutes of loading
    if not args.prompt.strip():
        raise UserError("--prompt is empty: a generation prompt needs a caption")
    janus = Janus.load(args.model, args.adapter, args.dtype, args.format)
    codes = janus.draw_codes(args.prompt, args.n, args.cfg, args.seed, temperature=args.temperature,
                             top_k=args.top_k, top_p=args.top_p)
    out = save_images(janus.decode(codes), Path(args.output))
    meta = {"prompt": args.prompt, "cfg": args.cfg, "temperature": args.temperature, "top_k": args.top_k,
            "top_p": args.top_p, "seed": args.seed,
            "n": args.n, "model": args.model, "adapter": args.adapter, "codes": codes.tolist()}
    (out / "codes.json").write_text(json.dumps(meta) + "\n", encoding="utf-8")
    print(f"janus-ft generate: {args.n} image(s), grid.png and codes.json in {out}")
    return 0
