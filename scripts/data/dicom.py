"""DICOM in and out: reading hospital radiographs, and writing generated images as synthetic Secondary Capture.

Reading (``read_radiograph``) follows the standard's display pipeline with pydicom's own functions: the
Modality LUT (rescale slope / intercept, or a Modality LUT Sequence), then the VOI transform, mapped onto
[0, 1] by that transform's own output range: a VOI LUT Sequence (preferred when a window is present too)
by 0 .. 2^n - 1 of its LUT Descriptor's n bits, or the first Window Center / Width by the window's output
range; without a VOI transform the image's own minimum and maximum are stretched to [0, 1]. MONOCHROME1
images, and MONOCHROME2 images with Presentation LUT Shape INVERSE, are inverted so that 1 is always white
(bone). Rows and columns stay as stored: the top-left pixel of the file is the top-left pixel of the result.

Writing (``synthetic_secondary_capture``) builds a Secondary Capture Image (highdicom) whose Conversion
Type is ``SYN`` (synthetic image), Image Type ``DERIVED\\SECONDARY``, MONOCHROME2, 16 bits: the model's
float output in [0, 1] is stored as round(65535 · x), 256 times finer than an 8-bit PNG (a PNG value is
round(255 · x)), with a full-range window for viewers. Text is UTF-8 (Specific Character Set ``ISO_IR 192``),
so prompts in any script round-trip and read as typed (the settings' JSON keeps them unescaped); Instance
Numbers are unique within an output folder's series (``next_instance_number``). Body Part Examined is
``CHEST``; a chest is unpaired, so Laterality is absent; Study ID derives from the Study Instance UID. The
objects pass dicom3tools' ``dciodvfy`` without an error or warning.

Reading checks the pixels Rows × Columns declare, and the inflated size of a deflated data set, against
``scripts.data.limits.InputLimits`` before decoding.
"""

from __future__ import annotations

import datetime
import json
import os
import zlib

import numpy as np

from scripts.common.errors import CxrLdmError
from scripts.data.limits import InputLimits, InputTooLargeError, check_pixel_count

#: Modalities whose objects are projection radiographs.
RADIOGRAPH_MODALITIES = ("CR", "DX", "RG", "DR", "OT")
#: Secondary Capture Image Storage.
SECONDARY_CAPTURE_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.7"
#: Largest stored value of a written image (16 bits).
STORED_MAX = 65535
SYNTHETIC_PATIENT_NAME = "SYNTHETIC^CXR-LDM"
#: Specific Character Set of every written object: UTF-8, so prompts in any script survive.
CHARACTER_SET = "ISO_IR 192"
#: Body Part Examined (0018,0015) of every written image: the defined term of a chest radiograph.
BODY_PART = "CHEST"
#: Hidden file in an output folder holding the last Instance Number given out in its series.
INSTANCE_COUNTER = ".dicom_instance_number"


class DicomError(CxrLdmError, ValueError):
    """A DICOM file that cannot be read as one radiograph; the message says why and, where it can, the fix."""


