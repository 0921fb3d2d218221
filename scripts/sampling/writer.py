"""Writing generated images and their manifest, atomically and resumably.

Each image goes to ``<output_dir>/<name>.<png|jpg|pt|dcm>`` through a temporary file that is renamed once
complete, so an interrupted run never leaves a half-written image under a final name. ``OUTPUT_FORMATS`` maps
each format name to its extension, writer function and options: a new format is one function and one entry.
``manifest.csv`` lists one row per image (file, prompt, negative prompt, seed, steps, guidance, scheduler, model
version, null prompt, precision, scale factor, the fingerprints of the weights, and the speed switches that change
only float rounding: compile, channels-last, batched guidance and batch size). Under ``torchrun`` every rank writes its
own ``manifest.rank<r>.csv`` and rank 0 merges them into ``manifest.csv`` at the end (``finalize_manifest``).
Whatever happened to a run, the merge also adds rows for finished images missing from every manifest, so
the manifest always matches the images.
"""

from __future__ import annotations

import csv
import glob
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from scripts.common.distributed import barrier, is_main_process, rank_and_world
from scripts.common.files import atomic_path

MANIFEST = "manifest.csv"
MANIFEST_COLUMNS = (
    "file",
    "prompt",
    "negative_prompt",
    "seed",
    "num_inference_steps",
    "guidance_scale",
    "scheduler",
    "model_version",
    "null_prompt",
    "autocast_dtype",
    "guidance_interval",
    "cache_interval",
    "scale_factor",
    "autoencoder_weights",
    "diffusion_weights",
    "text_encoder",
    "compile",
    "channels_last",
    "batched_guidance",
    "batch_size",
)


@dataclass(frozen=True)
class OutputFormat:
    """One way of writing a generated image to a file.

    Attributes:
        extension: of the file name, with its dot (``".png"``).
        write: ``write(image, file, job, **options)`` writes ``image`` (1, H, W), float32 on the CPU in [0, 1],
            row 0 the top of the picture, to ``file`` (a temporary name in the image's final folder, renamed
            once written); ``job`` is the image's job (name, settings, run UIDs), empty when there is none.
        options: keyword arguments passed to ``write``.
        run_uids: whether the images of an output folder share a study and a series: ``SampleWriter`` then puts
            the run's ``study_uid`` / ``series_uid`` in every job.
    """

    extension: str
    write: Callable[..., None]
    options: Mapping = field(default_factory=dict)
    run_uids: bool = False


def write_8bit(image: torch.Tensor, file: str, job: dict, **save_options) -> None:
    """8-bit grayscale picture, round(255·x), saved by PIL with ``save_options`` (``format``, ``quality``...)."""
    pixels = (image[0].numpy() * 255.0).round().astype(np.uint8)
    Image.fromarray(pixels, mode="L").save(file, **save_options)


def write_16bit(image: torch.Tensor, file: str, job: dict) -> None:
    """16-bit grayscale PNG, round(65535·x): 256 times finer steps than ``write_8bit``."""
    pixels = (image[0].numpy().astype(np.float64) * 65535.0).round().astype(np.uint16)
    Image.fromarray(pixels).save(file, format="PNG")


def write_tensor(image: torch.Tensor, file: str, job: dict) -> None:
    """The float tensor itself (``torch.save``; loads without MONAI)."""
    torch.save(image.clone(), file)


def write_secondary_capture(image: torch.Tensor, file: str, job: dict) -> None:
    """Synthetic Secondary Capture DICOM with 16-bit pixels (``scripts.data.dicom``); needs the job's name,
    settings and the run's ``study_uid`` / ``series_uid``. Instance numbers count per output folder."""
    folder = os.path.dirname(os.path.abspath(file))
    _secondary_capture(image[0].numpy(), job, folder).save_as(file, enforce_file_format=True)


#: output format name (``--output_format``) -> how its images are written
OUTPUT_FORMATS: dict[str, OutputFormat] = {
    "png": OutputFormat(".png", write_8bit, {"format": "PNG"}),
    "png16": OutputFormat(".png", write_16bit),
    "jpg": OutputFormat(".jpg", write_8bit, {"format": "JPEG", "quality": 95}),
    "pt": OutputFormat(".pt", write_tensor),
    "dcm": OutputFormat(".dcm", write_secondary_capture, run_uids=True),
}


