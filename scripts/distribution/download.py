"""``python -m scripts.distribution.download``: fetch the large files of ``large_files.yml``, resumable, hash-checked.

    python -m scripts.distribution.download                       # every entry
    python -m scripts.distribution.download models/model.pt       # some entries (path or file name)
    python -m scripts.distribution.download text_encoder          # OpenCLIP ViT-H/14 → models/text_encoder

Each entry of ``large_files.yml`` has ``path`` (relative to the bundle), ``url`` (and optionally
``mirrors``), ``hash_type`` (md5/sha256) and ``hash_val``. A file already present with the right hash is
skipped. A download goes to ``<path>.part``, continues from where an interrupted one stopped (HTTP Range),
is checked against the hash, and only then renamed to ``<path>``. When every source fails, the command
says where to put the file by hand and exits non-zero.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
import urllib.error
import urllib.request

import yaml

from scripts.common.errors import CxrLdmError
from scripts.common.files import atomic_path
from scripts.common.hashing import file_digest

CHUNK = 1 << 20
TEXT_ENCODER_TARGET = "text_encoder"


class DownloadError(CxrLdmError, RuntimeError):
    """A large file could not be fetched or failed its hash check."""


def read_large_files(path: str) -> list[dict]:
    """Entries of a ``large_files.yml`` (a mapping with a ``large_files`` list)."""
    if not os.path.isfile(path):
        raise DownloadError(f"'{path}' not found: run from the bundle root or pass --large_files.")
    with open(path, encoding="utf-8") as f:
        content = yaml.safe_load(f) or {}
    entries = content.get("large_files", [])
    for entry in entries:
        if "path" not in entry or "url" not in entry:
            raise DownloadError(f"'{path}': every entry needs 'path' and 'url', got {entry}.")
        check_entry_hash(entry)
    return entries


#: Hex digits of a full digest, per ``hash_type`` (what MONAI's ``download_large_files`` compares).
DIGEST_LENGTHS = {"md5": 32, "sha1": 40, "sha256": 64, "sha512": 128}


def check_entry_hash(entry: dict) -> None:
    """Refuse an entry whose ``hash_val`` is neither empty (no published hash) nor a full digest."""
    hash_type = str(entry.get("hash_type") or "md5").lower()
    expected = str(entry.get("hash_val") or "").strip().lower()
    if hash_type not in DIGEST_LENGTHS:
        raise DownloadError(f"'{entry['path']}': hash_type {hash_type!r} is not one of {sorted(DIGEST_LENGTHS)}.")
    if expected and (len(expected) != DIGEST_LENGTHS[hash_type] or any(c not in "0123456789abcdef" for c in expected)):
        raise DownloadError(
            f"'{entry['path']}': hash_val {expected!r} is not a full {hash_type} digest "
            f"({DIGEST_LENGTHS[hash_type]} hex digits); write the whole digest or leave it empty."
        )


def hash_ok(path: str, entry: dict) -> bool:
    """Whether ``path`` matches the entry's full hash (True when the entry publishes none)."""
    expected = str(entry.get("hash_val") or "").strip().lower()
    if not expected:
        return True
    return file_digest(path, entry.get("hash_type", "md5")) == expected


