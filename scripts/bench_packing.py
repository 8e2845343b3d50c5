"""Packed rows with per-sample attention vs padded rows vs packed rows under SDPA's block-diagonal
mask (docs/benchmarks.md, section 9), on a narrow LLM and length-skewed mixed data.

    python scripts/bench_packing.py [--steps 20] [--warmup 2] [--dir /tmp/janus-ft-packing] [--json PATH]

Writes into DIR: `model/` (the tiny Janus with its LLM widened to 256 x 4: `janus-ft tiny DIR/model
--llm narrow`), `data/` (text, understanding and generation records from 30 to ~1,700 tokens, images
from data_templates/samples) and
`recipe.yaml` (mix 2:1:1, batch 4, LoRA on the LLM), then runs, in this process, the three variants
a step of each in turn on the same batches:

    janus-ft bench --recipe DIR/recipe.yaml --steps N --warmup W --interleave --in-process \\
        --compare data.packing=true --compare "data.packing=true data.packed_attention=mask"
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
IMAGES = sorted((REPO / "data_templates" / "samples" / "images").glob("*.png"))
WORDS = ("the a red green blue yellow circle square triangle star shape colour picture image question answer "
         "draw paint photo text one two three four five six seven eight nine ten is are was with and or of in on "
         "at to this that it for not yes no hello world style city fox snow").split()


def words(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def records(rng: random.Random, n: int) -> dict[str, list[dict]]:
    """Sample lengths (tokens, with the system prompt and image tokens): text about 250-1,700,
    understanding 270-1,130, generation 30-65; batches of 4 at the recipe's 2:1:1 mix then hold
    about 4,550 padded slots and 2,750 tokens a step (0.60 real), the skew issue 26 measured
    (4,978 -> 2,929)."""
    text = [{"query": words(rng, 110, 770), "response": words(rng, 22, 440)} for _ in range(n)]
    understanding = []
    for _ in range(n):
        k = rng.randint(1, 3)
        understanding.append({"query": "<image>" * k + words(rng, 55, 550), "response": words(rng, 11, 220),
                              "images": [str(p) for p in rng.sample(IMAGES, k)]})
    generation = [{"query": words(rng, 4, 24), "response": "<image>", "images": [str(rng.choice(IMAGES))]}
                  for _ in range(n // 4)]
    return {"text": text, "understanding": understanding, "generation": generation}


def prepare(root: Path, n: int = 200, seed: int = 0) -> Path:
    """DIR/model, DIR/data/*.jsonl and DIR/recipe.yaml (kept when already there)."""
    import yaml

    from janus_ft.tiny import build_tiny

    if not (root / "model" / "janus_ft_tiny.json").exists():
        build_tiny(root / "model", llm="narrow")
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for task, rows in records(rng, n).items():
        (data / f"{task}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = {"model": {"path": str(root / "model")},
              "data": {"train": [{"path": str(data / f"{t}.jsonl")} for t in ("text", "understanding", "generation")],
                       "mix": {"text": 2, "understanding": 1, "generation": 1}, "max_length": 2048,
                       "cfg_dropout": 0.1},
              "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "targets": ["llm"]},
              "train": {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 1, "learning_rate": 1e-4,
                        "lr_scheduler_type": "constant", "seed": 42, "disable_tqdm": True, "logging_steps": 1000},
              "output_dir": str(root / "runs")}
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def main() -> int:
    from janus_ft.cli import main as cli

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default="/tmp/janus-ft-packing", help="where the model, data and recipe go")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json", help="also write the report here")
    args = parser.parse_args()
    recipe = prepare(Path(args.dir))
    return cli(["bench", "--recipe", str(recipe), "--steps", str(args.steps), "--warmup", str(args.warmup),
                "--interleave", "--in-process", "--compare", "data.packing=true",
                "--compare", "data.packing=true data.packed_attention=mask",
                *(["--json", args.json] if args.json else [])])


if __name__ == "__main__":
    raise SystemExit(main())
