"""Regenerate the README's picture of `janus-ft ui` (docs/images/ui_side_by_side.png, docs/images/ui_runs.png)
from a finished demo run: serves the page on the tiny model with the run's adapter and takes screenshots
in headless chromium (Debian's `chromium`, driven by Playwright).

    janus-ft sft --recipe recipes/demo.yaml && python scripts/ui_screenshot.py --run runs/demo
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "images"
IMAGE = REPO / "data_templates" / "samples" / "images" / "shape_0049.png"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=str(REPO / "runs" / "demo"), help="a finished demo run (default runs/demo)")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from playwright.sync_api import sync_playwright

    from janus_ft.tiny import tiny_path
    from janus_ft.ui.app import build_app
    from janus_ft.ui.session import Workbench

    run = Path(args.run)
    bench = Workbench(str(tiny_path()))
    bench.add_adapter(run)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = build_app(bench, run)
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=args.chromium, headless=True)
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.goto(f"http://127.0.0.1:{port}/")
            page.get_by_role("tab", name="Side by side").click()
            page.locator("#sbs-image input[type=file]").set_input_files(str(IMAGE))
            page.fill("#sbs-prompt textarea", "What colour is the shape?")
            page.fill("#sbs-max-new input[type=number]", "16")
            page.click("#sbs-answer")
            page.wait_for_function("document.querySelectorAll('#sbs-answers .virtual-row').length === 2")
            page.screenshot(path=str(OUT / "ui_side_by_side.png"))
            page.get_by_role("tab", name="Runs").click()
            page.wait_for_selector("#run-samples .grid-wrap img")
            page.screenshot(path=str(OUT / "ui_runs.png"))
            browser.close()
    finally:
        app.close()
    for name in ("ui_side_by_side.png", "ui_runs.png"):   # 256 colours: a third of the bytes, the same look
        shot = Image.open(OUT / name).convert("RGB")
        shot.quantize(256, method=Image.Quantize.MEDIANCUT).save(OUT / name, optimize=True)
    print(f"ui_side_by_side.png and ui_runs.png in {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