def fetch(url: str, destination: str, timeout: float = 60.0, progress: bool = True) -> str:
    """Download ``url`` to ``destination`` through ``destination + '.part'``, resuming a partial file."""
    from tqdm.auto import tqdm

    partial = destination + ".part"
    os.makedirs(os.path.dirname(os.path.abspath(destination)), exist_ok=True)
    offset = os.path.getsize(partial) if os.path.isfile(partial) else 0
    request = urllib.request.Request(url, headers={"User-Agent": "cxr-ldm-download"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        if offset and response.status != 206:  # the server ignored the range: start again
            offset = 0
        total = response.headers.get("Content-Length")
        total = int(total) + offset if total is not None else None
        with (
            open(partial, "ab" if offset else "wb") as out,
            tqdm(
                total=total,
                initial=offset,
                unit="B",
                unit_scale=True,
                desc=os.path.basename(destination),
                disable=not progress,
            ) as bar,
        ):
            for block in iter(lambda: response.read(CHUNK), b""):
                out.write(block)
                bar.update(len(block))
    return partial


def manual_instructions(entry: dict, bundle_dir: str) -> str:
    sources = [entry["url"], *entry.get("mirrors", [])]
    checksum = f"{entry.get('hash_type', 'md5')} {entry['hash_val']}" if entry.get("hash_val") else "no published hash"
    return (
        f"Could not download '{entry['path']}'. Download it by hand from one of\n    "
        + "\n    ".join(sources)
        + f"\nand save it as '{os.path.join(bundle_dir, entry['path'])}' ({checksum}); then re-run this command to "
        "check it."
    )


def download_entry(
    entry: dict, bundle_dir: str = ".", retries: int = 3, timeout: float = 60.0, progress: bool = True
) -> str:
    """Make ``entry``'s file present and verified in ``bundle_dir``; return its path."""
    destination = os.path.join(bundle_dir, entry["path"])
    if os.path.isfile(destination):
        if hash_ok(destination, entry):
            print(f"ok        {entry['path']} (already present, hash checked)")
            return destination
        print(f"mismatch  {entry['path']}: its hash is wrong, downloading it again")
    errors = []
    for url in [entry["url"], *entry.get("mirrors", [])]:
        for attempt in range(1, retries + 1):
            try:
                partial = fetch(url, destination, timeout=timeout, progress=progress)
            except (urllib.error.URLError, OSError, TimeoutError) as error:
                errors.append(f"{url}: {getattr(error, 'reason', error)}")
                time.sleep(min(2**attempt, 10) if attempt < retries else 0)
                continue
            if hash_ok(partial, entry):
                os.replace(partial, destination)
                print(f"done      {entry['path']}")
                return destination
            os.remove(partial)  # a complete file with the wrong hash cannot be resumed
            errors.append(f"{url}: downloaded file has the wrong {entry.get('hash_type', 'md5')} hash")
            break
    raise DownloadError(manual_instructions(entry, bundle_dir) + "\nErrors: " + "; ".join(errors[-3:]))


def convert_text_encoder(openclip_file: str, output_dir: str) -> str:
    """Save the SD-2 text encoder built from an OpenCLIP ViT-H/14 checkpoint as a CLIPTextModel folder."""
    from scripts.networks.text import convert_openclip_text_tower, load_state_dict_file

    model = convert_openclip_text_tower(load_state_dict_file(openclip_file))
    output_dir = output_dir.rstrip("/\\")
    if os.path.isdir(output_dir):
        shutil.rmtree(output_dir)  # a folder cannot replace a non-empty one; the new one is complete below
    with atomic_path(output_dir) as temporary:
        model.save_pretrained(temporary)
    print(f"converted {openclip_file} -> {output_dir}")
    return output_dir


def main(
    *names: str, bundle_dir: str = ".", large_files: str | None = None, retries: int = 3, timeout: float = 60.0
) -> None:
    """Download the large files named in ``names`` (paths or file names; none: all of them).

    ``text_encoder`` fetches the OpenCLIP ViT-H/14 entry and converts it into ``models/text_encoder``.
    """
    entries = read_large_files(large_files or os.path.join(bundle_dir, "large_files.yml"))
    wanted = [str(n) for n in names] or [e["path"] for e in entries] + [TEXT_ENCODER_TARGET]
    failures = []
    for name in wanted:
        if name == TEXT_ENCODER_TARGET:
            source = [e for e in entries if e.get("converts_to") == "models/text_encoder"]
            if not source:
                failures.append("large_files.yml has no OpenCLIP entry with 'converts_to: models/text_encoder'.")
                continue
            target = os.path.join(bundle_dir, source[0]["converts_to"])
            if os.path.isfile(os.path.join(target, "config.json")):
                print(f"ok        {source[0]['converts_to']} (already converted)")
                continue
            try:
                convert_text_encoder(download_entry(source[0], bundle_dir, retries, timeout), target)
            except DownloadError as error:
                failures.append(str(error))
            continue
        matches = [e for e in entries if name in (e["path"], os.path.basename(e["path"]))]
        if not matches:
            failures.append(f"'{name}' is not in large_files.yml (known: {[e['path'] for e in entries]}).")
        for entry in matches:
            try:
                download_entry(entry, bundle_dir, retries, timeout)
            except DownloadError as error:
                failures.append(str(error))
    if failures:
        print("\n\n".join(failures), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    import fire

    fire.Fire(main)