def get_output_format(name: str) -> OutputFormat:
    """The registered ``OutputFormat`` called ``name`` (case-insensitive); a one-line error names the choices."""
    key = str(name).lower()
    if key not in OUTPUT_FORMATS:
        raise ValueError(f"output_format must be one of {sorted(OUTPUT_FORMATS)}, got {name!r}.")
    return OUTPUT_FORMATS[key]


def existing_image(output_dir: str, name: str) -> str | None:
    """Path of the finished image ``name`` in ``output_dir`` in any output format, or None."""
    for output_format in OUTPUT_FORMATS.values():
        path = os.path.join(output_dir, name + output_format.extension)
        if os.path.isfile(path):
            return path
    return None


def write_image(image: torch.Tensor, path: str, output_format: str, job: dict | None = None) -> str:
    """Write one image (1, H, W) in [0, 1] to ``path`` atomically in a registered ``output_format``.

    Row 0 is the top of the picture. ``png``/``jpg`` are 8-bit grayscale (round(255·x)), ``png16`` 16-bit
    (round(65535·x)); ``pt`` is the float tensor itself; ``dcm`` is a synthetic Secondary Capture DICOM with
    16-bit pixels (``scripts.data.dicom``), which needs the image's ``job`` (its name, settings and the run's
    ``study_uid`` / ``series_uid``).
    """
    if image.ndim != 3 or image.shape[0] != 1:
        raise ValueError(f"expected an image of shape (1, H, W), got {tuple(image.shape)}.")
    if not torch.isfinite(image).all():
        raise ValueError(f"refusing to write '{path}': the image holds NaN or inf values.")
    if hasattr(image, "as_tensor"):  # a MONAI MetaTensor: a .pt file must load without MONAI
        image = image.as_tensor()
    image = image.detach().float().cpu().clamp(0.0, 1.0)
    writer = get_output_format(output_format)
    with atomic_path(path) as temporary:
        writer.write(image, temporary, job or {}, **writer.options)
    return path


def _secondary_capture(pixels: np.ndarray, job: dict, folder: str):
    from scripts.data.dicom import next_instance_number, synthetic_secondary_capture

    study_uid, series_uid = job["study_uid"], job["series_uid"]  # one study and series per output folder
    settings = {k: job[k] for k in MANIFEST_COLUMNS if k in job and k != "file"}
    return synthetic_secondary_capture(
        pixels, study_uid, series_uid, name=str(job.get("name", "")), settings=settings,
        instance_number=next_instance_number(folder),
        software_version=str(job.get("model_version", "")),
    )  # fmt: skip


