"""The data-set workflow's image writer: the sampling writer, except that an image with non-finite pixels is kept.

The sampling writer refuses to write NaN or infinite pixels, which stops a run (and its re-run, which samples the
same image again). A data set keeps every image instead: ``DatasetWriter`` replaces NaN by 0 and infinities by 0 or
1, writes ``<name>.nonfinite.json`` (the count of such pixels) before the image, and the sanity filter rejects the
image (``non_finite_pixels`` > 0). The record is written first, so an image on disk always has its record.
"""

from __future__ import annotations

import json
import os

import torch

from scripts.common.files import atomic_write_text
from scripts.sampling.writer import SampleWriter

NON_FINITE_SUFFIX = ".nonfinite.json"


def non_finite_pixels(images_dir: str, name: str) -> int:
    """How many pixels of image ``name`` were not finite when sampled (0 without a record)."""
    path = os.path.join(images_dir, name + NON_FINITE_SUFFIX)
    if not os.path.isfile(path):
        return 0
    with open(path, encoding="utf-8") as f:
        return int(json.load(f)["non_finite_pixels"])


class DatasetWriter(SampleWriter):
    """``SampleWriter`` that records and repairs non-finite pixels instead of refusing the image."""

    def write_outputs(self, job: dict, image: torch.Tensor) -> str:
        bad = int((~torch.isfinite(image)).sum())
        record = os.path.join(self.output_dir, job["name"] + NON_FINITE_SUFFIX)
        if bad:
            atomic_write_text(record, json.dumps({"non_finite_pixels": bad}) + "\n")
            image = torch.nan_to_num(image.float(), nan=0.0, posinf=1.0, neginf=0.0)
        elif os.path.isfile(record):  # a record of an earlier, interrupted attempt at this image
            os.remove(record)
        return super().write_outputs(job, image)
