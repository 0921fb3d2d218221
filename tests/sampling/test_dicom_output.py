"""--output_format dcm: synthetic Secondary Capture images that read back like the PNGs of the same images."""

from __future__ import annotations

import csv
import json

import numpy as np
import pydicom

from helpers.bundle import BUNDLE_ROOT, read_png, run_inference
from helpers.data import dciodvfy_findings
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


def _job(name: str, prompt: str, output_dir) -> dict:
    from scripts.data.dicom import run_uids

    study_uid, series_uid = run_uids(str(output_dir))
    return {"name": name, "prompt": prompt, "negative_prompt": "Léger — ふつう", "seed": 7, "num_inference_steps": 20,
            "guidance_scale": 7.0, "scheduler": "unipc_karras", "model_version": "1.0", "study_uid": study_uid,
            "series_uid": series_uid}  # fmt: skip


def test_non_ascii_text_round_trips_through_every_written_text_attribute(tmp_path):
    import warnings

    import torch

    from scripts.data.dicom import CHARACTER_SET
    from scripts.sampling.writer import write_image

    prompt = "Épanchement pleural gauche … — 肺"
    path = tmp_path / "00000_x.dcm"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pydicom warns "Failed to encode value" when it has to replace characters
        write_image(torch.rand(1, 16, 16), str(path), "dcm", _job("00000_x", prompt, tmp_path))
    ds = pydicom.dcmread(path, force=False)
    assert ds.SpecificCharacterSet == CHARACTER_SET
    assert ds.DerivationDescription.endswith(prompt)
    written = json.loads(ds.ImageComments.split(". ", 1)[1])
    assert written["prompt"] == prompt and written["negative_prompt"] == "Léger — ふつう"
    # a viewer shows the settings as typed: the text itself in the comments (in the file's UTF-8), no \u escapes
    assert f'"prompt": "{prompt}"' in ds.ImageComments and "\\u" not in ds.ImageComments
    assert '"negative_prompt": "Léger — ふつう"'.encode() in path.read_bytes()
    # every text element reads back as it was set: nothing replaced by '?'
    for element in ds.iterall():
        if element.VR in ("LO", "LT", "SH", "ST", "UT", "PN", "CS") and element.value:
            assert "?" not in str(element.value), element


def test_instance_numbers_stay_unique_when_runs_add_to_one_series(tmp_path):
    """A resumed or different run into the same folder continues the series' numbering (not 1, 1, 2, ...)."""
    import torch

    from scripts.sampling.writer import write_image

    for index, prompt in enumerate(["a", "b", "c"]):
        write_image(torch.rand(1, 8, 8), str(tmp_path / f"{index:05d}_{prompt}.dcm"), "dcm",
                    _job(f"{index:05d}_{prompt}", prompt, tmp_path))  # fmt: skip
    # a later run whose jobs count from 0 again
    for index, prompt in enumerate(["d", "e"]):
        write_image(torch.rand(1, 8, 8), str(tmp_path / f"{index:05d}_{prompt}.dcm"), "dcm",
                    _job(f"{index:05d}_{prompt}", prompt, tmp_path))  # fmt: skip
    datasets = [pydicom.dcmread(p) for p in sorted(tmp_path.glob("*.dcm"))]
    assert len({ds.SeriesInstanceUID for ds in datasets}) == 1
    assert sorted(int(ds.InstanceNumber) for ds in datasets) == [1, 2, 3, 4, 5]


def test_instance_numbers_continue_after_files_written_without_a_counter(tmp_path):
    from scripts.data.dicom import INSTANCE_COUNTER, highest_instance_number, next_instance_number

    numbers = [next_instance_number(str(tmp_path)) for _ in range(3)]
    assert numbers == [1, 2, 3]
    (tmp_path / INSTANCE_COUNTER).write_text("torn")  # unreadable: counted again from the files
    (tmp_path / "notes.dcm").write_bytes(b"not dicom")
    assert highest_instance_number(str(tmp_path)) == 0
    assert next_instance_number(str(tmp_path)) == 1  # no .dcm image holds a number yet


def _allocate(folder: str, count: int) -> list[int]:
    from scripts.data.dicom import next_instance_number

    return [next_instance_number(folder) for _ in range(count)]


def test_instance_numbers_are_unique_across_processes_writing_at_once(tmp_path):
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(4) as pool:
        numbers = [n for chunk in pool.starmap(_allocate, [(str(tmp_path), 25)] * 4) for n in chunk]
    assert sorted(numbers) == list(range(1, 101))


def test_generated_and_edited_dicom_pass_the_standards_validator(tiny_model_dir, tmp_path):
    """dicom3tools' dciodvfy finds no error or warning in a generated and an edited object: Body Part Examined
    CHEST, no Laterality (a chest is unpaired; the SC IOD has no Image Laterality), a Study ID."""
    from helpers.editing import run_edit, write_image

    prompt = "Épanchement pleural droit — 胸水"
    (generated,) = run_inference(tiny_model_dir, tmp_path / "generated", output_format="dcm", prompt=prompt)
    image = write_image(tmp_path / "chest.png")
    (edited,) = run_edit(tiny_model_dir, tmp_path / "edited", image=str(image), prompt=prompt, output_format="dcm")
    for path in (generated, edited):
        assert dciodvfy_findings(path) == [], path
        ds = pydicom.dcmread(path)
        assert ds.BodyPartExamined == "CHEST" and "Laterality" not in ds and "ImageLaterality" not in ds
        assert ds.StudyID.startswith("SYN") and ds.StudyID[3:] == ds.StudyInstanceUID.replace(".", "")[-13:]
        assert prompt in ds.ImageComments