def _write_csv(path: str, rows: Sequence[dict], columns: Sequence[str] = MANIFEST_COLUMNS) -> None:
    with atomic_path(path) as temporary, open(temporary, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def read_manifest(path: str) -> dict[str, dict]:
    """Rows of a manifest file keyed by file name (empty if the file does not exist).

    Rows whose image is not in the manifest's folder (e.g. a line torn by a crash) are dropped.
    """
    if not os.path.isfile(path):
        return {}
    folder = os.path.dirname(path)
    with open(path, newline="", encoding="utf-8") as f:
        return {
            row["file"]: row
            for row in csv.DictReader(f)
            if row.get("file") and None not in row and os.path.isfile(os.path.join(folder, row["file"]))
        }


def manifest_row(job: dict, file_name: str, columns: Sequence[str] = MANIFEST_COLUMNS) -> dict:
    """The manifest row of ``file_name``: ``columns`` of ``job`` (its per-image values over the run's settings)."""
    return {"file": file_name, **{k: job.get(k, "") for k in columns if k != "file"}}


def merge_manifests(
    output_dir: str,
    jobs: Sequence[dict] = (),
    columns: Sequence[str] = MANIFEST_COLUMNS,
    settings: Mapping | None = None,
) -> str:
    """Fold the per-rank manifests, and rows for finished ``jobs`` missing from it, into ``manifest.csv``.

    ``columns``: the manifest's columns (``MANIFEST_COLUMNS`` for text-to-image; editing adds its own);
    ``settings``: the run's image settings, the columns every row shares.
    """
    main = os.path.join(output_dir, MANIFEST)
    rows = read_manifest(main)
    shards = sorted(glob.glob(os.path.join(output_dir, "manifest.rank*.csv")))
    for shard in shards:
        rows.update(read_manifest(shard))
    for job in jobs:
        path = existing_image(output_dir, job["name"])
        if path is not None and os.path.basename(path) not in rows:
            rows[os.path.basename(path)] = manifest_row({**(settings or {}), **job}, os.path.basename(path), columns)
    if rows or os.path.isdir(output_dir):
        os.makedirs(output_dir, exist_ok=True)
        _write_csv(main, sorted(rows.values(), key=lambda row: row["file"]), columns)
    for shard in shards:
        os.remove(shard)
    return main


class SampleWriter:
    """Ignite handler of the sampling evaluator: saves ``engine.state.output["pred"]`` after each batch.

    Args:
        output_dir: folder of the images and ``manifest.csv`` (created on the first write).
        output_format: a name in ``OUTPUT_FORMATS``: ``png`` (8-bit), ``jpg`` (8-bit, quality 95), ``pt`` (float
            tensor in [0, 1]) or ``dcm`` (synthetic Secondary Capture DICOM, 16-bit; one study and series per
            output folder).
        jobs: all jobs of the run (``scripts.sampling.jobs.sampling_jobs``); at the start of a run, finished
            images missing from the manifest (a run killed between image and manifest) are added back.
        settings: the run's image settings (``scripts.sampling.jobs.image_settings``): the manifest's and the
            DICOM header's shared values.

    Subclasses change ``columns`` (the manifest's) and ``write_outputs`` (the files of one job).
    """

    columns: tuple[str, ...] = MANIFEST_COLUMNS

    def __init__(
        self, output_dir: str, output_format: str = "png", jobs: Sequence[dict] = (), settings: Mapping | None = None
    ) -> None:
        get_output_format(output_format)
        output_format = str(output_format).lower()
        self.output_dir = os.fspath(output_dir)
        self.output_format = output_format
        self.jobs = list(jobs)
        self.settings = dict(settings or {})
        self.run_uids: tuple[str, str] | None = None

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def _manifest_path(self) -> str:
        rank, world = rank_and_world()
        return os.path.join(self.output_dir, MANIFEST if world == 1 else f"manifest.rank{rank}.csv")

    def started(self, engine=None) -> None:
        os.makedirs(self.output_dir, exist_ok=True)
        if get_output_format(self.output_format).run_uids:
            from scripts.data.dicom import run_uids

            self.run_uids = run_uids(self.output_dir)
        if rank_and_world()[1] == 1:
            merge_manifests(self.output_dir, self.jobs, self.columns, self.settings)

    def write_outputs(self, job: dict, image: torch.Tensor) -> str:
        """Write the files of one finished ``job`` (its image (1, H, W)); return the image's file name.

        The image is written last: its existence marks the job done (``existing_image``).
        """
        file_name = job["name"] + get_output_format(self.output_format).extension
        write_image(image, os.path.join(self.output_dir, file_name), self.output_format, job)
        return file_name

    def __call__(self, engine) -> None:
        images = engine.state.output["pred"]
        batch = engine.state.batch
        rows = []
        for i, image in enumerate(images):
            job = {**self.settings, **{key: values[i] for key, values in batch.items()}}
            if self.run_uids is not None:
                job["study_uid"], job["series_uid"] = self.run_uids
            rows.append(manifest_row(job, self.write_outputs(job, image), self.columns))
        # Appending keeps the cost per batch constant for large runs; a line torn by a crash is dropped
        # (and rebuilt from the finished images) when the manifests are merged.
        path = self._manifest_path()
        new_file = not os.path.isfile(path) or os.path.getsize(path) == 0
        with open(path, "a", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(self.columns), extrasaction="ignore")
            if new_file:
                writer.writeheader()
            writer.writerows(rows)


def finalize_manifest(
    jobs: Sequence[dict],
    output_dir: str,
    columns: Sequence[str] = MANIFEST_COLUMNS,
    settings: Mapping | None = None,
) -> str | None:
    """Last step of a sampling run: once every rank is done, rank 0 writes the merged ``manifest.csv``
    (``merge_manifests``' arguments).

    Every rank calls it, whether or not it had images left to generate, so the barrier cannot hang.
    """
    barrier()
    if is_main_process() and os.path.isdir(output_dir):
        return merge_manifests(output_dir, jobs, columns, settings)
    return None