def read_dataset(path: str, header_only: bool = False, limits: InputLimits | None = None):
    """The pydicom dataset of ``path`` (without the pixel data when ``header_only``).

    A deflated data set (whose whole body is zlib-compressed, and which pydicom inflates in memory at once) is
    first inflated chunk by chunk and refused beyond ``limits.max_decoded_bytes`` (default ``InputLimits()``).
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        _check_inflated_size(path, limits or InputLimits())
        return pydicom.dcmread(os.fspath(path), stop_before_pixels=header_only)
    except (InvalidDicomError, OSError, ValueError, EOFError, zlib.error) as error:
        if isinstance(error, InputTooLargeError):
            raise
        raise DicomError(f"'{path}' is not a readable DICOM file ({type(error).__name__}).") from None


def _check_inflated_size(path: str, limits: InputLimits) -> None:
    """``InputTooLargeError`` when ``path`` is a deflated DICOM file whose data set inflates beyond the limit."""
    import pydicom
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    with open(path, "rb") as file:
        if file.read(132)[128:132] != b"DICM":
            return  # no file meta information: not deflated (pydicom reads such files as plain data sets)
        meta = pydicom.filereader.read_file_meta_info(path)
        if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
            return
        # the data set follows the preamble, the magic and the meta group (its length element is 12 bytes)
        file.seek(132 + 12 + int(meta.FileMetaInformationGroupLength))
        inflater, inflated = zlib.decompressobj(-zlib.MAX_WBITS), 0
        while chunk := inflater.unconsumed_tail or file.read(1 << 20):
            inflated += len(inflater.decompress(chunk, 1 << 24))
            if inflated > limits.max_decoded_bytes:
                raise InputTooLargeError(
                    f"'{path}' is deflated and inflates to more than {limits.max_decoded_bytes / 1e6:.0f} MB, more "
                    f"than an image of {limits.max_pixels / 1e6:g} million pixels needs: export it uncompressed."
                )


def _pixels(ds, path: str, limits: InputLimits) -> np.ndarray:
    if "PixelData" not in ds:
        raise DicomError(f"'{path}' has no pixel data (a DICOM object without an image).")
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise DicomError(f"'{path}' is a multi-frame object ({ds.NumberOfFrames} frames), not one radiograph.")
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise DicomError(f"'{path}' is a colour image ({ds.get('PhotometricInterpretation')}), not a radiograph.")
    check_pixel_count(path, int(ds.get("Columns", 0) or 0), int(ds.get("Rows", 0) or 0), limits)  # before decoding
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


def read_radiograph(
    path: str, view_positions: tuple[str, ...] | None = None, limits: InputLimits | None = None
) -> np.ndarray:
    """One radiograph of a DICOM file as float64 (H, W) in [0, 1], 1 = white, rows as stored.

    Args:
        path: DICOM file.
        view_positions: when given, the View Position tag (if present) must be one of these (e.g.
            ``("PA", "AP")`` for frontal views).
        limits: most pixels (from Rows and Columns, before decoding) and inflated bytes; default ``InputLimits()``.

    Raises:
        DicomError: unreadable file, no pixel data, multi-frame, colour, not a radiograph (Modality), another
            view, or compressed data without an installed decoder.
        InputTooLargeError: more pixels than ``limits`` allow.
    """
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    path = os.fspath(path)
    limits = limits or InputLimits()
    ds = read_dataset(path, limits=limits)
    modality = str(ds.get("Modality", "")).upper()
    if modality and modality not in RADIOGRAPH_MODALITIES:
        raise DicomError(f"'{path}' is not a radiograph (Modality {modality}).")
    view = str(ds.get("ViewPosition", "") or "").upper()
    if view_positions and view and view not in {v.upper() for v in view_positions}:
        raise DicomError(f"'{path}' is a {view} view, not one of {list(view_positions)}.")
    values = apply_modality_lut(_pixels(ds, path, limits), ds).astype(np.float64)
    if _has_voi_lut_sequence(ds, path):
        values, (low, high) = _apply_voi_lut_sequence(values, ds)
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        values = apply_voi_lut(values, ds, index=0, prefer_lut=False).astype(np.float64)
        # the window's own output range (what its darkest and brightest inputs map to)
        with np.errstate(over="ignore"):  # a SIGMOID window's exp overflows at the extremes, as it should
            extremes = apply_voi_lut(np.array([[-1e12, 1e12]]), ds, index=0, prefer_lut=False).astype(np.float64)
        low, high = float(extremes.min()), float(extremes.max())
    else:
        low, high = float(values.min()), float(values.max())
    image = np.clip((values - low) / max(high - low, 1e-12), 0.0, 1.0)
    if _displayed_inverted(ds):
        image = 1.0 - image
    return image


def _has_voi_lut_sequence(ds, path: str) -> bool:
    """Whether the first item of the VOI LUT Sequence holds a usable LUT. A VOI LUT Sequence is preferred to a
    window when both are present, as pydicom and most viewers do."""
    sequence = ds.get("VOILUTSequence")
    if not sequence or sequence[0].get("LUTDescriptor") is None or sequence[0].get("LUTData") is None:
        return False
    bits = int(sequence[0].LUTDescriptor[2])
    if bits != 8 and not 10 <= bits <= 16:
        raise DicomError(f"'{path}' has a VOI LUT of {bits} bits per entry; the standard allows 8 or 10-16.")
    return True


def _apply_voi_lut_sequence(values: np.ndarray, ds) -> tuple[np.ndarray, tuple[float, float]]:
    """``values`` (the Modality LUT's output) through the first VOI LUT of ``ds``, and that LUT's output range.

    Inputs below the first mapped value take the first entry and inputs past the last entry take the last
    (PS3.3 C.11.2.1.1). The output range is 0 .. 2^n - 1, n the LUT Descriptor's bits per entry (widened to
    the table when a file's entries exceed what its descriptor declares).
    """
    entries, first_mapped, bits = (int(v) for v in ds.VOILUTSequence[0].LUTDescriptor)
    entries = entries or 2**16  # 0 means 65536 entries
    table = _lut_entries(ds, entries)
    # indexed here: pydicom's apply_voi indexes through an array of the output's type, which wraps the
    # inputs of an 8-bit LUT with more than 256 entries
    indices = np.clip(np.round(values) - first_mapped, 0, entries - 1).astype(np.int64)
    high = float(2**bits - 1)
    if float(table.max()) > high:
        high = float(2 ** int(np.ceil(np.log2(float(table.max()) + 1))) - 1)
    return table[indices].astype(np.float64), (0.0, high)


def _lut_entries(ds, entries: int) -> np.ndarray:
    """The ``entries`` values of the first VOI LUT's LUT Data (US, SS, or OW words in the file's byte order)."""
    element = ds.VOILUTSequence[0]["LUTData"]
    if element.VR == "OW" or isinstance(element.value, bytes):
        syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
        little = syntax.is_little_endian if syntax is not None else True
        table = np.frombuffer(element.value, dtype="<u2" if little else ">u2")
    else:
        table = np.asarray(element.value if element.VM > 1 else [element.value], dtype=np.int64)
    if len(table) < entries:
        raise DicomError(f"'{ds.filename}' has a VOI LUT of {len(table)} entries; its descriptor says {entries}.")
    return table[:entries].astype(np.int64)


def _displayed_inverted(ds) -> bool:
    """Whether the lowest output value is shown white: MONOCHROME1, or a MONOCHROME2 image whose Presentation LUT
    Shape is INVERSE. (DX objects pair MONOCHROME1 with INVERSE: one inversion, not two.)"""
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    shape = str(ds.get("PresentationLUTShape", "") or "").upper()
    return photometric == "MONOCHROME1" or shape == "INVERSE"


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


def study_id(study_uid: str) -> str:
    """Study ID (0020,0010, at most 16 characters) of a study: ``SYN`` and the last 13 digits of its UID."""
    return "SYN" + study_uid.replace(".", "")[-13:]


def next_instance_number(folder: str) -> int:
    """A new Instance Number (1-based) for an image written to ``folder``, unique within the folder's series.

    The last number given out is kept in ``folder/.dicom_instance_number`` under a file lock, so ranks writing
    side by side, resumed runs and other commands adding to the same folder (one series per folder) never
    repeat a number. Without a readable counter (a folder written before it existed), counting starts after
    the highest Instance Number of the ``.dcm`` files already there.
    """
    from scripts.common.files import locked_file

    os.makedirs(folder, exist_ok=True)
    with locked_file(os.path.join(folder, INSTANCE_COUNTER)) as descriptor:
        text = os.read(descriptor, 64).decode("ascii", errors="replace").strip()
        last = int(text) if text.isdigit() else highest_instance_number(folder)
        number = last + 1
        os.lseek(descriptor, 0, os.SEEK_SET)
        os.ftruncate(descriptor, 0)
        os.write(descriptor, f"{number}\n".encode("ascii"))
    return number


def highest_instance_number(folder: str) -> int:
    """The highest Instance Number among the ``.dcm`` files directly in ``folder`` (0 when there are none)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    highest = 0
    for entry in os.scandir(folder):
        if entry.is_file() and entry.name.lower().endswith(".dcm"):
            try:
                header = pydicom.dcmread(entry.path, stop_before_pixels=True, specific_tags=["InstanceNumber"])
                highest = max(highest, int(header.get("InstanceNumber", 0) or 0))
            except (InvalidDicomError, OSError, ValueError, TypeError, EOFError):
                continue  # not a DICOM object, or torn: it holds no number to avoid
    return highest


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
    ds.SpecificCharacterSet = CHARACTER_SET
    ds.ConversionType = "SYN"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.Modality = "OT"
    ds.SoftwareVersions = str(software_version)
    ds.ManufacturerModelName = "cxr-ldm latent diffusion"
    ds.BurnedInAnnotation = "NO"
    # a chest is not a paired body part: Laterality (0020,0060) stays absent, as the General Series module asks
    # of unpaired parts (the SC IOD has no Image Laterality)
    ds.BodyPartExamined = BODY_PART
    ds.StudyID = study_id(study_uid)
    # the text as typed (UTF-8, Specific Character Set ISO_IR 192), not as \u escapes
    ds.ImageComments = "SYNTHETIC IMAGE generated by cxr-ldm. " + json.dumps(
        settings, sort_keys=True, default=str, ensure_ascii=False
    )
    ds.DerivationDescription = f"Generated from text by cxr-ldm {software_version}: {prompt}"[:1024]
    ds.WindowCenter = STORED_MAX / 2
    ds.WindowWidth = STORED_MAX + 1
    return ds
