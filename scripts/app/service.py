"""The app's two requests, generate and edit, run through the bundle's own pieces.

A request is checked by the command line's checks (``scripts.sampling.settings``,
``scripts.editing.settings``, ``scripts.editing.inputs``), turned into jobs by the command line's job
builders (``sampling_jobs`` / ``edit_jobs``, so an image gets the name, seed and manifest row the command
line would give it), and run by the same engine (``scripts.sampling.engine``), sampler, editor and writers that
``configs/inference.json`` and ``configs/edit.json`` wire together. Only the settings a request may change (steps,
guidance, scheduler) differ from the config's sampler or editor, on a copy that shares its networks
(``with_settings``).

Each image is written as PNG (the picture the page shows) and, in ``dicom/``, as the bundle's synthetic
Secondary Capture DICOM of the same float image.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
import torch
from PIL import Image

from scripts.common.errors import CxrLdmError
from scripts.common.files import atomic_path
from scripts.data.dicom import run_uids
from scripts.data.limits import MAX_IMAGE_PIXELS, InputLimits
from scripts.editing.editor import TextGuidedEditor
from scripts.editing.inputs import LoadEditInputs, check_edit_inputs
from scripts.editing.jobs import edit_jobs, edit_rows
from scripts.editing.settings import check_edit_settings
from scripts.editing.writer import EDIT_MANIFEST_COLUMNS, EditWriter
from scripts.networks.schedulers import build_scheduler
from scripts.sampling.engine import run_jobs
from scripts.sampling.jobs import image_settings, manifest_settings, pending_jobs, prompt_rows, sampling_jobs
from scripts.sampling.sampler import GuidedLatentSampler
from scripts.sampling.settings import SettingsError, as_int, check_settings
from scripts.sampling.writer import (
    MANIFEST,
    MANIFEST_COLUMNS,
    SampleWriter,
    existing_image,
    finalize_manifest,
    read_manifest,
    write_image,
)

#: folder (inside an output folder) of the DICOM copies
DICOM_DIR = "dicom"
#: folder (inside an output folder set by the user) of the edits, as configs/edit.json's ``output/edits``
EDITS_DIR = "edits"
#: folder (inside an output folder) of the masks painted in the page
MASKS_DIR = "masks"


class AppRequestError(CxrLdmError, ValueError):
    """A request of the app that cannot be run (the message names the field and the fix)."""


class DicomCopy:
    """Writer mixin: a synthetic Secondary Capture DICOM of each image in ``dicom/``, written before the image
    (whose existence marks a job done), all images of one output folder in one study and series."""

    def started(self, engine=None) -> None:
        super().started(engine)
        self.run_uids = run_uids(os.path.join(self.output_dir, DICOM_DIR))

    def write_outputs(self, job: dict, image: torch.Tensor) -> str:
        write_image(image, dicom_path(self.output_dir, job), "dcm", job)
        return super().write_outputs(job, image)


class AppSampleWriter(DicomCopy, SampleWriter):
    """``SampleWriter`` plus a DICOM copy of each image."""


class AppEditWriter(DicomCopy, EditWriter):
    """``EditWriter`` plus a DICOM copy of each edited image."""


def dicom_path(output_dir: str, job: dict) -> str:
    return os.path.join(output_dir, DICOM_DIR, job["name"] + ".dcm")


class AppService:
    """What the app's page asks for, without the page: generate images, edit a radiograph.

    Args:
        sampler: the config's ``sampler`` (a ``GuidedLatentSampler`` with the networks loaded).
        editor: the config's ``editor`` (``configs/edit.json``: a ``TextGuidedEditor`` over ``sampler``).
        network: the config's diffusion UNet.
        noise_schedule: the config's ``noise_schedule`` (a request's scheduler is built over it).
        model_identity: the config's ``model_identity`` (version and weights fingerprints; hashed into names).
        device: the config's device.
        output_format: the config's; the app writes PNG (and a DICOM copy), so it must be ``png``.
        batch_size: images per UNet call, as on the command line.
        image_size: side of generated and edited images (pixels).
        scale_factor: the config's (checked as on the command line).
        max_images: most images one request may ask for (>= 1).
        max_image_pixels: most pixels an uploaded image may declare (checked before it is decoded).
        max_upload_mb: most megabytes an uploaded file may have.
    """

    def __init__(
        self,
        sampler: GuidedLatentSampler,
        editor: TextGuidedEditor,
        network: torch.nn.Module,
        noise_schedule: dict,
        model_identity: dict,
        device,
        output_format: str = "png",
        batch_size: int = 1,
        image_size: int = 512,
        scale_factor: float = 0.3,
        max_images: int = 8,
        max_image_pixels: int = MAX_IMAGE_PIXELS,
        max_upload_mb: float | None = None,
    ) -> None:
        if str(output_format).lower() != "png":
            raise SettingsError(
                f"--output_format {output_format!r}: the app writes PNG and a DICOM copy of every image; leave "
                "--output_format at png."
            )
        self.sampler = sampler
        self.editor = editor
        self.network = network
        self.noise_schedule = dict(noise_schedule)
        self.model_identity = dict(model_identity)
        self.device = device
        self.batch_size = as_int(batch_size, "--batch_size", 1)
        self.image_size = as_int(image_size, "--image_size", 8)
        self.scale_factor = scale_factor
        self.max_images = as_int(max_images, "--max_images", 1)
        self.input_limits = InputLimits(
            max_pixels=as_int(max_image_pixels, "--max_image_pixels", 1),
            max_megabytes=None if max_upload_mb is None else float(max_upload_mb),
        )

    # -- checks ------------------------------------------------------------------------------------
    def check_request(self, num_images, num_inference_steps, guidance_scale, scheduler_name) -> dict:
        """The request's sampling settings, checked as the command line checks its own; a ``SettingsError``
        (one line, naming the field and the fix) for a bad one."""
        check_settings(
            "png", num_inference_steps, guidance_scale, self.batch_size, num_images, None, self.scale_factor,
            scheduler_name=scheduler_name,
        )  # fmt: skip
        num_images = as_int(num_images, "number of images", 1)
        steps = as_int(num_inference_steps, "--num_inference_steps", 1)
        most_steps = int(self.noise_schedule.get("num_train_timesteps", 1000))
        if steps > most_steps:
            raise SettingsError(
                f"--num_inference_steps must be <= {most_steps} (the model's noise schedule has {most_steps} steps), "
                f"got {steps}."
            )
        if num_images > self.max_images:
            raise SettingsError(
                f"number of images must be <= {self.max_images}, got {num_images}: ask for fewer, or start the app "
                "with a larger --max_images."
            )
        return {
            "num_images": num_images,
            "num_inference_steps": steps,
            "guidance_scale": float(guidance_scale),
            "scheduler": str(scheduler_name).lower(),
        }

    def _inferer(self, inferer, request: dict):
        """``inferer`` (the config's sampler or editor) with the request's scheduler, steps and guidance, and a
        progress bar the page follows (``gr.Progress(track_tqdm=True)``)."""
        return inferer.with_settings(
            scheduler=build_scheduler(request["scheduler"], **self.noise_schedule),
            num_inference_steps=request["num_inference_steps"],
            guidance_scale=request["guidance_scale"],
            progress=True,
        )

    def _image_settings(self, inferer, **extra) -> dict:
        """The image settings of a request's ``inferer``, as ``configs/inference.json``'s ``image_settings``."""
        return image_settings(inferer, self.model_identity, "png", **extra)

    # -- requests ----------------------------------------------------------------------------------
    def generate(
        self,
        output_dir: str,
        prompt: str,
        negative_prompt: str = "",
        seed: int = 42,
        num_images: int = 1,
        num_inference_steps: int = 20,
        guidance_scale: float = 7.0,
        scheduler_name: str = "unipc_karras",
    ) -> list[dict]:
        """Generate ``num_images`` images of ``prompt`` (seeds ``seed, seed+1, ...``) into ``output_dir``.

        Returns one dict per image: ``image`` (PNG path, 8-bit grey ``image_size``²), ``dicom`` (path) and
        ``row`` (its manifest row: file, prompt, seed, steps, guidance, scheduler, ...). Images already in
        ``output_dir`` (same prompt, seed and settings) are not made again.
        """
        request = self.check_request(num_images, num_inference_steps, guidance_scale, scheduler_name)
        sampler = self._inferer(self.sampler, request)
        rows = prompt_rows(prompt, negative_prompt, None, seed, request["num_images"])
        settings = self._image_settings(sampler)
        jobs = sampling_jobs(rows, settings)
        self._run(jobs, output_dir, sampler, settings, AppSampleWriter, MANIFEST_COLUMNS)
        return self._results(jobs, output_dir)

    def edit(
        self,
        output_dir: str,
        image: str,
        prompt: str,
        negative_prompt: str = "",
        edit_mask: str | None = None,
        keep_mask: str | None = None,
        strength: float = 0.6,
        seed: int = 42,
        num_inference_steps: int = 20,
        guidance_scale: float = 7.0,
        scheduler_name: str = "unipc_karras",
    ) -> dict:
        """Edit the radiograph file ``image`` (PNG/JPEG/DICOM) as configs/edit.json does, into ``output_dir``.

        ``edit_mask`` / ``keep_mask``: mask files (white = inside) or None. Returns ``image``, ``dicom``,
        ``row`` as ``generate`` does, plus ``comparison`` and ``difference`` (paths of the figures).
        """
        request = self.check_request(1, num_inference_steps, guidance_scale, scheduler_name)
        check_edit_settings(strength, self.editor.feather_pixels)
        editor = self._inferer(self.editor, request)
        settings = self._image_settings(editor, image_size=self.image_size)
        jobs = edit_jobs(
            edit_rows(image=image),
            prompt=prompt,
            negative_prompt=negative_prompt,
            edit_mask=edit_mask,
            keep_mask=keep_mask,
            strength=strength,
            seed=seed,
            settings=settings,
        )
        check_edit_inputs(jobs, self.image_size, self.input_limits)
        transform = LoadEditInputs(self.image_size, self.input_limits)
        self._run(jobs, output_dir, editor, settings, AppEditWriter, EDIT_MANIFEST_COLUMNS, transform)
        (result,) = self._results(jobs, output_dir)
        job = jobs[0]
        result["comparison"] = os.path.join(output_dir, job["comparison_file"])
        result["difference"] = os.path.join(output_dir, job["difference_file"])
        return result

    def _run(self, jobs, output_dir, inferer, settings, writer_class, columns, transform=None) -> None:
        """Make the ``jobs`` (named with the image ``settings``) whose image or DICOM copy is not in ``output_dir``
        yet, then write the manifest."""
        settings = manifest_settings(settings, inferer, self.batch_size)
        missing_copy = [job for job in jobs if not os.path.isfile(dicom_path(output_dir, job))]
        names = {job["name"] for job in pending_jobs(jobs, output_dir, 0, 1) + missing_copy}
        pending = [job for job in jobs if job["name"] in names]
        if pending:
            writer = writer_class(output_dir, "png", jobs, settings)
            run_jobs(pending, self.network, inferer, writer, self.batch_size, self.device, transform)
        finalize_manifest(jobs, output_dir, columns, settings)

    @staticmethod
    def _results(jobs, output_dir) -> list[dict]:
        rows = read_manifest(os.path.join(output_dir, MANIFEST))
        results = []
        for job in jobs:
            image = existing_image(output_dir, job["name"])
            results.append({"image": image, "dicom": dicom_path(output_dir, job), "row": rows[os.path.basename(image)]})
        return results


def save_mask(mask: np.ndarray, folder: str, what: str) -> str:
    """Save a painted mask (H, W) of bools as a white-on-black PNG in ``folder``; its path.

    The name is the mask's content hash, so the same mask is saved once and an edit's name stays the same.
    """
    pixels = np.asarray(mask, dtype=bool).astype(np.uint8) * 255
    digest = hashlib.sha256(f"{pixels.shape}".encode() + pixels.tobytes()).hexdigest()[:16]
    name = f"{what}_{digest}.png"
    path = os.path.join(folder, MASKS_DIR, name)
    if not os.path.isfile(path):
        with atomic_path(path) as temporary:
            Image.fromarray(pixels, mode="L").save(temporary, format="PNG")
    return path
