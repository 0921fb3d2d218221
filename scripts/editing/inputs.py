"""An edit's inputs: the radiograph and its masks, read and prepared exactly as training images are.

The radiograph (PNG/JPEG, 8- or 16-bit, or DICOM) is read as training data is prepared
(``scripts.data.images.load_grey``: 8-bit grey, 16-bit images stretched over their own range, DICOM
through its Modality and VOI LUTs), its short side is resized to ``image_size`` (bilinear, antialiased),
and the long side is centre-cropped to ``image_size`` (MONAI's ``ResizeWithPadOrCrop``, as in the training
configs' ``load_image_transforms``). Rows stay as stored: the top of the file is the top of the edited image.

Masks are grey images, white (> 127) = inside. Each is prepared with the image's geometry and
nearest-neighbour resizing, so a mask drawn on the original image lands on the same pixels of the edited
one. A mask may have:

- the original image's size: prepared like the image;
- the edited image's size (``image_size`` × ``image_size``): taken as drawn on the prepared image;
- another size with the image's aspect ratio (within 1 %): resized to the image's size with nearest
  neighbour, with a warning, then prepared like the image;
- any other size: an ``EditInputError`` naming both sizes.

Files are read within ``scripts.data.limits.InputLimits``: an image may declare at most 50 million pixels
(checked from its header, before decoding, so a decompression bomb is refused unread), and the app bounds an
upload's bytes too. Every unreadable, truncated or oversized file is an ``EditInputError``, one line naming it.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import torch
from PIL import Image

from scripts.common.errors import CxrLdmError
from scripts.data.dicom import DicomError
from scripts.data.images import load_grey, resize_short_side
from scripts.data.limits import InputLimits, InputTooLargeError

#: aspect ratios closer than this count as the same (a mask saved at another resolution)
ASPECT_TOLERANCE = 0.01


class EditInputError(CxrLdmError, ValueError):
    """An input image or mask of an edit that cannot be used."""


def _centre_crop(array: np.ndarray, image_size: int) -> torch.Tensor:
    from monai.transforms import ResizeWithPadOrCrop
    from monai.utils import convert_to_tensor

    cropped = ResizeWithPadOrCrop((image_size, image_size))(torch.from_numpy(array)[None])
    return convert_to_tensor(cropped, track_meta=False).float().contiguous()  # a plain tensor, no MONAI metadata


def read_grey(path: str, what: str, limits: InputLimits | None = None) -> Image.Image:
    """8-bit grey PIL image of ``path``; an ``EditInputError`` naming the file when it cannot be read.

    ``limits`` (default ``InputLimits()``) bound the file's bytes and pixels before anything is decoded.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise EditInputError(f"{what} '{path}' does not exist: check the path (CSV paths are relative to the CSV).")
    try:
        return load_grey(path, limits=limits)
    except InputTooLargeError as error:
        raise EditInputError(f"{what} {error}") from None
    except DicomError as error:
        raise EditInputError(f"{what}: {error}") from None
    except (OSError, ValueError, SyntaxError) as error:
        # Pillow's own text names the file as well ("cannot identify image file '<path>'"): once is enough
        detail = str(error).splitlines()[0].replace(f" {path!r}", "") if str(error) else type(error).__name__
        raise EditInputError(f"{what} '{path}' is not a readable image ({detail}): use PNG, JPEG or DICOM.") from None


def load_edit_image(
    path: str, image_size: int, limits: InputLimits | None = None
) -> tuple[torch.Tensor, tuple[int, int]]:
    """The prepared radiograph (1, image_size, image_size) in [0, 1] and the file's (width, height)."""
    grey = read_grey(path, "Input image", limits)
    resized = resize_short_side(grey, image_size)
    return _centre_crop(np.asarray(resized, dtype=np.float32) / 255.0, image_size), grey.size


