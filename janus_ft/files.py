"""Files janus_ft keeps and how it writes them: the cache root, and write-then-rename.

Everything janus_ft publishes (checkpoints, the final adapter, merged and converted checkpoints,
the tiny model, VQ code cache entries) is written aside and renamed into place when complete, so a
kill or a full disk at any moment never leaves a half-written file or directory where a reader (a
resume, another rank, the user) would take it for a finished one.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from .errors import UserError


def cache_root() -> Path:
    """`$JANUS_FT_CACHE`, else `~/.cache/janus_ft`: the tiny model, random benchmark models and the
    VQ code cache live under it."""
    return Path(os.environ.get("JANUS_FT_CACHE") or Path.home() / ".cache" / "janus_ft")


def tiny_model_dir() -> Path:
    """Where the embedded tiny model (`model.path: tiny`) is built."""
    return cache_root() / "tiny-janus-pro"


def publish(staged: Path, final: Path, keep_existing: bool = False) -> bool:
    """Move a fully written file or directory into place; True if it was published.

    An existing `final` is moved aside first and deleted only once the new one is in place, so a
    crash in between leaves one of the two complete. With `keep_existing`, an existing `final`
    wins instead (a second process that built the same content loses the race) and `staged` is
    deleted.
    """
    staged, final = Path(staged), Path(final)
    if keep_existing and final.exists():
        remove(staged)
        return False
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        remove(old)
        os.replace(final, old)
    try:
        os.replace(staged, final)
    except OSError:
        if not keep_existing:
            raise
        remove(staged)   # another process published between our check and our rename
        return False
    if old is not None:
        remove(old)
    return True


def remove(path: Path) -> None:
    """Delete a file or directory tree if it exists."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


@contextmanager
def main_process_first():
    """accelerate's `main_process_first` (the main process builds a shared cache, then the other
    ranks read it), also when the main process fails with a user error: it still meets the others
    at the barrier before raising, so they go on, meet the same bad file themselves and stop with
    the same message -- instead of waiting at the barrier for a process that has left, until the
    launcher kills them without a word."""
    from accelerate import PartialState

    state = PartialState()
    if not state.is_main_process:
        state.wait_for_everyone()
    failure = None
    try:
        yield
    except UserError as err:
        if not state.is_main_process:
            raise
        failure = err
    if state.is_main_process:
        state.wait_for_everyone()
    if failure is not None:
        raise failure
