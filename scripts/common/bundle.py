"""Facts about the bundle itself, read from its files."""

from __future__ import annotations

import json
import os


def bundle_version(bundle_root: str) -> str:
    """``version`` of ``configs/metadata.json`` (written to the manifest and hashed into file names)."""
    path = os.path.join(bundle_root, "configs", "metadata.json")
    try:
        with open(path, encoding="utf-8") as f:
            return str(json.load(f).get("version", "unknown"))
    except (OSError, ValueError):
        return "unknown"
