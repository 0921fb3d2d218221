"""Atomic writes: every file the bundle writes appears under its final name only when it is complete.

A file is written to a temporary name in the same folder (so the final rename is atomic) and renamed
when done; an error removes the temporary file, so a crash or a kill never leaves a truncated file under a
final name. Temporary names keep the final extension (libraries choose the format from it) and carry
``TEMPORARY_MARKER`` and the process id (ranks writing side by side never share one).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

TEMPORARY_MARKER = ".partial"


def temporary_path(path: str | os.PathLike) -> str:
    """``<stem>.<pid>.partial<ext>`` beside ``path``."""
    root, extension = os.path.splitext(os.fspath(path))
    return f"{root}.{os.getpid()}{TEMPORARY_MARKER}{extension}"


def is_temporary(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a temporary file of ``atomic_path`` (a leftover, if no writer is running)."""
    return TEMPORARY_MARKER in os.path.basename(os.fspath(path))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path to write ``path``'s content to (a file or a folder); rename it on success.

    The parent folder is created. On any error the temporary file or folder is removed and the error
    propagates; ``path`` is then untouched.
    """
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    temporary = temporary_path(path)
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        if os.path.isdir(temporary):
            shutil.rmtree(temporary, ignore_errors=True)
        elif os.path.lexists(temporary):
            os.remove(temporary)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> str:
    """Write ``text`` (UTF-8) to ``path`` atomically; return ``path``."""
    with atomic_path(path) as temporary, open(temporary, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    return os.fspath(path)


def atomic_write_json(path: str | os.PathLike, data, indent: int = 2) -> str:
    """Write ``data`` as JSON (with a final newline) to ``path`` atomically; return ``path``."""
    return atomic_write_text(path, json.dumps(data, indent=indent) + "\n")


@contextlib.contextmanager
def locked_file(path: str | os.PathLike) -> Iterator[int]:
    """Open (creating) ``path`` read-write and hold an exclusive lock on it; yield the file descriptor.

    Processes that lock the same file (ranks of one run, two runs into one folder) take turns; the lock goes
    with the process if it dies. POSIX only (``ImportError`` elsewhere).
    """
    import fcntl

    descriptor = os.open(os.fspath(path), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield descriptor
    finally:
        os.close(descriptor)  # closing releases the lock


def remove_leftovers(folder: str | os.PathLike) -> int:
    """Delete temporary files left in ``folder`` (recursively) by an interrupted run; return how many."""
    removed = 0
    for leftover in Path(folder).rglob(f"*{TEMPORARY_MARKER}*"):
        if leftover.is_file() and is_temporary(leftover):
            leftover.unlink()
            removed += 1
    return removed
