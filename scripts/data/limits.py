"""How large an input image the bundle reads: its bytes on disk and its pixels, checked before decoding.

A chest radiograph has at most about 4,300 × 4,300 pixels (18 million); a small compressed file may declare
far more (a 20000 × 20000 PNG of zeros is 0.4 MB on disk and 400 MB decoded), so every reader of user images
(``scripts.data.images.load_grey``, ``scripts.data.dicom.read_radiograph``) checks the declared size against
``InputLimits.max_pixels`` from the file's header before it decodes anything. The app also bounds the bytes of
an upload (``max_megabytes``); the command line reads the user's own files at any size on disk.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from scripts.common.errors import CxrLdmError

#: most pixels of an input image (width × height): well above any radiograph detector, far below a bomb
MAX_IMAGE_PIXELS = 50_000_000


class InputTooLargeError(CxrLdmError, ValueError):
    """An input file larger (on disk or decoded) than the bundle reads."""


@dataclass(frozen=True)
class InputLimits:
    """Largest input the readers accept.

    Args:
        max_pixels: most pixels (width × height) an image may declare, checked before decoding.
        max_megabytes: most megabytes (10^6 bytes) a file may have on disk; None: any size.
    """

    max_pixels: int = MAX_IMAGE_PIXELS
    max_megabytes: float | None = None

    @property
    def max_decoded_bytes(self) -> int:
        """Most bytes a decompressed data set may take: 16-bit pixels at ``max_pixels`` plus 16 MiB of header."""
        return 2 * int(self.max_pixels) + (1 << 24)


def check_file_size(path: str, limits: InputLimits) -> None:
    """``InputTooLargeError`` when ``path`` has more than ``limits.max_megabytes`` on disk."""
    if limits.max_megabytes is None:
        return
    size = os.path.getsize(path)
    if size > limits.max_megabytes * 1e6:
        raise InputTooLargeError(
            f"'{path}' is {size / 1e6:.1f} MB, more than the {limits.max_megabytes:g} MB a file may have here: "
            "send a smaller export of the radiograph (or start the app with a larger --max_upload_mb)."
        )


def check_pixel_count(path: str, width: int, height: int, limits: InputLimits) -> None:
    """``InputTooLargeError`` when an image of ``width`` × ``height`` has more than ``limits.max_pixels``."""
    if int(width) * int(height) > limits.max_pixels:
        raise InputTooLargeError(too_many_pixels(path, f"{int(width)}x{int(height)} pixels", limits))


def too_many_pixels(path: str, size: str, limits: InputLimits) -> str:
    """The one-line message of an image of ``size`` (words) over ``limits.max_pixels``."""
    return (
        f"'{path}' is {size}, more than the {limits.max_pixels / 1e6:g} million pixels an input image may have: "
        "downscale it (a chest radiograph needs no more than about 4000x4000)."
    )
