"""--output_format dcm: synthetic Secondary Capture images that read back like the PNGs of the same images."""

from __future__ import annotations

import csv
import json

import numpy as np
import pydicom

from helpers.bundle import BUNDLE_ROOT, read_png, run_inference
from scripts.data.dicom import SECONDARY_CAPTURE_SOP_CLASS, STORED_MAX, read_radiograph


def test_dicom_output_is_marked_synthetic_and_matches_the_png(tiny_model_dir, tmp_path):
    settings = {"prompt": "Small left pleural effusion", "negative_prompt": "", "num_samples": 3, "batch_size": 2}
    dicoms = run_inference(tiny_model_dir, tmp_path / "dcm", output_format="dcm", **settings)
    pngs = run_inference(tiny_model_dir, tmp_path / "png", output_format="png", **settings)
    assert [p.suffix for p in dicoms] == [".dcm"] * 3

    datasets = [pydicom.dcmread(p) for p in dicoms]
    for ds, png in zip(datasets, pngs):
        assert ds.SOPClassUID == SECONDARY_CAPTURE_SOP_CLASS
        assert ds.ConversionType == "SYN" and list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        assert ds.PhotometricInterpretation == "MONOCHROME2" and ds.BitsStored == 16
        assert str(ds.PatientName).startswith("SYNTHETIC") and ds.PatientID.startswith("SYN-")
        assert (
            ds.Manufacturer == "cxr-ldm"
            and ds.SoftwareVersions == json.loads((BUNDLE_ROOT / "configs" / "metadata.json").read_text())["version"]
        )
        written = json.loads(ds.ImageComments.split(". ", 1)[1])
        assert written["prompt"] == settings["prompt"] and written["scheduler"] == "unipc_karras"
        assert {"seed", "num_inference_steps", "guidance_scale", "negative_prompt", "model_version"} <= set(written)
        # the 16-bit values are the 8-bit PNG's to within the PNG's own rounding
        sixteen = ds.pixel_array.astype(np.float64)
        assert sixteen.max() <= STORED_MAX and sixteen.std() > 0
        np.testing.assert_array_equal(np.round(sixteen / STORED_MAX * 255), read_png(png))
        # and through the reader every other part of the bundle uses (window = full range)
        np.testing.assert_allclose(read_radiograph(str(ds.filename)), sixteen / STORED_MAX, atol=1e-4)

    # one study and one series per run; every image its own instance
    assert len({ds.StudyInstanceUID for ds in datasets}) == 1 and len({ds.SeriesInstanceUID for ds in datasets}) == 1
    assert len({ds.SOPInstanceUID for ds in datasets}) == 3
    assert sorted(int(ds.InstanceNumber) for ds in datasets) == [1, 2, 3]

    # listed in the manifest, and a re-run (resume) writes nothing new
    with open(tmp_path / "dcm" / "manifest.csv", newline="") as f:
        assert sorted(row["file"] for row in csv.DictReader(f)) == [p.name for p in dicoms]
    stamps = [p.stat().st_mtime_ns for p in dicoms]
    again = run_inference(tiny_model_dir, tmp_path / "dcm", output_format="dcm", **settings)
    assert again == dicoms and [p.stat().st_mtime_ns for p in again] == stamps

    # another run (output folder) is another study, and its instances are new
    other = run_inference(tiny_model_dir, tmp_path / "other", output_format="dcm", **{**settings, "num_samples": 1})
    other_ds = pydicom.dcmread(other[0])
    assert other_ds.StudyInstanceUID != datasets[0].StudyInstanceUID
    assert other_ds.SOPInstanceUID not in {ds.SOPInstanceUID for ds in datasets}
