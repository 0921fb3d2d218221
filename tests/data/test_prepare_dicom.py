"""Own DICOM data: Modality / VOI LUTs, MONOCHROME1, views and bad files, against the PNGs a viewer would show."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import JPEG2000Lossless

from helpers.data import write_dx
from scripts.data.dicom import DicomError, read_radiograph
from scripts.data.prepare import PreparationError, resize_image
from scripts.data.prepare_dicom import prepare_dicom

HEIGHT, WIDTH, SHORT_SIDE = 48, 64, 32


def stored_gradient(bits: int, marker_high: bool = True) -> np.ndarray:
    """(H, W) stored values spanning most of ``bits`` bits, with an 8 x 8 marker in the top-left corner."""
    top = 2**bits - 1
    values = np.linspace(0.1 * top, 0.7 * top, HEIGHT * WIDTH).reshape(HEIGHT, WIDTH)
    values[:8, :8] = top if marker_high else 0
    return values.round().astype(np.uint16)


def window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM linear VOI window (PS3.3 C.11.2.1.2.1) onto [0, 1], written out here as the reference."""
    return np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


@pytest.fixture
def dicom_tree(tmp_path):
    """Five DICOM files a hospital might hand over, their expected display in [0, 1], and three bad files."""
    root = tmp_path / "dicom"
    (root / "p1").mkdir(parents=True)
    expected = {}
    plain = stored_gradient(12)
    write_dx(root / "p1" / "plain.dcm", plain)
    expected["p1/plain.dcm"] = (plain - plain.min()) / (plain.max() - plain.min())  # no VOI: own range

    inverted = stored_gradient(12, marker_high=False)
    write_dx(root / "p1" / "mono1.dcm", inverted, photometric="MONOCHROME1", WindowCenter=1500, WindowWidth=2500)
    expected["p1/mono1.dcm"] = 1.0 - window(inverted.astype(float), 1500, 2500)

    sixteen = stored_gradient(16)
    write_dx(root / "p1" / "windowed16.dcm", sixteen, bits=16, WindowCenter=35000, WindowWidth=50000)
    expected["p1/windowed16.dcm"] = window(sixteen.astype(float), 35000, 50000)

    rescaled = stored_gradient(12)
    write_dx(root / "rescaled.dcm", rescaled, RescaleSlope=2, RescaleIntercept=-1000, WindowCenter=3500,
             WindowWidth=7000)  # fmt: skip
    expected["rescaled.dcm"] = window(rescaled * 2.0 - 1000, 3500, 7000)

    write_dx(root / "p1" / "lateral.dcm", stored_gradient(12), view="LL")
    write_dx(root / "p1" / "no_pixels.dcm", None)
    whole = (root / "p1" / "plain.dcm").read_bytes()
    (root / "corrupt.dcm").write_bytes(whole[: len(whole) - 3000])  # cut in the middle of its pixel data
    bad = {"p1/lateral.dcm", "p1/no_pixels.dcm", "corrupt.dcm"}
    return root, expected, bad


