"""DICOM in and out: reading hospital radiographs, and writing generated images as synthetic Secondary Capture.

Reading (``read_radiograph``) follows the standard's display pipeline with pydicom's own functions: the
Modality LUT (rescale slope / intercept, or a Modality LUT Sequence), then the VOI LUT (a VOI LUT Sequence
or the first Window Center / Width), mapped onto [0, 1] by the output range of that VOI transform;
without a VOI transform the image's own minimum and maximum are stretched to [0, 1]. MONOCHROME1 images
are inverted so that 1 is always white (bone). Rows and columns stay as stored: the top-left pixel of the
file is the top-left pixel of the result.

Writing (``synthetic_secondary_capture``) builds a Secondary Capture Image (highdicom) whose Conversion
Type is ``SYN`` (synthetic image), Image Type ``DERIVED\\SECONDARY``, MONOCHROME2, 16 bits: the model's
float output in [0, 1] is stored as round(65535 · x), 256 times finer than an 8-bit PNG (a PNG value is
round(255 · x)), with a full-range window for viewers.
"""

from __future__ import annotations

import datetime
import json
import os

import numpy as np

from scripts.common.errors import CxrLdmError

#: Modalities whose objects are projection radiographs.
RADIOGRAPH_MODALITIES = ("CR", "DX", "RG", "DR", "OT")
#: Secondary Capture Image Storage.
SECONDARY_CAPTURE_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.7"
#: Largest stored value of a written image (16 bits).
STORED_MAX = 65535
SYNTHETIC_PATIENT_NAME = "SYNTHETIC^CXR-LDM"


class DicomError(CxrLdmError, ValueError):
    """A DICOM file that cannot be read as one radiograph; the message says why and, where it can, the fix."""


