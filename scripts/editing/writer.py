"""Writing edits: the edited image, its difference map and side-by-side figure, and the manifest row.

Per edit ``<name>``, in ``output_dir``:

- ``<name>.<png|jpg|pt|dcm>``: the edited image (the formats of inference), written last, so that it
  exists only when the edit's other files do (a re-run skips it);
- ``difference/<name>.png``: |edited − input| (``scripts.editing.figures.difference_map``);
- ``comparison/<name>.png``: input | edited | difference (``scripts.editing.figures.comparison_figure``);
- a row of ``manifest.csv`` (``EDIT_MANIFEST_COLUMNS``).

Every file is written through a temporary name, as in inference.
"""

from __future__ import annotations

import os

import torch
from PIL import Image

from scripts.common.files import atomic_path
from scripts.editing.figures import comparison_figure, difference_map
from scripts.sampling.writer import MANIFEST_COLUMNS, SampleWriter

EDIT_MANIFEST_COLUMNS = (
    "file",
    "source_image",
    "edit_mask",
    "keep_mask",
    "strength",
    "denoising_steps",
    "feather_pixels",
    "image_size",
    "difference_file",
    "comparison_file",
    *MANIFEST_COLUMNS[1:],
)


def _save_png(picture: Image.Image, path: str) -> None:
    with atomic_path(path) as temporary:
        picture.save(temporary, format="PNG")


class EditWriter(SampleWriter):
    """Ignite handler of the editing workflow: the files of each edit and its manifest row.

    Args: those of ``scripts.sampling.writer.SampleWriter``; ``jobs`` are edit jobs
    (``scripts.editing.jobs.edit_jobs``).
    """

    columns = EDIT_MANIFEST_COLUMNS

    def write_outputs(self, job: dict, image: torch.Tensor) -> str:
        source = job["input_image"]
        _save_png(
            Image.fromarray(difference_map(image, source), mode="L"),
            os.path.join(self.output_dir, job["difference_file"]),
        )
        edit_region = job["edit_region"] if job.get("edit_mask") else None
        keep_region = job["keep_region"] if job.get("keep_mask") else None
        _save_png(
            comparison_figure(source, image, edit_region, keep_region),
            os.path.join(self.output_dir, job["comparison_file"]),
        )
        return super().write_outputs(job, image)