def _table(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["file", "report", "subject_id", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


def test_dicom_tree_prepares_like_the_equivalent_pngs(dicom_tree, tmp_path):
    root, expected, bad = dicom_tree
    report = "FINDINGS: Small left pleural effusion. IMPRESSION: Effusion."
    names = sorted([*expected, *bad])
    rows = [{"file": name, "report": report, "subject_id": f"S{i}", "split": "train"} for i, name in enumerate(names)]
    output = tmp_path / "prepared"
    summary = prepare_dicom(str(root), _table(tmp_path / "reports.csv", rows), str(output), short_side=SHORT_SIDE,
                            image_format="png", num_workers=0, progress=False)  # fmt: skip

    assert summary["training_images"] == len(expected) and summary["images_skipped"] == len(bad)
    skipped = {row["dicom_id"]: row["reason"] for row in csv.DictReader(open(output / "skipped.csv"))}
    reasons = " | ".join(skipped.values())
    assert "LL view" in reasons and "no pixel data" in reasons and "cannot be decoded" in reasons
    items = {item["image"]: item for item in json.loads((output / "datalist.json").read_text())["training"]}
    assert all(item["sentences"] == ["Small left pleural effusion.", "Effusion."] for item in items.values())

    for name, image in expected.items():
        # what a viewer shows, saved as an 8-bit PNG and prepared through the PNG route
        png = tmp_path / "png" / name.replace(".dcm", ".png")
        png.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.round(image * 255).astype(np.uint8), mode="L").save(png)
        reference = tmp_path / "png_prepared" / png.name
        assert resize_image(str(png), str(reference), SHORT_SIDE, 95) == (str(reference), "")
        prepared = np.asarray(Image.open(output / "images" / name.replace(".dcm", ".png")), dtype=int)
        want = np.asarray(Image.open(reference), dtype=int)
        assert prepared.shape == want.shape == (SHORT_SIDE, round(WIDTH * SHORT_SIDE / HEIGHT))
        assert np.abs(prepared - want).max() <= 1, name
        # orientation kept: the marker drawn in the top-left corner is still there, and white
        assert prepared[:4, :4].mean() > 200 > prepared[-4:, -4:].mean(), name


def test_without_a_split_column_patients_never_share_splits(dicom_tree, tmp_path):
    root, expected, _ = dicom_tree
    rows = [
        {"file": name, "report": "Lungs are clear.", "subject_id": "same-patient", "split": ""} for name in expected
    ]
    output = tmp_path / "prepared"
    prepare_dicom(str(root), _table(tmp_path / "reports.csv", rows), str(output), short_side=SHORT_SIDE,
                  num_workers=0, progress=False)  # fmt: skip
    datalist = json.loads((output / "datalist.json").read_text())
    assert sorted(len(entries) for entries in datalist.values()) == [0, 0, len(expected)]


def test_single_inputs_fail_with_one_line_naming_the_problem(tmp_path):
    write_dx(tmp_path / "ct.dcm", stored_gradient(12), modality="CT")
    write_dx(tmp_path / "frames.dcm", stored_gradient(12), frames=2)
    write_dx(tmp_path / "empty.dcm", None)
    # JPEG 2000 declared, but the bytes are no codestream and no decoder for it is installed
    compressed = write_dx(tmp_path / "j2k.dcm", None, syntax=JPEG2000Lossless)
    ds = pydicom.dcmread(compressed)
    ds.PixelData = pydicom.encaps.encapsulate([b"\xff\x4f\xff\x51" + b"\x00" * 64])
    ds["PixelData"].VR = "OB"
    ds.save_as(compressed, enforce_file_format=True)
    for name, message in [("ct.dcm", "not a radiograph (Modality CT)"), ("frames.dcm", "multi-frame"),
                          ("empty.dcm", "no pixel data"), ("j2k.dcm", "pip install pylibjpeg")]:  # fmt: skip
        with pytest.raises(DicomError, match=re.escape(message)) as info:
            read_radiograph(str(tmp_path / name))
        assert len(str(info.value).splitlines()) == 1 and name in str(info.value)


def test_image_sets_read_dicom_through_the_same_reader(dicom_tree, tmp_path):
    """Evaluation folders (and any other user image) take DICOM files like PNGs."""
    from scripts.data.images import folder_items, load_image_item

    root, expected, _ = dicom_tree
    items = folder_items(str(root / "p1"))
    assert {item["name"] for item in items} >= {"plain.dcm", "mono1.dcm", "windowed16.dcm"}
    loaded = load_image_item(next(item for item in items if item["name"] == "mono1.dcm"))["image"]
    assert loaded.shape == (1, HEIGHT, WIDTH)
    np.testing.assert_allclose(loaded[0].numpy(), expected["p1/mono1.dcm"], atol=1e-6)


def test_uid_named_files_keep_their_own_names(tmp_path):
    """PACS exports name files by SOP Instance UID, without extension: '<uid>.17' and '<uid>.18' are two images."""
    root = tmp_path / "dicom"
    root.mkdir()
    stems = ["1.2.826.0.1.3680043.8.498.9.17", "1.2.826.0.1.3680043.8.498.9.18"]
    for stem, marker_high in zip(stems, (True, False)):
        write_dx(root / stem, stored_gradient(12, marker_high))
    rows = [{"file": stem, "report": "IMPRESSION: No acute process.", "subject_id": "s1", "split": "train"}
            for stem in stems]  # fmt: skip
    summary = prepare_dicom(str(root), _table(tmp_path / "t.csv", rows), str(tmp_path / "out"), short_side=SHORT_SIDE,
                            num_workers=0, progress=False)  # fmt: skip
    assert summary["training_images"] == summary["images_written"] == 2
    first, second = (np.asarray(Image.open(tmp_path / "out" / "images" / f"{stem}.jpg")) for stem in stems)
    assert first[:2, :2].mean() > 200 and second[:2, :2].mean() < 50, "each image is its own file's"


def test_two_files_with_one_output_name_stop_before_anything_is_written(tmp_path):
    root = tmp_path / "dicom"
    root.mkdir()
    write_dx(root / "chest.dcm", stored_gradient(12))
    write_dx(root / "chest", stored_gradient(12, marker_high=False))
    rows = [{"file": name, "report": "IMPRESSION: No acute process.", "subject_id": "s1", "split": "train"}
            for name in ("chest", "chest.dcm")]  # fmt: skip
    output = tmp_path / "out"
    with pytest.raises(PreparationError, match="would both be written to 'images/chest.jpg'") as raised:
        prepare_dicom(str(root), _table(tmp_path / "t.csv", rows), str(output), short_side=SHORT_SIDE,
                      num_workers=0, progress=False)  # fmt: skip
    assert "'chest'" in str(raised.value) and "'chest.dcm'" in str(raised.value)
    assert not any(output.rglob("*.jpg")) and not (output / "datalist.json").exists()