def read_dataset(path: str, header_only: bool = False):
    """The pydicom dataset of ``path`` (without the pixel data when ``header_only``)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(os.fspath(path), stop_before_pixels=header_only)
    except (InvalidDicomError, OSError, ValueError, EOFError) as error:
        raise DicomError(f"'{path}' is not a readable DICOM file ({type(error).__name__}).") from None


def _pixels(ds, path: str) -> np.ndarray:
    if "PixelData" not in ds:
        raise DicomError(f"'{path}' has no pixel data (a DICOM object without an image).")
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise DicomError(f"'{path}' is a multi-frame object ({ds.NumberOfFrames} frames), not one radiograph.")
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise DicomError(f"'{path}' is a colour image ({ds.get('PhotometricInterpretation')}), not a radiograph.")
    try:
        return ds.pixel_array
    except (RuntimeError, NotImplementedError, ValueError) as error:
        syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
        if syntax is not None and syntax.is_compressed:
            raise DicomError(
                f"'{path}' is compressed ({syntax.name}) and no installed decoder reads it: "
                "pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg (or python-gdcm)."
            ) from None
        raise DicomError(f"'{path}' pixel data cannot be decoded ({str(error).splitlines()[0]}).") from None


def read_radiograph(path: str, view_positions: tuple[str, ...] | None = None) -> np.ndarray:
    """One radiograph of a DICOM file as float64 (H, W) in [0, 1], 1 = white, rows as stored.

    Args:
        path: DICOM file.
        view_positions: when given, the View Position tag (if present) must be one of these (e.g.
            ``("PA", "AP")`` for frontal views).

    Raises:
        DicomError: unreadable file, no pixel data, multi-frame, colour, not a radiograph (Modality), another
            view, or compressed data without an installed decoder.
    """
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    path = os.fspath(path)
    ds = read_dataset(path)
    modality = str(ds.get("Modality", "")).upper()
    if modality and modality not in RADIOGRAPH_MODALITIES:
        raise DicomError(f"'{path}' is not a radiograph (Modality {modality}).")
    view = str(ds.get("ViewPosition", "") or "").upper()
    if view_positions and view and view not in {v.upper() for v in view_positions}:
        raise DicomError(f"'{path}' is a {view} view, not one of {list(view_positions)}.")
    values = apply_modality_lut(_pixels(ds, path), ds).astype(np.float64)
    has_voi = "VOILUTSequence" in ds or ("WindowCenter" in ds and "WindowWidth" in ds)
    if has_voi:
        values = apply_voi_lut(values, ds, index=0).astype(np.float64)
        # the VOI transform's own output range (what its darkest and brightest inputs map to)
        extremes = apply_voi_lut(np.array([[-1e12, 1e12]]), ds, index=0).astype(np.float64)
        low, high = float(extremes.min()), float(extremes.max())
    else:
        low, high = float(values.min()), float(values.max())
    image = np.clip((values - low) / max(high - low, 1e-12), 0.0, 1.0)
    if str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1":
        image = 1.0 - image
    return image


def is_dicom(path: str) -> bool:
    """Whether ``path`` looks like a DICOM file (the ``.dcm`` extension or the ``DICM`` preamble marker)."""
    path = os.fspath(path)
    if path.lower().endswith((".dcm", ".dicom")):
        return True
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def run_uids(output_dir: str) -> tuple[str, str]:
    """(Study, Series) Instance UIDs of the images written to ``output_dir``: one study and one series per
    output folder, the same on every rank and when a run is resumed."""
    from pydicom.uid import generate_uid

    folder = os.path.abspath(os.fspath(output_dir))
    return generate_uid(entropy_srcs=[folder, "study"]), generate_uid(entropy_srcs=[folder, "series"])


def synthetic_secondary_capture(
    image: np.ndarray,
    study_uid: str,
    series_uid: str,
    name: str,
    settings: dict,
    instance_number: int,
    software_version: str,
):
    """A synthetic Secondary Capture dataset of ``image`` (H, W) in [0, 1].

    Args:
        image: the generated image, float in [0, 1], row 0 at the top.
        study_uid / series_uid: the run's UIDs (``run_uids``).
        name: the image's unique file stem; its SOP Instance UID and synthetic patient id derive from it.
        settings: what made the image (prompt, negative prompt, seed, steps, guidance, scheduler, ...),
            written as JSON into Image Comments; the prompt also goes into Series/Image descriptions.
        instance_number: the image's number in the series (1-based).
        software_version: the bundle's version.
    """
    import highdicom as hd
    from pydicom.uid import generate_uid

    pixels = np.round(np.clip(np.asarray(image, dtype=np.float64), 0.0, 1.0) * STORED_MAX).astype(np.uint16)
    now = datetime.datetime.now()
    identifier = generate_uid(prefix=None, entropy_srcs=[study_uid, name])
    prompt = str(settings.get("prompt", ""))
    ds = hd.sc.SCImage(
        pixel_array=pixels,
        photometric_interpretation=hd.PhotometricInterpretationValues.MONOCHROME2,
        bits_allocated=16,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        study_instance_uid=study_uid,
        series_instance_uid=series_uid,
        series_number=1,
        sop_instance_uid=generate_uid(entropy_srcs=[study_uid, name]),
        instance_number=int(instance_number),
        manufacturer="cxr-ldm",
        patient_id=f"SYN-{identifier.split('.')[-1][:16]}",
        patient_name=SYNTHETIC_PATIENT_NAME,
        patient_sex="O",
        study_date=now.date(),
        study_time=now.time().replace(microsecond=0),
        patient_orientation=("L", "F"),  # displayed like a PA film: columns run to the patient's left, rows to the feet
        series_description="Synthetic chest X-ray (cxr-ldm)",
    )
    ds.ConversionType = "SYN"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.Modality = "OT"
    ds.SoftwareVersions = str(software_version)
    ds.ManufacturerModelName = "cxr-ldm latent diffusion"
    ds.BurnedInAnnotation = "NO"
    ds.ImageComments = "SYNTHETIC IMAGE generated by cxr-ldm. " + json.dumps(settings, sort_keys=True, default=str)
    ds.DerivationDescription = f"Generated from text by cxr-ldm {software_version}: {prompt}"[:1024]
    ds.WindowCenter = STORED_MAX / 2
    ds.WindowWidth = STORED_MAX + 1
    return ds
