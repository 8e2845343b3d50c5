"""`janus-ft ui`: a web page on localhost to try a base model and its adapters (chat, text-to-image,
side by side) and to watch training runs (loss curves, evaluations, sample grids). Needs the `ui`
extra: `pip install "janus-ft[ui]"`."""

from __future__ import annotations

import os

from ..errors import UserError


def configure(parser) -> None:
    parser.add_argument("--model", required=True, help="transformers-native Janus directory or 'tiny'")
    parser.add_argument("--adapter", action="append", default=[], metavar="DIR",
                        help="a LoRA adapter to load onto the base (repeat for several; more can be loaded on the page)")
    parser.add_argument("--runs", metavar="DIR", help="a run directory (output_dir of janus-ft sft) or a folder of them")
    parser.add_argument("--port", type=int, default=7860, help="port on localhost (default 7860)")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default: this machine only)")
    parser.add_argument("--format", default="auto", choices=["auto", "janus-pro", "janus"],
                        help="conversation format (default: from the chat template)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])


def run(args) -> int:
    if not 0 < args.port < 65536:
        raise UserError(f"--port must be between 1 and 65535, got {args.port}")
    if args.runs and not os.path.isdir(args.runs):
        raise UserError(f"--runs {args.runs}: no such directory")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise UserError('janus-ft ui needs Gradio: pip install "janus-ft[ui]"') from None
    from ..ui.app import build_app
    from ..ui.session import Workbench

    bench = Workbench(args.model, args.dtype, args.format)
    for adapter in args.adapter:
        bench.add_adapter(adapter)
    print(f"janus-ft ui: {args.model} with {len(bench.adapters)} adapter(s) on http://{args.host}:{args.port}")
    build_app(bench, args.runs).launch(server_name=args.host, server_port=args.port, show_error=True, quiet=True)
    return 0
