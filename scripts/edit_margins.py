"""Measure the margins of tests/test_edit_learning.py: held-out target-code NLL of an edit LoRA and
of the same model trained text-to-image on the same targets, over model initialisations x seeds.

    OMP_NUM_THREADS=1 python scripts/edit_margins.py [--inits 0 1] [--seeds 0 1 2] [--out DIR]

Prints one JSON line per pair of runs and a summary (docs/edit.md, "Measured results").
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

import test_edit_learning as t  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--inits", type=int, nargs="+", default=[0, 1])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", type=Path, default=None, help="work directory (default: a temporary one)")
    args = p.parse_args()
    threads = int(os.environ.get("OMP_NUM_THREADS") or 1)
    torch.set_num_threads(threads)
    root = args.out or Path(tempfile.mkdtemp(prefix="edit_margins-"))
    os.environ.setdefault("JANUS_FT_CACHE", str(root / "cache"))
    data, cache = t.world(root / "data"), root / "codes"
    rows = []
    for init in args.inits:
        model = t.build_model(root, init)
        t.patch_codes(model, data / "images", cache)
        for seed in args.seeds:
            started = time.monotonic()
            edit = t.heldout_nll(model, data, cache, root / f"edit-{init}-{seed}", "edit", seed)
            middle = time.monotonic()
            t2i = t.heldout_nll(model, data, cache, root / f"t2i-{init}-{seed}", "generation", seed)
            row = {"threads": threads, "init": init, "seed": seed, "edit": [round(x, 4) for x in edit],
                   "t2i": [round(x, 4) for x in t2i], "edit_drop": round(1 - edit[1] / edit[0], 4),
                   "margin": round(t2i[1] - edit[1], 4), "edit_s": round(middle - started, 1),
                   "t2i_s": round(time.monotonic() - middle, 1)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    margins = [r["margin"] for r in rows]
    drops = [r["edit_drop"] for r in rows]
    print(json.dumps({"threads": threads, "runs": len(rows), "margin_min": min(margins), "margin_max": max(margins),
                      "edit_drop_min": min(drops), "edit_last_max": max(r["edit"][1] for r in rows),
                      "t2i_last_min": min(r["t2i"][1] for r in rows)}), flush=True)


if __name__ == "__main__":
    main()