def load_mask(
    path: str,
    image_size: int,
    image_path: str,
    image_file_size: tuple[int, int],
    what: str,
    limits: InputLimits | None = None,
) -> torch.Tensor:
    """A mask prepared like its image: (1, image_size, image_size) float of 0 and 1 (see the module docstring)."""
    grey = read_grey(path, what, limits)
    binary = Image.fromarray(((np.asarray(grey) > 127) * 255).astype(np.uint8), mode="L")
    width, height = binary.size
    image_width, image_height = image_file_size
    if (width, height) == (image_size, image_size) and (width, height) != image_file_size:
        array = np.asarray(binary, dtype=np.float32) / 255.0
        return torch.from_numpy(array)[None].contiguous()
    if (width, height) != image_file_size:
        if abs(width / height - image_width / image_height) > ASPECT_TOLERANCE * image_width / image_height:
            raise EditInputError(
                f"{what} '{path}' is {width}x{height} but image '{image_path}' is {image_width}x{image_height}: "
                f"draw the mask on the image (same size, or {image_size}x{image_size} on the edited image)."
            )
        warnings.warn(
            f"{what} '{path}' is {width}x{height}, image '{image_path}' is {image_width}x{image_height}: "
            "the mask was resized with nearest neighbour.",
            stacklevel=2,
        )
        binary = binary.resize(image_file_size, Image.Resampling.NEAREST)
    resized = resize_short_side(binary, image_size, resample=Image.Resampling.NEAREST)
    return _centre_crop(np.asarray(resized, dtype=np.float32) / 255.0, image_size)


def load_edit_inputs(job: dict, image_size: int, limits: InputLimits | None = None) -> dict:
    """``job`` with its prepared tensors added, each (1, image_size, image_size):

    - ``"input_image"``: the radiograph in [0, 1];
    - ``"edit_region"``: 1 where the image may change (the edit mask; everywhere without one);
    - ``"keep_region"``: 1 where it must not change (the keep mask; nowhere without one).

    Raises ``EditInputError`` for an unreadable file, a file over ``limits`` (bytes or pixels, checked before
    decoding), a mask of another shape, an edit mask with no white pixel, or masks that leave nothing to edit.
    """
    image, file_size = load_edit_image(job["source_image"], image_size, limits)
    ones, zeros = torch.ones_like(image), torch.zeros_like(image)
    edit = zeros
    if job.get("edit_mask"):
        edit = load_mask(job["edit_mask"], image_size, job["source_image"], file_size, "Edit mask", limits)
        if not edit.any():
            raise EditInputError(
                f"Edit mask '{job['edit_mask']}' has no white pixel inside the {image_size}x{image_size} edited "
                "image: paint the region to change white (> 127), or leave --edit_mask out to edit everywhere."
            )
    else:
        edit = ones
    keep = zeros
    if job.get("keep_mask"):
        keep = load_mask(job["keep_mask"], image_size, job["source_image"], file_size, "Keep mask", limits)
        if not (edit * (1 - keep)).any():
            raise EditInputError(
                f"Keep mask '{job['keep_mask']}' covers every pixel the edit may change, so nothing can change: "
                "make the keep mask smaller or the edit mask larger."
            )
    return {**job, "input_image": image, "edit_region": edit, "keep_region": keep}


class LoadEditInputs:
    """Dataset transform of the editing workflow: ``load_edit_inputs`` at ``image_size`` within ``limits``."""

    def __init__(self, image_size: int, limits: InputLimits | None = None) -> None:
        self.image_size = int(image_size)
        self.limits = limits

    def __call__(self, job: dict) -> dict:
        return load_edit_inputs(job, self.image_size, self.limits)


def check_edit_inputs(jobs: list[dict], image_size: int, limits: InputLimits | None = None) -> int:
    """Read every pending edit's inputs before anything is generated; the first bad one raises.

    Returns the number of edits checked.
    """
    for job in jobs:
        load_edit_inputs(job, image_size, limits)
    return len(jobs)
