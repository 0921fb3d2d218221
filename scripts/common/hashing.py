"""Hashes of files, folders and settings: full digests for downloads, cheap fingerprints for identities.

``file_digest`` reads a whole file (download checks). ``fingerprint`` identifies weights quickly enough to
run on every sampling command: a 1 GB checkpoint costs a few MB of reads. ``settings_digest`` hashes a
settings dict after ``canonical`` has spelled equal values one way (``7`` and ``7.0``, tuples and lists).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping

#: Bytes read from each end of a file, and the size and count of the evenly spaced pieces in between.
EDGE_BYTES = 1 << 20
PIECE_BYTES = 1 << 16
NUM_PIECES = 32


def file_digest(path: str, hash_type: str = "sha256", chunk_bytes: int = 1 << 20) -> str:
    """Hex digest of the whole file ``path`` (``hash_type``: any ``hashlib`` name, e.g. md5, sha256)."""
    digest = hashlib.new(hash_type.lower())
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_bytes), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_fingerprint(path: str) -> str:
    """16-hex-digit fingerprint of a file: its size, both ends and ``NUM_PIECES`` pieces spread over it.

    Weights that differ (another training run, a fine-tune) differ all over a checkpoint, so any one of
    ~34 samples tells them apart; reading them costs ~4 MB whatever the file size. Files up to
    ``2 * EDGE_BYTES + NUM_PIECES * PIECE_BYTES`` bytes are hashed whole.
    """
    size = os.path.getsize(path)
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        if size <= 2 * EDGE_BYTES + NUM_PIECES * PIECE_BYTES:
            digest.update(f.read())
        else:
            step = (size - 2 * EDGE_BYTES) // (NUM_PIECES + 1)
            offsets = [0, *(EDGE_BYTES + step * (i + 1) for i in range(NUM_PIECES)), size - EDGE_BYTES]
            for offset in offsets:
                f.seek(offset)
                digest.update(f.read(EDGE_BYTES if offset in (0, size - EDGE_BYTES) else PIECE_BYTES))
    return digest.hexdigest()[:16]


def fingerprint(source) -> str:
    """Fingerprint of a weights file, of every file in a weights folder (recursively), or of a name.

    A path that does not exist (a hub id, ``"random"``) is identified by its text; a missing file is
    reported by whatever loads it.
    """
    source = os.fspath(source) if source is not None else ""
    if os.path.isfile(source):
        return file_fingerprint(source)
    if os.path.isdir(source):
        digest = hashlib.sha256()
        for folder, subfolders, files in os.walk(source):
            subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
            for name in sorted(f for f in files if not f.startswith(".")):
                path = os.path.join(folder, name)
                digest.update(f"{os.path.relpath(path, source)}:{file_fingerprint(path)};".encode())
        return digest.hexdigest()[:16]
    return "name:" + source


def canonical(value):
    """``value`` with equal settings spelled one way: numbers as floats (``7`` == ``7.0``), sequences as
    lists, mappings with string keys; booleans, None and text unchanged.

    Non-finite numbers are kept as text (``"nan"``), though sampling refuses them earlier.
    """
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        number = float(value)
        return number if math.isfinite(number) else str(number)
    if isinstance(value, Mapping):
        return {str(key): canonical(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [canonical(item) for item in value]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy / torch scalars
        return canonical(value.item())
    return str(value)


def settings_digest(settings: Mapping, length: int = 8) -> str:
    """Short hex digest of ``canonical(settings)`` (key order and number spelling do not matter)."""
    text = json.dumps(canonical(settings), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]
