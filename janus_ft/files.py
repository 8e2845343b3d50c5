"""Files janus_ft keeps and how it writes them: the cache root, and write-then-rename.

Everything janus_ft publishes (checkpoints, the final adapter, merged and converted checkpoints,
the tiny model, VQ code cache entries) is written aside and renamed into place when complete, so a
kill or a full disk at any moment never leaves a half-written file or directory where a reader (a
resume, another rank, the user) would take it for a finished one.

A process reading a cache entry (prepared rows it memory-maps, a VQ code directory) `hold`s it: a
shared lock on the entry's `.in-use` file, kept until the process exits, whose modification time is
the entry's last use. `janus-ft cache prune` `claim`s an entry (an exclusive lock, never waiting)
before it renames it aside and deletes it, so an entry a running process reads is never removed.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from .errors import UserError

try:
    import fcntl
except ImportError:   # Windows: no advisory locks; prune then goes by last use alone
    fcntl = None

IN_USE = ".in-use"            # a cache entry's lock file; its mtime is the entry's last use
_HELD: dict[str, int] = {}    # entry -> open descriptor holding its shared lock until the process exits
_MAX_HELD = 1024


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


def hold(entry: Path, create: bool = False) -> bool:
    """Mark a cache entry as read by this process until it exits, and record the use. False when
    the entry is gone (a prune removed it meanwhile: the caller builds it again); with `create`,
    the entry directory is made (again) as needed."""
    entry = Path(entry)
    for _ in range(3):
        if create:
            entry.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(entry / IN_USE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:   # gone, or a cache this process may only read: there is nothing to mark
            return entry.is_dir()
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_SH)   # waits out a prune that is deleting the entry right now
        try:
            same = os.fstat(fd).st_ino == os.stat(entry / IN_USE).st_ino
        except OSError:
            same = False
        if not same:   # pruned while we waited: our lock is on a deleted file
            os.close(fd)
            if create:
                continue
            return False
        os.utime(fd)
        old = _HELD.pop(str(entry), None)
        if old is not None:
            os.close(old)
        _HELD[str(entry)] = fd
        if len(_HELD) > _MAX_HELD:   # bound the descriptors of a long-lived process (the test suite)
            os.close(_HELD.pop(next(iter(_HELD))))
        return True
    return False


def claim(entry: Path) -> bool:
    """Remove a cache entry unless a process holds it: an exclusive lock taken without waiting,
    the entry renamed aside under it (readers that come later find it gone), then deleted."""
    entry = Path(entry)
    fd = None
    try:
        fd = os.open(entry / IN_USE, os.O_RDWR | os.O_CREAT, 0o644) if entry.is_dir() else None
        if fd is not None and fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    except OSError:
        if fd is not None:
            os.close(fd)
        fd = None
    try:
        aside = entry.with_name(f".pruned-{entry.name}-{os.getpid()}")
        os.replace(entry, aside)
        remove(aside)
        return True
    except OSError:
        return False
    finally:
        if fd is not None:
            os.close(fd)
