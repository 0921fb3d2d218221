"""The DICOM conformance corpus read pixel for pixel, by the reader, by preparation and as an editing input."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from helpers.dicom_corpus import HEIGHT, WIDTH, expected_8bit, image_variants, refused_variants
from scripts.data.dicom import DicomError, read_radiograph
from scripts.data.prepare_dicom import prepare_dicom


def test_the_corpus_covers_at_least_twenty_readable_variants():
    assert len(image_variants()) >= 20 and len(refused_variants()) >= 5


@pytest.mark.parametrize("variant", image_variants(), ids=lambda v: v.name)
def test_each_variant_reads_as_the_standard_displays_it(variant, tmp_path):
    path = variant.write(tmp_path)
    image = read_radiograph(str(path))
    assert image.shape == (HEIGHT, WIDTH)
    np.testing.assert_array_equal(np.round(image * 255.0).astype(np.uint8), expected_8bit(variant))


@pytest.mark.parametrize("variant", refused_variants(), ids=lambda v: v.name)
def test_each_refused_variant_says_why(variant, tmp_path):
    path = variant.write(tmp_path)
    with pytest.raises(DicomError) as raised:
        read_radiograph(str(path))
    message = str(raised.value)
    assert "\n" not in message and str(path) in message and variant.error in message


def test_voi_lut_images_are_not_white(tmp_path):
    """A VOI LUT Sequence mapped by its own output range, not by a probe that pydicom 3 cannot index."""
    for variant in image_variants():
        if variant.name.startswith("voi_lut"):
            image = read_radiograph(str(variant.write(tmp_path)))
            assert 0.2 < image.mean() < 0.9, (variant.name, image.mean())


def test_preparing_the_corpus_keeps_every_file_and_lists_every_refusal(tmp_path):
    """Every readable file gets its own image (UID-named and extension-less files included); every refused file
    is listed in skipped.csv: nothing is dropped or overwritten silently."""
    root = tmp_path / "dicom"
    root.mkdir()
    paths = {variant.name: variant.write(root) for variant in image_variants() + refused_variants()}
    table = tmp_path / "reports.csv"
    with open(table, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "report", "split"])
        for path in paths.values():
            writer.writerow([path.name, "FINDINGS: Normal heart size. IMPRESSION: No acute process.", "train"])
    output = tmp_path / "prepared"
    summary = prepare_dicom(str(root), str(table), str(output), short_side=HEIGHT, image_format="png",
                            num_workers=0, progress=False)  # fmt: skip
    images = sorted(p.relative_to(output / "images").as_posix() for p in (output / "images").rglob("*.png"))
    assert len(images) == len(image_variants()) == summary["training_images"]
    assert "1.2.826.0.1.3680043.8.498.1.17.png" in images and "1.2.826.0.1.3680043.8.498.1.18.png" in images
    assert "IM000017.png" in images
    with open(output / "skipped.csv", newline="") as f:
        skipped = list(csv.DictReader(f))
    assert len(skipped) == summary["images_skipped"] == len(refused_variants()), skipped
    for variant in image_variants():
        stem = paths[variant.name].name.removesuffix(".dcm")
        written = np.asarray(Image.open(output / "images" / f"{stem}.png"))
        # prepared at the stored size (short side = height): the reader's 8-bit values unchanged
        np.testing.assert_array_equal(written, expected_8bit(variant), err_msg=variant.name)
    datalist = json.loads((output / "datalist.json").read_text())
    assert len({item["image"] for item in datalist["training"]}) == len(image_variants())


def test_editing_input_reads_a_voi_lut_file_as_displayed(tmp_path):
    from scripts.data.images import load_grey

    variant = next(v for v in image_variants() if v.name == "voi_lut_12bit")
    image = np.asarray(load_grey(str(variant.write(tmp_path))))
    np.testing.assert_array_equal(image, expected_8bit(variant))
