"""``python -m scripts.distribution.pack``: the release zip that ``monai.bundle download`` fetches and unpacks.

    python -m scripts.distribution.pack                    # -> dist/cxr_ldm_v<version>.zip

The zip holds one folder, ``cxr_ldm/``, with the configs, scripts, tokenizer, docs, ``large_files.yml``,
``LICENSE``, ``README.md`` and the requirements, and no weights (``models/`` is empty; the weights
come from ``large_files.yml``). Publish it as a GitHub release asset (for ``--source github``) or at any
URL (for ``--url``).
"""

from __future__ import annotations

import json
import os
import zipfile

from scripts.common.files import atomic_path, is_temporary

BUNDLE_NAME = "cxr_ldm"
PACKED_FOLDERS = ("configs", "scripts", "tokenizer", "docs")
PACKED_FILES = ("large_files.yml", "LICENSE", "README.md", "requirements.txt", "requirements-dev.txt")
SKIPPED_SUFFIXES = (".pyc", ".tmp", ".part")


def bundle_files(bundle_root: str) -> list[str]:
    """Paths, relative to ``bundle_root``, of every file that goes into the release."""
    files = [name for name in PACKED_FILES if os.path.isfile(os.path.join(bundle_root, name))]
    for folder in PACKED_FOLDERS:
        for directory, subdirectories, names in os.walk(os.path.join(bundle_root, folder)):
            subdirectories[:] = sorted(d for d in subdirectories if d != "__pycache__")
            for name in sorted(names):
                if not name.endswith(SKIPPED_SUFFIXES) and not is_temporary(name):
                    files.append(os.path.relpath(os.path.join(directory, name), bundle_root))
    return files


def pack(bundle_root: str = ".", output_dir: str = "dist") -> str:
    """Write ``<output_dir>/cxr_ldm_v<version>.zip`` (version from configs/metadata.json); return its path."""
    with open(os.path.join(bundle_root, "configs", "metadata.json"), encoding="utf-8") as f:
        version = json.load(f)["version"]
    target = os.path.join(output_dir, f"{BUNDLE_NAME}_v{version}.zip")
    with atomic_path(target) as temporary, zipfile.ZipFile(temporary, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for relative in bundle_files(bundle_root):
            archive.write(os.path.join(bundle_root, relative), f"{BUNDLE_NAME}/{relative}")
        archive.writestr(f"{BUNDLE_NAME}/models/", "")
    return target


if __name__ == "__main__":
    import fire

    fire.Fire(pack)
