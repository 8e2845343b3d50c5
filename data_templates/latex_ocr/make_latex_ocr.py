"""LaTeX-OCR data rendered locally: formula image -> LaTeX source (mirrors ms-swift's LaTeX-OCR demo).

Formulas come from ~60 templates with random variables, Greek letters and numbers substituted, and
are rendered with matplotlib's mathtext (its own parser and bundled Computer Modern fonts), so no
TeX installation or download is needed. Templates use only the LaTeX subset mathtext understands;
the test suite renders every template, so an unsupported command fails there, not in a user's run.

    python data_templates/latex_ocr/make_latex_ocr.py OUT_DIR --n 500 --seed 0 --size 384 --split-val 50

writes OUT_DIR/train.jsonl, OUT_DIR/val.jsonl and OUT_DIR/images/f_0001.png, ...
"""

from __future__ import annotations

import random
import re
import sys
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # data_templates/: generator_io
from generator_io import check_split, finish, parser, write_split  # noqa: E402

QUERY = "<image>Convert the formula into LaTeX."

# Placeholders: @x @y @z -> distinct variable letters, @g @h -> distinct Greek letters,
# #1 #2 #3 -> small integers. '@' and '#' never occur in the formulas themselves.
TEMPLATES = [
    r"@x^{#1} + @y^{#2}", r"@x^{2} + @y^{2} = @z^{2}", r"\frac{@x}{@y}", r"\frac{#1}{#2} + \frac{@x}{#3}",
    r"\sqrt{@x^{2} + #1}", r"\sqrt[#1]{@x}", r"@x_{#1} + @x_{#2}", r"@g + @h = #1",
    r"\sum_{i=1}^{@x} i^{#1}", r"\sum_{k=0}^{\infty} \frac{@x^{k}}{k!}", r"\prod_{i=1}^{#1} @x_{i}",
    r"\int_{0}^{#1} @x \, d@x", r"\int_{@y}^{@z} f(@x) \, d@x", r"\int @x^{#1} \, d@x = \frac{@x^{#2}}{#2}",
    r"\lim_{@x \to 0} \frac{\sin @x}{@x}", r"\lim_{@x \to \infty} \frac{#1}{@x}", r"e^{i @g} = \cos @g + i \sin @g",
    r"\sin^{2} @g + \cos^{2} @g = 1", r"\tan @g = \frac{\sin @g}{\cos @g}", r"\log_{#1} @x",
    r"\ln(@x @y) = \ln @x + \ln @y",
    r"@x \leq @y", r"@x \geq #1", r"@x \neq @y", r"@x \approx #1.#2", r"@x \pm @y", r"@x \times @y = @z",
    r"@x \cdot @y", r"\frac{\partial @z}{\partial @x}", r"\frac{d @y}{d @x} = #1 @x", r"\nabla @g",
    r"\vec{@x} \cdot \vec{@y}", r"\hat{@x} + \bar{@y}", r"\left( @x + @y \right)^{#1}", r"\left| @x - @y \right|",
    r"@x \in \mathbb{R}", r"\forall @x \exists @y", r"@x \rightarrow @y", r"@g \Rightarrow @h",
    r"\binom{#1}{@x}", r"\mathbf{@x} + \mathbf{@y}", r"\mathrm{d}@x", r"f(@x) = @x^{#1} - #2 @x + #3",
    r"@g_{#1} = @g_{0} + #2", r"\frac{1}{1 + e^{-@x}}", r"\sigma^{2} = \frac{1}{@x} \sum_{i} (@y_{i} - \mu)^{2}",
    r"@x_{1}, @x_{2}, \ldots, @x_{#1}", r"\overline{@x + @y}", r"\tilde{@x}", r"\dot{@x} = -@g @x",
    r"@x^{@y^{#1}}", r"\frac{@x + #1}{@y - #2}", r"\sqrt{\frac{@x}{@y}}", r"|@x| < @g",
    r"@x \subset @y", r"\infty - @x", r"\pi @x^{2}", r"@g \alpha + @h \beta", r"\max(@x, @y)", r"\det(@x) = #1",
]
VARIABLES = "abcmnpqrstuvwxyz"
GREEK = [r"\alpha", r"\beta", r"\gamma", r"\delta", r"\theta", r"\lambda", r"\mu", r"\phi", r"\omega", r"\psi"]
RENDER_FONTSIZE = 48  # render big, then downscale: crisper than rendering at the target size


