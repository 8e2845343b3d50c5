"""`janus-ft generate`: text-to-image with classifier-free guidance, or with `--image` an edit of the
source image(s); writes PNGs, a grid (sources | results for an edit) and the codes."""

from __future__ import annotations

import json
from pathlib import Path

from ..data.images import open_rgb
from ..errors import UserError
from ..infer.engine import Janus, check_drawing
from ..infer.generate import adapter_source_codes, edit_sheet, save_images


def configure(parser) -> None:
    parser.add_argument("--model", help="transformers-native Janus directory or 'tiny' "
                        "(default: the adapter's base_model_name_or_path)")
    parser.add_argument("--adapter", help="LoRA adapter directory (e.g. the output_dir of janus-ft sft)")
    parser.add_argument("--prompt", required=True, help="the caption to draw (with --image: the edit instruction)")
    parser.add_argument("--image", action="append", default=[], metavar="SRC",
                        help="a source image to edit (repeat for several, in order): image + instruction -> image")
    parser.add_argument("--image-cfg", type=float, default=1.0,
                        help="with --image: guidance towards the sources (1 = none beyond the instruction's; "
                             "needs a run that trained data.edit_uncond_dropout)")
    parser.add_argument("--source-codes", choices=["auto", "on", "off"], default="auto",
                        help="with --image: sources also as VQ codes (auto: as the adapter's run trained, "
                             "data.edit_source_codes in its recipe.yaml)")
    parser.add_argument("--output", required=True, metavar="DIR",
                        help="writes 0.png .. n-1.png, grid.png (with --image: sources | results) and codes.json here")
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
    if args.image_cfg < 0:
        raise UserError(f"--image-cfg must be >= 0, got {args.image_cfg}")
    for path in args.image:
        if not Path(path).is_file():
            raise UserError(f"--image {path}: no such file")
    janus = Janus.load(args.model, args.adapter, args.dtype, args.format)
    source_codes = {"on": True, "off": False}.get(args.source_codes)   # auto: as the adapter's run trained
    codes = janus.draw_codes(args.prompt, args.n, args.cfg, args.seed, images=args.image, temperature=args.temperature,
                             top_k=args.top_k, top_p=args.top_p, image_cfg=args.image_cfg, source_codes=source_codes)
    images = janus.decode(codes)
    meta = {"prompt": args.prompt, "cfg": args.cfg, "temperature": args.temperature, "top_k": args.top_k,
            "top_p": args.top_p, "seed": args.seed, "n": args.n, "model": args.model, "adapter": args.adapter}
    if args.image:
        used = source_codes if source_codes is not None else adapter_source_codes(args.adapter)
        meta |= {"images": args.image, "image_cfg": args.image_cfg, "source_codes": used}
    grid = edit_sheet([[*map(open_rgb, map(Path, args.image)), *images]]) if args.image else None
    out = save_images(images, Path(args.output), grid)
    (out / "codes.json").write_text(json.dumps(meta | {"codes": codes.tolist()}) + "\n", encoding="utf-8")
    print(f"janus-ft generate: {args.n} {'edit' if args.image else 'image'}(s), grid.png and codes.json in {out}")
    return 0
