"""A DICOM conformance corpus: radiograph variants a hospital may hand over, each with its expected display.

Every ``Variant`` writes one file with pydicom and gives what a reader must make of it: either the
displayed image in [0, 1] (1 = white), computed here from the standard's formulas (PS3.3 C.11: Modality LUT,
VOI LUT / window, Presentation LUT) on the stored values, independently of the bundle's reader; or the
start of the error it must raise. A new variant is one line in ``VARIANTS``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HEIGHT, WIDTH = 24, 32


@dataclass(frozen=True)
class Variant:
    """One corpus file.

    Args:
        name: identifier (also the default file name, with ``.dcm``).
        stored: (H, W) stored pixel values (signed when ``signed``), or None for no Pixel Data.
        expected: stored values -> displayed image in [0, 1]; None when ``error`` is set.
        attributes: DICOM keywords set on the dataset (windows, LUTs, rescale, photometric ...).
        bits: Bits Stored (Bits Allocated is 8 when ``bits`` is 8, else 16).
        signed: Pixel Representation 1 (two's complement).
        file_name: the file's name (default ``<name>.dcm``): UID-like names, no extension.
        syntax: transfer syntax ("explicit", "implicit", "rle").
        error: start of the reader's error message when the file must be refused.
        raw_pixels: bytes of Pixel Data overriding the stored values (high-bit junk).
        frames / samples: Number of Frames / Samples per Pixel.
    """

    name: str
    stored: np.ndarray | None
    expected: Callable[[np.ndarray], np.ndarray] | None = None
    attributes: dict = field(default_factory=dict)
    bits: int = 12
    signed: bool = False
    file_name: str | None = None
    syntax: str = "explicit"
    error: str | None = None
    raw_pixels: bytes | None = None
    frames: int = 1
    samples: int = 1

    def write(self, folder: Path) -> Path:
        """Write the file into ``folder``; return its path."""
        return write_radiograph(folder / (self.file_name or f"{self.name}.dcm"), self)


def gradient(bits: int, signed: bool = False, low: float = 0.05, high: float = 0.9) -> np.ndarray:
    """(H, W) stored values from ``low`` to ``high`` of the ``bits``-bit range, with a dark 4 x 4 marker at
    the top-left corner (orientation shows)."""
    if signed:
        bottom, top = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    else:
        bottom, top = 0, 2**bits - 1
    values = np.linspace(bottom + low * (top - bottom), bottom + high * (top - bottom), HEIGHT * WIDTH)
    values = values.reshape(HEIGHT, WIDTH).round()
    values[:4, :4] = bottom
    return values.astype(np.int32)


# The standard's formulas, written out here as the references.
def stretch(values: np.ndarray) -> np.ndarray:
    """No VOI transform: the image's own range onto [0, 1]."""
    values = values.astype(np.float64)
    return (values - values.min()) / (values.max() - values.min())


def linear_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1, LINEAR, onto [0, 1]."""
    return np.clip((values.astype(np.float64) - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def linear_exact_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.3.2, LINEAR_EXACT, onto [0, 1]."""
    return np.clip((values.astype(np.float64) - center) / width + 0.5, 0.0, 1.0)


def sigmoid_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.3.1, SIGMOID, onto [0, 1]."""
    return 1.0 / (1.0 + np.exp(-4.0 * (values.astype(np.float64) - center) / width))


def lookup(values: np.ndarray, table: np.ndarray, first_mapped: int, bits: int) -> np.ndarray:
    """PS3.3 C.11.2.1.1 VOI LUT: entries clamped at both ends, output over 0 .. 2^bits - 1, onto [0, 1]."""
    index = np.clip(np.round(values).astype(np.int64) - first_mapped, 0, len(table) - 1)
    return table[index].astype(np.float64) / (2**bits - 1)


def gamma_table(entries: int, bits: int, gamma: float = 0.6) -> np.ndarray:
    """A monotone LUT of ``entries`` values over ``bits`` bits, the kind vendors ship (not linear)."""
    return np.round((np.linspace(0.0, 1.0, entries) ** gamma) * (2**bits - 1)).astype(np.int64)


def voi_lut(entries: int, first_mapped: int, bits: int, table: np.ndarray | None = None) -> dict:
    """Attributes of a VOI LUT Sequence with one LUT (``table``: default a gamma curve)."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    table = gamma_table(entries, bits) if table is None else table
    item = Dataset()
    # US, or SS where the first value mapped is negative (PS3.3 C.11.2.1.1)
    item.add_new(
        0x00283002, "SS" if first_mapped < 0 else "US", [entries if entries < 2**16 else 0, first_mapped, bits]
    )
    item.add_new(0x00283006, "US", [int(v) for v in table])
    return {"VOILUTSequence": Sequence([item]), "_table": table}


def _lut_variant(name: str, bits: int, lut_bits: int, entries: int, first_mapped: int = 0, **extra) -> Variant:
    lut = voi_lut(entries, first_mapped, lut_bits)
    table = lut.pop("_table")
    signed = extra.pop("signed", False)
    stored = extra.pop("stored", None)
    slope, intercept = (
        extra.get("attributes", {}).get(k, d) for k, d in (("RescaleSlope", 1), ("RescaleIntercept", 0))
    )
    inverted = extra.get("attributes", {}).get("PhotometricInterpretation") == "MONOCHROME1"

    def expected(values: np.ndarray) -> np.ndarray:
        shown = lookup(values * slope + intercept, table, first_mapped, lut_bits)
        return 1.0 - shown if inverted else shown

    return Variant(
        name,
        gradient(bits, signed) if stored is None else stored,
        expected=expected,
        attributes={**lut, **extra.pop("attributes", {})},
        bits=bits,
        signed=signed,
        **extra,
    )


def _windowed_12(name: str, **extra) -> Variant:
    """The 12-bit gradient with window 1800 / 2600, written another way (``extra``: syntax, file name)."""
    return Variant(name, gradient(12), lambda v: linear_window(v, 1800, 2600),
                   {"WindowCenter": 1800, "WindowWidth": 2600}, **extra)  # fmt: skip


def _junk_high_bits(stored: np.ndarray) -> bytes:
    junk = np.full(stored.shape, 0xB000, dtype=np.uint16)  # bits 12-15 set: outside Bits Stored 12
    return (stored.astype(np.uint16) | junk).astype("<u2").tobytes()


_G12 = gradient(12)
_S12 = gradient(12, signed=True)
_G16 = gradient(16)
_G8 = gradient(8)

VARIANTS: list[Variant] = [
    Variant("plain_12", _G12, expected=stretch),
    Variant("plain_8", _G8, expected=stretch, bits=8),
    Variant("window_12", _G12, lambda v: linear_window(v, 1800, 2600), {"WindowCenter": 1800, "WindowWidth": 2600}),
    Variant(
        "window_16",
        _G16,
        lambda v: linear_window(v, 35000, 50000),
        {"WindowCenter": 35000, "WindowWidth": 50000},
        bits=16,
    ),
    Variant(
        "two_windows_first_used",
        _G12,
        lambda v: linear_window(v, 1500, 2000),
        {"WindowCenter": [1500, 3000], "WindowWidth": [2000, 500]},
    ),
    Variant(
        "window_linear_exact",
        _G12,
        lambda v: linear_exact_window(v, 2000, 3000),
        {"WindowCenter": 2000, "WindowWidth": 3000, "VOILUTFunction": "LINEAR_EXACT"},
    ),
    Variant(
        "window_sigmoid",
        _G12,
        lambda v: sigmoid_window(v, 2000, 3000),
        {"WindowCenter": 2000, "WindowWidth": 3000, "VOILUTFunction": "SIGMOID"},
    ),
    Variant(
        "rescale_window",
        _G12,
        lambda v: linear_window(v * 2.0 - 1000, 3500, 7000),
        {"RescaleSlope": 2, "RescaleIntercept": -1000, "WindowCenter": 3500, "WindowWidth": 7000},
    ),
    Variant(
        "rescale_no_window", _G12, lambda v: stretch(v * 0.5 + 100), {"RescaleSlope": 0.5, "RescaleIntercept": 100}
    ),
    Variant(
        "monochrome1_window",
        _G12,
        lambda v: 1.0 - linear_window(v, 1500, 2500),
        {"PhotometricInterpretation": "MONOCHROME1", "WindowCenter": 1500, "WindowWidth": 2500},
    ),
    Variant(
        "monochrome1_inverse_shape",
        _G12,
        lambda v: 1.0 - linear_window(v, 1500, 2500),
        {
            "PhotometricInterpretation": "MONOCHROME1",
            "PresentationLUTShape": "INVERSE",
            "WindowCenter": 1500,
            "WindowWidth": 2500,
        },
    ),
    Variant(
        "monochrome2_inverse_shape",
        _G12,
        lambda v: 1.0 - linear_window(v, 1500, 2500),
        {"PresentationLUTShape": "INVERSE", "WindowCenter": 1500, "WindowWidth": 2500},
    ),
    Variant(
        "monochrome2_identity_shape",
        _G12,
        lambda v: linear_window(v, 1500, 2500),
        {"PresentationLUTShape": "IDENTITY", "WindowCenter": 1500, "WindowWidth": 2500},
    ),
    Variant(
        "signed_window",
        _S12,
        lambda v: linear_window(v, 0, 3000),
        {"WindowCenter": 0, "WindowWidth": 3000},
        signed=True,
    ),
    Variant("signed_plain", _S12, expected=stretch, signed=True),
    Variant(
        "high_bit_junk",
        _G12,
        lambda v: linear_window(v, 2000, 4000),
        {"WindowCenter": 2000, "WindowWidth": 4000},
        raw_pixels=_junk_high_bits(_G12),
    ),
    _lut_variant("voi_lut_8bit", 12, lut_bits=8, entries=4096),
    _lut_variant("voi_lut_12bit", 12, lut_bits=12, entries=4096),
    _lut_variant("voi_lut_16bit", 16, lut_bits=16, entries=2**16, stored=_G16),
    _lut_variant(
        "voi_lut_with_window", 12, lut_bits=12, entries=4096, attributes={"WindowCenter": 500, "WindowWidth": 200}
    ),
    _lut_variant("voi_lut_partial_range", 12, lut_bits=12, entries=2048, first_mapped=1024),
    _lut_variant("voi_lut_signed", 12, lut_bits=16, entries=4096, first_mapped=-2048, signed=True, stored=_S12),
    _lut_variant(
        "voi_lut_after_rescale",
        12,
        lut_bits=12,
        entries=4096,
        stored=_G12 // 2,
        attributes={"RescaleSlope": 2, "RescaleIntercept": 0},
    ),
    _lut_variant(
        "voi_lut_monochrome1", 12, lut_bits=12, entries=4096, attributes={"PhotometricInterpretation": "MONOCHROME1"}
    ),
    _windowed_12("rle_lossless", syntax="rle"),
    _windowed_12("implicit_vr", syntax="implicit"),
    _windowed_12("no_extension", file_name="IM000017"),
    Variant("uid_named_17", _G12, expected=stretch, file_name="1.2.826.0.1.3680043.8.498.1.17"),
    Variant("uid_named_18", _G12[::-1].copy(), expected=stretch, file_name="1.2.826.0.1.3680043.8.498.1.18"),
    # files to refuse, with the start of the reason
    Variant("multi_frame", _G12, frames=3, error="is a multi-frame object"),
    Variant("rgb", _G8, bits=8, samples=3, error="is a colour image"),
    Variant("ct", _G12, attributes={"Modality": "CT"}, error="is not a radiograph (Modality CT)"),
    Variant("no_pixel_data", None, error="has no pixel data"),
    Variant("truncated", _G12, error="pixel data cannot be decoded", attributes={"_truncate": True}),
]


def write_radiograph(path: Path, variant: Variant) -> Path:
    """Write ``variant`` as a Digital X-Ray object at ``path`` (pydicom; file meta and preamble included)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (
        DigitalXRayImageStorageForPresentation,
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        RLELossless,
        generate_uid,
    )

    attributes = dict(variant.attributes)
    truncate = attributes.pop("_truncate", False)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ImplicitVRLittleEndian if variant.syntax == "implicit" else ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.PatientID = generate_uid(), generate_uid(), "P1"
    ds.Modality, ds.ViewPosition = "DX", "PA"
    ds.PhotometricInterpretation = "RGB" if variant.samples == 3 else "MONOCHROME2"
    ds.SamplesPerPixel = variant.samples
    if variant.samples > 1:
        ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = HEIGHT, WIDTH
    allocated = 8 if variant.bits == 8 else 16
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = allocated, variant.bits, variant.bits - 1
    ds.PixelRepresentation = int(variant.signed)
    if variant.frames > 1:
        ds.NumberOfFrames = variant.frames
    for name, value in attributes.items():
        setattr(ds, name, value)
    if variant.stored is not None:
        if variant.raw_pixels is not None:
            ds.PixelData = variant.raw_pixels
        else:
            dtype = {(8, False): "u1", (16, False): "<u2", (16, True): "<i2"}[(allocated, variant.signed)]
            pixels = np.repeat(variant.stored[None], variant.frames, axis=0)
            if variant.samples > 1:
                pixels = np.repeat(pixels[..., None], variant.samples, axis=-1)
            ds.PixelData = pixels.astype(dtype).tobytes()
    if variant.syntax == "rle":
        ds.compress(RLELossless)
    ds.save_as(path, enforce_file_format=True)
    if truncate:
        whole = path.read_bytes()
        path.write_bytes(whole[: len(whole) - len(whole) // 3])  # cut inside the pixel data
    return path


def expected_8bit(variant: Variant) -> np.ndarray:
    """The variant's expected display as 8-bit values round(255 · y)."""
    return np.round(variant.expected(variant.stored) * 255.0).astype(np.uint8)


def image_variants() -> list[Variant]:
    """The variants that must be read (those with an expected image)."""
    return [v for v in VARIANTS if v.error is None]


def refused_variants() -> list[Variant]:
    """The variants that must be refused with a reason."""
    return [v for v in VARIANTS if v.error is not None]
