"""Inputs of editing tests: a non-square radiograph, masks on it, and runs of the editing workflow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .bundle import CONFIGS, run_inference

EDIT_CONFIG = str(CONFIGS / "edit.json")
#: the test radiograph's size (width, height): not square, so preparation resizes and crops it
IMAGE_SIZE = (80, 96)


def write_image(path: Path, seed: int = 0, size: tuple[int, int] = IMAGE_SIZE) -> Path:
    """An 8-bit grey PNG of smooth structure plus noise, ``size`` = (width, height)."""
    rng = np.random.default_rng(seed)
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    smooth = 0.5 + 0.3 * np.sin(x / 7.0 + seed) * np.cos(y / 9.0)
    pixels = ((smooth + 0.1 * rng.standard_normal((height, width))).clip(0, 1) * 255).round().astype(np.uint8)
    Image.fromarray(pixels, mode="L").save(path)
    return Path(path)


def write_mask(path: Path, box: tuple[int, int, int, int], size: tuple[int, int] = IMAGE_SIZE) -> Path:
    """A PNG mask of ``size`` (width, height), white inside ``box`` = (left, top, right, bottom)."""
    width, height = size
    left, top, right, bottom = box
    pixels = np.zeros((height, width), dtype=np.uint8)
    pixels[top:bottom, left:right] = 255
    Image.fromarray(pixels, mode="L").save(path)
    return Path(path)


def run_edit(model_dir: Path, output_dir: Path, **overrides) -> list[Path]:
    """Run the editing workflow (the inference chain + the tiny overlays + edit.json) in-process; the edited images."""
    return run_inference(model_dir, output_dir, EDIT_CONFIG, **overrides)


def _png(width: int, height: int, pixel_data: bytes) -> bytes:
    """A grey 8-bit PNG file of ``width`` × ``height`` holding ``pixel_data`` (zlib stream) as its one IDAT."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixel_data) + chunk(b"IEND", b"")


def write_png_bomb(path: Path, side: int = 20000) -> Path:
    """A valid black PNG of ``side`` × ``side`` pixels: ~2 MB on disk, ``side``² bytes once decoded."""
    import zlib

    compressor, row_block = zlib.compressobj(1), bytes(side + 1) * 100  # 100 rows (filter byte + pixels)
    stream = b"".join(compressor.compress(row_block) for _ in range(side // 100)) + compressor.flush()
    Path(path).write_bytes(_png(side, side, stream))
    return Path(path)


def write_hostile_inputs(folder: Path) -> dict[str, tuple[Path, str]]:
    """Uploads a hostile or careless visitor may send: file name -> (path, what the bundle's message must say).

    A decompression bomb, a PNG header declaring 144 million pixels over cut-off data (so only a check
    made before decoding gives the size message), truncated and empty files, DICOM objects without pixels,
    cut off, declaring 20000 × 20000 pixels, or deflated to 0.1 MB from 128 MB.
    """
    import numpy as np
    from pydicom import dcmread
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    from .data import write_dx

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_png_bomb(folder / "bomb.png")
    (folder / "huge_header.png").write_bytes(_png(12000, 12000, b"\x78\x01")[:-12])  # IEND gone too
    whole = write_image(folder / "whole.png").read_bytes()
    (folder / "truncated.png").write_bytes(whole[: len(whole) // 2])
    Image.open(folder / "whole.png").save(folder / "whole.jpg", quality=90)
    (folder / "truncated.jpg").write_bytes((folder / "whole.jpg").read_bytes()[:-200])
    (folder / "empty.png").write_bytes(b"")
    write_dx(folder / "no_pixels.dcm")
    cut = Path(write_dx(folder / "whole.dcm", np.full((96, 80), 900, dtype=np.uint16))).read_bytes()
    (folder / "truncated.dcm").write_bytes(cut[:-2000])
    huge = dcmread(folder / "whole.dcm")
    huge.Rows = huge.Columns = 20000
    huge.save_as(folder / "huge.dcm")
    write_dx(folder / "deflated.dcm", np.zeros((8000, 8000), dtype=np.uint16), syntax=DeflatedExplicitVRLittleEndian)
    messages = {
        "bomb.png": "is 400 million pixels, more than the 50 million pixels an input image may have",
        "huge_header.png": "is 12000x12000 pixels, more than the 50 million pixels an input image may have",
        "truncated.png": "is not a readable image (image file is truncated)",
        "truncated.jpg": "is not a readable image (image file is truncated",
        "empty.png": "is not a readable image (cannot identify image file)",
        "no_pixels.dcm": "has no pixel data",
        "truncated.dcm": "pixel data cannot be decoded",
        "huge.dcm": "is 20000x20000 pixels, more than the 50 million pixels an input image may have",
        "deflated.dcm": "is deflated and inflates to more than",
    }
    return {name: (folder / name, message) for name, message in messages.items()}
