"""`janus-ft cache ls | prune`: what janus_ft keeps under its cache root (prepared rows, VQ codes,
stored images, tiny and benchmark models), and removing the prepared rows and VQ codes no run has
used for a while (`data.cache`)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..data.cache import DAY, PRUNABLE, cache_entries, prune
from ..errors import UserError
from ..files import cache_root


def configure(parser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    ls = sub.add_parser("ls", help="list every cache entry: kind, size, age, last use",
                        description="list every cache entry: kind, size, age, last use")
    ls.add_argument("--json", action="store_true", help="one JSON object per entry")
    pr = sub.add_parser("prune", help="remove prepared rows and VQ codes not used for DAYS days",
                        description="remove prepared rows and VQ codes not used for DAYS days (never an entry a "
                                    "running process reads); the next run that needs one builds it again")
    pr.add_argument("--older-than", type=float, default=30.0, metavar="DAYS",
                    help="last used more than DAYS days ago (default 30; 0: every entry not in use)")
    pr.add_argument("--kind", action="append", choices=PRUNABLE, help="only this kind (repeat for several)")
    pr.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")
    for p in (ls, pr):
        p.add_argument("--root", metavar="DIR", help="the cache root (default: $JANUS_FT_CACHE, else ~/.cache/janus_ft)")


def run(args) -> int:
    root = Path(args.root) if args.root else cache_root()
    if args.root and not root.is_dir():
        raise UserError(f"--root {root}: no such directory")
    now = time.time()
    if args.action == "ls":
        entries = cache_entries(root)
        if args.json:
            for e in entries:
                print(json.dumps(e.as_dict(now)))
            return 0
        print(table(entries, root, now) if entries else f"janus-ft cache: nothing cached in {root}")
        return 0
    if args.older_than < 0:
        raise UserError(f"--older-than must be >= 0, got {args.older_than}")
    removed, busy = prune(args.older_than, args.dry_run, root, tuple(args.kind or PRUNABLE))
    if removed:
        print(table(removed, root, now))
    for e in busy:
        print(f"janus-ft cache: kept {e.path.relative_to(root)}: a running process reads it")
    verb = "would remove" if args.dry_run else "removed"
    print(f"janus-ft cache: {verb} {len(removed)} entr{'y' if len(removed) == 1 else 'ies'}, "
          f"{human_size(sum(e.size for e in removed))}")
    return 0


def table(entries, root: Path, now: float) -> str:
    rows = [("kind", "size", "age", "last use", "entry")]
    rows += [(e.kind, human_size(e.size), human_age(now - e.created), human_age(now - e.last_used),
              f"{e.path.relative_to(root)}" + (f"  ({e.detail})" if e.detail else "")) for e in entries]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4] for r in rows]
    return "\n".join(lines + [f"total {human_size(sum(e.size for e in entries))} in {root}"])


def human_size(n: int) -> str:
    """`1.5 MB`, binary steps.

    >>> human_size(512), human_size(1536), human_size(3 * 1024 ** 3)
    ('512 B', '1.5 KB', '3.0 GB')
    """
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def human_age(seconds: float) -> str:
    """`45 s`, `12 min`, `5 h`, `3.0 d`.

    >>> human_age(45), human_age(720), human_age(5 * 3600), human_age(3 * 86400)
    ('45 s', '12 min', '5 h', '3.0 d')
    """
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < DAY:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / DAY:.1f} d"
