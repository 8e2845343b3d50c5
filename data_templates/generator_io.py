"""What every generator here shares: writing JSONL, the train/val split, and the command line
(out dir, --n, --seed, --size, --split-val; a ValueError becomes a usage error)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def check_split(n: int, n_val: int) -> None:
    if n < 1 or not 0 <= n_val <= n:
        raise ValueError(f"need n >= 1 and 0 <= n_val <= n, got n={n}, n_val={n_val}")


def write_split(out_dir: Path, records: list[dict], n_val: int,
                train_name: str = "train.jsonl", val_name: str = "val.jsonl") -> tuple[Path, Path]:
    """The last `n_val` records to the val file, the rest to the train file."""
    train_path, val_path = out_dir / train_name, out_dir / val_name
    write_jsonl(train_path, records[: len(records) - n_val])
    write_jsonl(val_path, records[len(records) - n_val:])
    return train_path, val_path


def parser(doc: str, n: int, size: int, val_default: str, out_help: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("out", help=out_help)
    p.add_argument("--n", type=int, default=n, help="total records, train + val")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed -> same bytes")
    p.add_argument("--size", type=int, default=size, help="image side in pixels")
    p.add_argument("--split-val", type=int, default=None, help=f"records held out to val (default {val_default})")
    return p


def finish(p: argparse.ArgumentParser, make) -> None:
    """Run `make()` (returning the paths written) and report; a ValueError is a usage error."""
    try:
        paths = make()
    except ValueError as e:
        p.error(str(e))
    print("wrote", *paths)
