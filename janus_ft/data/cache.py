"""What janus_ft keeps under its cache root (`$JANUS_FT_CACHE`, else `~/.cache/janus_ft`), listed
and pruned (`janus-ft cache ls | prune`).

| kind | where | pruned |
|---|---|---|
| `prepared` | `prepared/<key>/`: one source's validated, tokenized rows (`data.prepared`) | yes |
| `vq-codes` | `vq_codes/<vq>-<size>/`: one VQ model's codes at one image size (`data.vq`) | yes |
| `unfinished` | a build a killed process left aside (`.<name>-<pid>`) | yes, once its process is gone |
| `images` | `images/`: images that arrived as data, stored by content (prepared rows name them) | no |
| `tiny-model`, `bench-model` | the embedded tiny model, random benchmark models | no |

An entry's last use is the modification time of its `.in-use` file, touched by every process that
reads it (`files.hold`); an entry held by a running process is never removed, whatever its age
(`files.claim`). A pruned entry is rebuilt by the next run that needs it.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from ..files import IN_USE, cache_root, claim

PRUNABLE = ("prepared", "vq-codes", "unfinished")
DAY = 86400.0


@dataclass
class CacheEntry:
    kind: str
    path: Path
    size: int            # bytes
    created: float       # seconds since the epoch: the oldest file's modification time
    last_used: float     # the `.in-use` file's modification time, else the newest file's
    detail: str = ""     # the source of prepared rows, the number of images of a code directory

    def as_dict(self, now: float) -> dict:
        return {"kind": self.kind, "path": str(self.path), "size": self.size, "age_days": (now - self.created) / DAY,
                "last_used_days": (now - self.last_used) / DAY, "detail": self.detail}


def _stat_tree(path: Path) -> tuple[int, float, float, int]:
    """(bytes, oldest mtime, newest mtime, files) of a file or directory tree, the lock file left out."""
    size, oldest, newest, files = 0, float("inf"), 0.0, 0
    paths = [path] if path.is_file() else (p for p in path.rglob("*") if p.name != IN_USE)
    for p in paths:
        try:
            info = p.lstat()
        except OSError:   # removed while we looked
            continue
        if p.is_file():
            size, files = size + info.st_size, files + 1
            oldest, newest = min(oldest, info.st_mtime), max(newest, info.st_mtime)
    if files == 0:
        oldest = newest = path.stat().st_mtime if path.exists() else time.time()
    return size, oldest, newest, files


def _entry(kind: str, path: Path, detail: str = "") -> CacheEntry:
    size, oldest, newest, _ = _stat_tree(path)
    try:
        used = (path / IN_USE).stat().st_mtime
    except OSError:
        used = newest
    if kind == "vq-codes":
        detail = f"{sum(1 for _ in path.rglob('*.npy'))} images"
    return CacheEntry(kind, path, size, oldest, max(used, newest), detail)


def _gone(name: str) -> bool:
    """Whether the process that named a staging entry `.<name>-<pid>` no longer runs."""
    pid = name.rpartition("-")[2]
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:   # someone else's process: alive
        return False
    return False


def cache_entries(root: Path | None = None) -> list[CacheEntry]:
    """Every entry under the cache root, by kind then path."""
    root = Path(root) if root is not None else cache_root()
    out = []
    for kind, folder in (("prepared", "prepared"), ("vq-codes", "vq_codes")):
        for path in sorted((root / folder).glob("*")) if (root / folder).is_dir() else []:
            if not path.is_dir():
                continue
            if path.name.startswith("."):
                if _gone(path.name):
                    out.append(_entry("unfinished", path))
                continue
            meta = path / "meta.json"
            if kind == "prepared" and not meta.is_file():
                continue
            detail = json.loads(meta.read_text()).get("source", "") if kind == "prepared" else ""
            out.append(_entry(kind, path, detail))
    if (root / "images").is_dir():
        out.append(_entry("images", root / "images", "images that arrived as data (prepared rows name them)"))
    for path in sorted(root.glob("tiny-*")) + sorted(root.glob("random-*")):
        if path.is_dir() and not path.name.startswith("."):
            out.append(_entry("tiny-model" if path.name.startswith("tiny-") else "bench-model", path))
    return out


def prune(older_than_days: float, dry_run: bool = False, root: Path | None = None,
          kinds: tuple[str, ...] = PRUNABLE) -> tuple[list[CacheEntry], list[CacheEntry]]:
    """(removed, kept because a running process holds them): the entries of `kinds` not used for
    `older_than_days` days. With `dry_run` nothing is removed and nothing is tested for use."""
    if older_than_days < 0:
        raise ValueError(f"older_than_days must be >= 0, got {older_than_days}")
    now, removed, busy = time.time(), [], []
    for entry in cache_entries(root):
        if entry.kind not in kinds or entry.kind not in PRUNABLE or now - entry.last_used < older_than_days * DAY:
            continue
        if dry_run or claim(entry.path):
            removed.append(entry)
        else:
            busy.append(entry)
    return removed, busy