def sample_formula(template: str, rng: random.Random) -> str:
    """Fill `template`'s placeholders; the same placeholder gets the same value within a formula."""
    letters, greek = rng.sample(VARIABLES, 3), rng.sample(GREEK, 2)
    values = {"@x": letters[0], "@y": letters[1], "@z": letters[2], "@g": greek[0], "@h": greek[1]}
    values.update({f"#{k}": str(rng.randint(2, 9)) for k in (1, 2, 3)})

    def fill(m: re.Match) -> str:
        # A Greek command followed by a letter would fuse (\alphax): add a space, as a human would.
        fused = values[m.group()].startswith("\\") and m.string[m.end():m.end() + 1].isalpha()
        return values[m.group()] + (" " if fused else "")

    return re.sub(r"@[xyzgh]|#[123]", fill, template)


class Renderer:
    """Reuses one matplotlib figure: creating a figure per formula would dominate the run time."""

    def __init__(self) -> None:
        self.fig = Figure(figsize=(16, 4), dpi=100)
        self.canvas = FigureCanvasAgg(self.fig)
        # Computer Modern pinned on the text itself, so a user's matplotlibrc cannot change the look.
        self.text = self.fig.text(0.5, 0.5, "", ha="center", va="center", fontsize=RENDER_FONTSIZE,
                                  math_fontfamily="cm", usetex=False)

    def render(self, latex: str, size: int) -> Image.Image:
        """`latex` black on white, cropped to its ink, scaled to fit and centred in a size x size square."""
        self.text.set_text(f"${latex}$")
        self.canvas.draw()
        ink = Image.frombuffer("RGBA", self.canvas.get_width_height(), self.canvas.buffer_rgba()).convert("L")
        box = ImageOps.invert(ink).getbbox()
        if box is None or box[0] == 0 or box[2] == ink.width:
            raise ValueError(f"formula renders blank or too wide: {latex!r}")
        ink = ink.crop(box)
        # Fit within the square less a margin, but cap the font (em) at a sixth of the image: a lone
        # "x^{2}" blown up to fill 384 px looks nothing like real OCR input. Tiny images get at least
        # a 24 px em so that they stay legible.
        room = size * 0.9
        em_px = RENDER_FONTSIZE * self.fig.dpi / 72
        scale = min(room / ink.width, room / ink.height, max(size / 6, 24) / em_px)
        w, h = max(1, round(ink.width * scale)), max(1, round(ink.height * scale))
        out = Image.new("L", (size, size), 255)
        out.paste(ink.resize((w, h), Image.LANCZOS), ((size - w) // 2, (size - h) // 2))
        return out.convert("RGB")


def make_latex_ocr(out_dir, n: int = 500, seed: int = 0, size: int = 384, n_val: int | None = None,
                   train_name: str = "train.jsonl", val_name: str = "val.jsonl") -> tuple[Path, Path]:
    """Write `n` formula records (the last `n_val` to the val file; default n // 10) and their images.

    Returns (train_path, val_path); image paths in the JSONL are relative to `out_dir`.
    """
    n_val = n // 10 if n_val is None else n_val
    check_split(n, n_val)
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rng, renderer, records = random.Random(seed), Renderer(), []
    for i in range(1, n + 1):
        latex = sample_formula(rng.choice(TEMPLATES), rng)
        rel = f"images/f_{i:04d}.png"
        renderer.render(latex, size).save(out_dir / rel)
        records.append({"query": QUERY, "response": latex, "images": [rel]})
    return write_split(out_dir, records, n_val, train_name, val_name)


def main(argv=None) -> None:
    p = parser(__doc__, n=500, size=384, val_default="n // 10",
               out_help="output directory (train.jsonl, val.jsonl, images/); Janus sees 384 px")
    args = p.parse_args(argv)
    finish(p, lambda: make_latex_ocr(args.out, args.n, args.seed, args.size, args.split_val))


if __name__ == "__main__":
    main()
