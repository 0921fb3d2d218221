"""Image sets for evaluation: a folder of images, or items of a datalist, loaded as (1, H, W) in [0, 1].

A set is a list of dicts with an ``"image"`` path plus a transform that loads one item. Folders (e.g. the
inference workflow's output) are read with PIL, which keeps the on-disk orientation; datalists use the
bundle's ``load_image_transforms`` (the training configs' and ``configs/evaluate.json``'s) so real images are
prepared exactly as in training (orientation fixed, centre crop at ``image_size``).
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from scripts.data.dicom import is_dicom, read_radiograph
from scripts.data.limits import InputLimits, InputTooLargeError, check_file_size, check_pixel_count, too_many_pixels

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".pt", ".dcm")


def load_image_file(path: str) -> torch.Tensor:
    """(1, H, W) float32 in [0, 1] of an image file.

    Reads 8-bit (grey, or RGB made grey) and 16-bit grey PNG/JPEG files, ``.pt`` tensors in [0, 1], and
    DICOM radiographs through their Modality and VOI LUTs (``scripts.data.dicom.read_radiograph``, the
    reader of every user image in the bundle).
    """
    if is_dicom(path):
        return torch.from_numpy(read_radiograph(path).astype(np.float32))[None]
    if path.endswith(".pt"):
        image = torch.load(path, map_location="cpu", weights_only=True).float()
        if image.ndim == 2:
            image = image[None]
        if image.ndim != 3 or image.shape[0] != 1:
            raise ValueError(f"'{path}' holds a tensor shaped {tuple(image.shape)}; expected (1, H, W) or (H, W).")
        return image
    with Image.open(path) as pil:
        if pil.mode.startswith("I;16"):
            array = np.asarray(pil, dtype=np.float32) / 65535.0
        else:
            array = np.asarray(pil.convert("L"), dtype=np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(array))[None]


def load_grey(
    source: str, view_positions: tuple[str, ...] | None = None, limits: InputLimits | None = None
) -> Image.Image:
    """An 8-bit grayscale image of ``source``: a JPEG/PNG (8- or 16-bit) or a DICOM radiograph.

    16-bit PNGs rarely fill their container: their own range is stretched to 8 bits. DICOM files go through
    their Modality and VOI LUTs (``scripts.data.dicom.read_radiograph``, which also applies
    ``view_positions``); both then become round(255 · x). ``limits`` (default ``InputLimits()``) bound the
    file's bytes and the pixels its header declares, checked before anything is decoded.

    Raises:
        DicomError: a DICOM file that is not one usable radiograph.
        InputTooLargeError: a file over ``limits``.
        OSError / ValueError: an unreadable or unsupported image file.
    """
    limits = limits or InputLimits()
    check_file_size(source, limits)
    if is_dicom(source):
        values = read_radiograph(source, view_positions, limits)
        return Image.fromarray(np.round(values * 255.0).astype(np.uint8), mode="L")
    try:
        with warnings.catch_warnings():
            # Pillow warns from 89 million pixels on: the bundle's own limit decides
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(source)
    except Image.DecompressionBombError as error:  # far beyond the limit: Pillow refuses it from the header
        count = re.search(r"\((\d+) pixels\)", str(error))
        size = f"{int(count.group(1)) / 1e6:g} million pixels" if count else "more pixels than Pillow decodes"
        raise InputTooLargeError(too_many_pixels(source, size, limits)) from None
    with image:
        check_pixel_count(source, *image.size, limits)  # from the header: nothing decoded yet
        image.load()
        if image.mode not in ("L", "I;16", "I", "RGB", "RGBA", "P", "LA"):
            raise ValueError(f"unsupported image mode {image.mode}")
        if image.mode in ("I;16", "I"):
            pixels = np.asarray(image, dtype=np.float32)
            low, high = float(pixels.min()), float(pixels.max())
            return Image.fromarray(((pixels - low) * (255.0 / max(high - low, 1.0))).round().astype(np.uint8), mode="L")
        return image.convert("L")


def resize_short_side(image, short_side: int, resample=None):
    """``image`` (PIL) scaled so that its short side is ``short_side`` pixels, aspect ratio kept.

    Bilinear by default (Pillow widens the filter when shrinking, so it is antialiased); masks pass
    ``Image.Resampling.NEAREST``. An image already at that size is returned as it is.
    """
    width, height = image.size
    scale = int(short_side) / min(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if size == image.size:
        return image
    return image.resize(size, Image.Resampling.BILINEAR if resample is None else resample)


def load_image_item(item: dict) -> dict:
    """Transform for folder items: adds the loaded (1, H, W) image under ``"image"``."""
    return {**item, "image": load_image_file(item["image"])}


def folder_items(folder: str, limit: int | None = None) -> list[dict]:
    """Sorted ``{"image": path, "name": file name}`` items of the image files in ``folder`` (first ``limit``)."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise FileNotFoundError(
            f"Image folder '{folder}' does not exist: point the set at a folder of {IMAGE_EXTENSIONS} images."
        )
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS) and not n.startswith("."))
    if not names:
        raise ValueError(f"Image folder '{folder}' contains no {IMAGE_EXTENSIONS} files.")
    return [{"image": os.path.join(folder, n), "name": n} for n in names[:limit]]


def datalist_items(datalist_file: str, section: str, dataset_dir: str, limit: int | None = None) -> list[dict]:
    """Items of one section (``"test"``, ``"validation"``...) of a decathlon-style datalist, absolute paths."""
    from monai.data import load_decathlon_datalist

    if not os.path.isfile(datalist_file):
        raise FileNotFoundError(
            f"Datalist '{datalist_file}' not found: prepare the data set first (python -m scripts.data.prepare)."
        )
    items = load_decathlon_datalist(datalist_file, is_segmentation=False, data_list_key=section, base_dir=dataset_dir)
    if not items:
        raise ValueError(f"Datalist '{datalist_file}' has no items in section '{section}'.")
    return [{**item, "name": item.get("dicom_id", os.path.basename(item["image"]))} for item in items[:limit]]


def iterate_images(
    items: Sequence[dict], transform: Callable[[dict], dict] | None = None, batch_size: int = 16, num_workers: int = 0
) -> Iterator[tuple[list[dict], torch.Tensor]]:
    """Yield (items, (B, 1, H, W) float32 images in [0, 1]) batches in order."""
    from monai.data import DataLoader, Dataset

    transform = transform or load_image_item
    keep = ("image", "name")

    def load(item: dict) -> dict:
        loaded = transform(dict(item))
        return {"image": torch.as_tensor(loaded["image"]).float(), "index": item["_index"]}

    indexed = [{k: v for k, v in item.items() if k in keep} | {"_index": i} for i, item in enumerate(items)]
    loader = DataLoader(Dataset(indexed, transform=load), batch_size=batch_size, shuffle=False, num_workers=num_workers)
    for batch in loader:
        images = torch.as_tensor(batch["image"]).float()
        if images.ndim != 4 or images.shape[1] != 1:
            raise ValueError(f"Loaded images must be (1, H, W); got a batch shaped {tuple(images.shape)}.")
        yield [items[int(i)] for i in batch["index"]], images
