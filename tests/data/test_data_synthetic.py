"""The synthetic MIMIC-format generator: layout and formats, determinism, findings visible where the report says."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from scripts.data.synthetic import (
    CHEXPERT_CSV,
    FINDINGS_CSV,
    METADATA_COLUMNS,
    METADATA_CSV,
    SPLIT_CSV,
    StudyFindings,
    draw_radiograph,
    generate,
)

HEIGHT, WIDTH = 192, 160


def _files(root: Path) -> dict[str, bytes]:
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def test_layout_and_tables_follow_mimic_cxr_jpg(tmp_path):
    root = tmp_path / "raw"
    counts = generate(str(root), num_subjects=12, seed=0, image_size=64)
    metadata = pd.read_csv(root / METADATA_CSV, dtype={"dicom_id": str})
    assert list(metadata.columns) == METADATA_COLUMNS
    assert len(metadata) == counts["images"] and (metadata["ViewPosition"] == "PA").sum() == counts["pa_images"]
    assert {"PA", "LATERAL"} <= set(metadata["ViewPosition"])
    for row in metadata.itertuples():
        path = (
            root
            / "files"
            / f"p{str(row.subject_id)[:2]}"
            / f"p{row.subject_id}"
            / f"s{row.study_id}"
            / f"{row.dicom_id}.jpg"
        )
        assert re.fullmatch(
            r"files/p1\d/p1\d{7}/s5\d{7}/[0-9a-f]{8}(-[0-9a-f]{8}){4}\.jpg", path.relative_to(root).as_posix()
        )
        with Image.open(path) as image:
            assert image.mode == "L" and image.size == (row.Columns, row.Rows) and row.Columns == 64
        assert (path.parent.parent / f"s{row.study_id}.txt").is_file()

    splits = pd.read_csv(root / SPLIT_CSV, dtype={"dicom_id": str})
    assert list(splits.columns) == ["dicom_id", "study_id", "subject_id", "split"]
    assert set(splits["dicom_id"]) == set(metadata["dicom_id"])
    assert set(splits["split"]) == {"train", "validate", "test"}
    assert splits.groupby("subject_id")["split"].nunique().max() == 1  # per patient

    findings = pd.read_csv(root / FINDINGS_CSV, keep_default_na=False)
    chexpert = pd.read_csv(root / CHEXPERT_CSV).merge(findings, on=["subject_id", "study_id"])
    assert len(chexpert) == counts["studies"]
    assert ((chexpert["Pleural Effusion"] == 1.0) == (chexpert["effusion_side"] != "")).all()
    assert ((chexpert["Cardiomegaly"] == 1.0) == (chexpert["cardiomegaly"] == 1)).all()
    assert (
        (chexpert["No Finding"] == 1.0)
        == ((chexpert["effusion_side"] == "") & (chexpert["cardiomegaly"] == 0) & (chexpert["pneumothorax_side"] == ""))
    ).all()


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    generate(str(tmp_path / "a"), num_subjects=4, seed=5, image_size=64, reports="both")
    generate(str(tmp_path / "b"), num_subjects=4, seed=5, image_size=64, reports="both")
    generate(str(tmp_path / "c"), num_subjects=4, seed=6, image_size=64, reports="both")
    first = _files(tmp_path / "a")
    assert first == _files(tmp_path / "b")
    assert set(first) != set(_files(tmp_path / "c"))


def test_invalid_arguments_are_named(tmp_path):
    with pytest.raises(ValueError, match="num_subjects"):
        generate(str(tmp_path), num_subjects=0)
    with pytest.raises(ValueError, match="reports"):
        generate(str(tmp_path), num_subjects=1, reports="pdf")


def _draw(**findings) -> np.ndarray:
    """Image of the given findings; the same seed gives the same anatomy, so differences are the findings."""
    return draw_radiograph(StudyFindings(**findings), HEIGHT, WIDTH, np.random.default_rng(11)).astype(np.float32)


def _mean(image: np.ndarray, x0: float, x1: float, y0: float, y1: float) -> float:
    return float(image[int(y0 * HEIGHT) : int(y1 * HEIGHT), int(x0 * WIDTH) : int(x1 * WIDTH)].mean())


# Regions in image coordinates (x from the image's left, y from the top); the patient's right is on the left.
RIGHT_BASE = (0.24, 0.36, 0.62, 0.70)
LEFT_BASE = (0.70, 0.77, 0.62, 0.70)
RIGHT_LATERAL_RIM = (0.17, 0.23, 0.40, 0.48)


@pytest.mark.parametrize("side, opaque, clear", [("right", RIGHT_BASE, LEFT_BASE), ("left", LEFT_BASE, RIGHT_BASE)])
def test_effusion_is_an_opacity_at_the_stated_base(side, opaque, clear):
    normal, effusion = _draw(), _draw(effusion_side=side, effusion_size="small")
    assert _mean(effusion, *opaque) - _mean(normal, *opaque) > 40  # fluid: much brighter than aerated lung
    assert abs(_mean(effusion, *clear) - _mean(normal, *clear)) < 3
    large = _draw(effusion_side=side, effusion_size="large")
    mid_lung = (opaque[0], opaque[1], 0.45, 0.52)
    assert _mean(large, *mid_lung) - _mean(effusion, *mid_lung) > 40  # a large effusion reaches higher


def test_cardiomegaly_widens_the_heart_towards_the_patients_left():
    normal, enlarged = _draw(), _draw(cardiomegaly=True)
    assert _mean(enlarged, *LEFT_BASE) - _mean(normal, *LEFT_BASE) > 40
    assert abs(_mean(enlarged, *RIGHT_BASE) - _mean(normal, *RIGHT_BASE)) < 3
    row = int(0.66 * HEIGHT)
    width_of_heart = lambda image: int((image[row, int(0.4 * WIDTH) : int(0.85 * WIDTH)] > 150).sum())  # noqa: E731
    assert width_of_heart(enlarged) > 1.4 * width_of_heart(normal)


def test_pneumothorax_is_a_dark_rim_on_the_stated_side():
    normal, pneumothorax = _draw(), _draw(pneumothorax_side="right")
    rim = [int(v * s) for v, s in zip(RIGHT_LATERAL_RIM, (WIDTH, WIDTH, HEIGHT, HEIGHT))]
    region = lambda image: image[rim[2] : rim[3], rim[0] : rim[1]]  # noqa: E731
    assert region(pneumothorax).mean() < region(normal).mean() - 15
    mirrored = (1 - RIGHT_LATERAL_RIM[1], 1 - RIGHT_LATERAL_RIM[0], *RIGHT_LATERAL_RIM[2:])
    assert abs(_mean(pneumothorax, *mirrored) - _mean(normal, *mirrored)) < 3
