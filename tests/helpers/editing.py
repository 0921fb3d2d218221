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
