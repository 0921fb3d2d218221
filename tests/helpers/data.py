"""Test helpers for data: a small synthetic MIMIC-format tree and its prepared datalist.

Usable by every test module (``from helpers.data import make_prepared_synthetic``)::

    dataset_dir = make_prepared_synthetic(tmp_path, num_subjects=20, image_size=64)
    parser = stage_parser("diffusion", dataset_dir=str(dataset_dir))

or the session-wide fixture ``prepared_synthetic_dir`` (conftest.py), which prepares 20 subjects at 64 px
once per test session. Nothing is downloaded; 20 subjects take about a second.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from scripts.data.prepare import prepare
from scripts.data.synthetic import generate


def make_synthetic_mimic(
    tmp_dir, num_subjects: int = 12, image_size: int = 80, seed: int = 0, reports: str = "tree"
) -> Path:
    """Raw synthetic MIMIC-CXR-JPG-format tree in ``tmp_dir/raw`` (images ``image_size`` px wide); returns its root."""
    root = Path(tmp_dir) / "raw"
    generate(str(root), num_subjects=num_subjects, seed=seed, image_size=image_size, reports=reports)
    return root


def make_prepared_synthetic(tmp_dir, num_subjects: int = 20, image_size: int = 64, seed: int = 0) -> Path:
    """Prepared synthetic data (PA images with short side ``image_size``, ``datalist.json``) in ``tmp_dir/prepared``.

    The raw images are drawn a quarter larger than ``image_size`` so that preparation really resizes them.
    With ``num_subjects >= 3`` every split (training / validation / test) is non-empty.
    Returns the dataset folder (the value for the config key ``dataset_dir``).
    """
    raw = make_synthetic_mimic(tmp_dir, num_subjects=num_subjects, image_size=round(image_size * 1.25), seed=seed)
    dataset_dir = Path(tmp_dir) / "prepared"
    prepare(str(raw), str(dataset_dir), short_side=image_size, num_workers=0, progress=False)
    return dataset_dir


def load_datalist(dataset_dir) -> dict:
    """The prepared ``datalist.json`` as a dict of split name → items."""
    return json.loads((Path(dataset_dir) / "datalist.json").read_text())


def write_dx(path, pixels=None, photometric="MONOCHROME2", bits=12, view="PA", modality="DX", frames=1,
             syntax=None, **attributes) -> str:  # fmt: skip
    """A Digital X-Ray object written with pydicom: ``pixels`` (H, W) stored values (None: no Pixel Data, 48 × 64)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax or ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.PatientID = generate_uid(), generate_uid(), "P1"
    ds.Modality, ds.ViewPosition, ds.PhotometricInterpretation = modality, view, photometric
    ds.SamplesPerPixel, (ds.Rows, ds.Columns) = 1, (pixels.shape if pixels is not None else (48, 64))
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    if frames > 1:
        ds.NumberOfFrames = frames
    for name, value in attributes.items():
        setattr(ds, name, value)
    if pixels is not None:
        ds.PixelData = np.repeat(pixels[None], frames, axis=0).astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return str(path)


def dciodvfy_findings(path) -> list[str]:
    """The error and warning lines of dicom3tools' IOD validator ``dciodvfy`` on ``path`` (a missing validator
    fails: the CI installs it)."""
    import shutil
    import subprocess

    assert shutil.which("dciodvfy"), "dciodvfy is missing: apt-get install -y dicom3tools (.ci/run does)."
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith(("Error", "Warning"))]
