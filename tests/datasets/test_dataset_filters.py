"""Each filter keeps what it should and rejects what it should: a test of each fails if its filter is skipped or
its verdict inverted. The sanity filter also sees non-finite images through the data-set writer; the label
filter's operating point comes from labelled real images; the memorisation threshold from the training set."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from helpers.bundle import tiny_parser
from helpers.datasets import DATASET_CONFIG
from scripts.data.images import datalist_items
from scripts.datasets.classifiers import NetworkLabelClassifier
from scripts.datasets.filters import (
    Calibration,
    FilterError,
    LabelAgreementFilter,
    MemorisationFilter,
    SanityFilter,
    check_training_images,
    load_filters,
    youden_threshold,
)
from scripts.datasets.scoring import score_block
from scripts.datasets.writer import DatasetWriter
from scripts.evaluation.context import load_images


def _radiograph(prepared_synthetic_dir) -> torch.Tensor:
    items = datalist_items(str(prepared_synthetic_dir / "datalist.json"), "training", str(prepared_synthetic_dir), 1)
    return load_images(items, tiny_parser(DATASET_CONFIG).get_parsed_content("real_transform"))


def test_sanity_keeps_a_radiograph_and_rejects_blank_and_saturated_images(prepared_synthetic_dir):
    radiograph = _radiograph(prepared_synthetic_dir)
    blank = torch.full_like(radiograph, 0.4)
    saturated = (torch.arange(64 * 64).reshape(1, 1, 64, 64) % 2).float()  # contrast, but every pixel at 0 or 1
    results = SanityFilter(min_std=0.02, max_saturated_fraction=0.5).score(
        torch.cat([radiograph, blank, saturated]), [{}, {}, {}]
    )
    assert [r["pass"] for r in results] == [True, False, False]
    assert results[0]["score"] > 0.1 and results[1]["score"] < 1e-6 and results[2]["saturated_fraction"] == 1.0


def test_a_non_finite_sample_is_kept_recorded_and_rejected(tmp_path, prepared_synthetic_dir):
    """The data-set writer stores an image with NaN pixels (the sampling writer refuses it) and the sanity filter
    rejects it; a finite image written beside it passes."""
    radiograph = _radiograph(prepared_synthetic_dir)[0]
    broken = radiograph.clone()
    broken[:, :8, :8] = float("nan")
    writer = DatasetWriter(tmp_path, "png")
    writer.started()
    batch = {"name": ["00000_a", "00001_b"], "prompt": ["a", "b"], "seed": [1, 2]}
    writer(SimpleNamespace(state=SimpleNamespace(output={"pred": torch.stack([radiograph, broken])}, batch=batch)))
    stored = np.asarray(Image.open(tmp_path / "00001_b.png"))
    assert (stored[:8, :8] == 0).all() and stored.std() > 10
    rows = [{"index": 0, "name": "00000_a"}, {"index": 1, "name": "00001_b"}]
    scored = score_block(rows, str(tmp_path), [SanityFilter()], batch_size=2)
    assert [(r["sanity_pass"], r["sanity_non_finite_pixels"], r["accepted"]) for r in scored] == [
        (True, 0, True), (False, 64, False)
    ]  # fmt: skip


class Brightness(torch.nn.Module):
    """A classifier that sees every finding in bright images: logit 40·(mean intensity - 0.5) for each output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (40 * (x.mean(dim=(1, 2, 3)) - 0.5))[:, None].expand(-1, 14)


def _labels(**values) -> dict:
    names = {"effusion": "Pleural Effusion", "edema": "Edema"}
    return {"labels": {names[key]: value for key, value in values.items()}}


def test_label_agreement_keeps_images_showing_the_asked_finding_and_rejects_the_others():
    image_filter = LabelAgreementFilter(NetworkLabelClassifier(Brightness(), "random", image_size=16))
    image_filter.load()
    record = image_filter.calibrate(None)
    assert record["operating_point"] == "default threshold 0.5" and len(record["thresholds"]) == 14
    image_filter.use_calibration(record)
    bright, dark = torch.full((1, 1, 32, 32), 0.8), torch.full((1, 1, 32, 32), 0.2)
    rows = [_labels(effusion=1.0), _labels(effusion=1.0), _labels(effusion=0.0), _labels(effusion=-1.0)]
    results = image_filter.score(torch.cat([bright, dark, dark, dark]), rows)
    assert [r["pass"] for r in results] == [True, False, True, True]
    assert results[1]["disagreements"] == "Pleural Effusion" and results[1]["score"] == 1.0
    assert json.loads(results[0]["probabilities"])["Pleural Effusion"] > 0.99
    strict = LabelAgreementFilter(image_filter.classifier, check_negatives=True)
    strict.use_calibration(record)
    results = strict.score(torch.cat([bright, dark]), [_labels(effusion=1.0), _labels(effusion=0.0, edema=math.nan)])
    assert [r["pass"] for r in results] == [False, True], "with negatives, a blank finding the image shows is wrong"
    assert results[0]["score"] == 13.0


def test_youden_threshold_and_calibration_on_labelled_real_images(tmp_path):
    assert youden_threshold(np.array([0.1, 0.3, 0.35, 0.8, 0.9]), np.array([0, 0, 1, 1, 1])) == 0.35
    levels = [0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9]
    items = []
    for i, level in enumerate(levels):
        path = tmp_path / f"{i}.png"
        Image.fromarray(np.full((32, 32), round(255 * level), np.uint8)).save(path)
        items.append({"image": str(path), "labels": {"Pleural Effusion": 1.0 if level > 0.5 else 0.0}})
    calibration = Calibration(
        items,
        lambda item: {"image": torch.from_numpy(np.asarray(Image.open(item["image"]), np.float32) / 255)[None]},
        4,
        "8 test images",
    )
    image_filter = LabelAgreementFilter(
        NetworkLabelClassifier(Brightness(), "random", image_size=16), min_calibration_positives=3
    )
    record = image_filter.calibrate(calibration)
    assert list(record["thresholds"]) == ["Pleural Effusion"] and record["auroc_real"]["Pleural Effusion"] == 1.0
    low, high = torch.sigmoid(torch.tensor(40 * (0.4 - 0.5))), torch.sigmoid(torch.tensor(40 * (0.6 - 0.5)))
    assert low < record["thresholds"]["Pleural Effusion"] <= high + 1e-6
    assert "Edema" in record["not_checked"] and "Youden's J on 8 test images" == record["operating_point"]


def test_memorisation_rejects_copies_of_training_images_and_keeps_new_ones(prepared_synthetic_dir):
    transform = tiny_parser(DATASET_CONFIG).get_parsed_content("real_transform")
    datalist = str(prepared_synthetic_dir / "datalist.json")
    image_filter = MemorisationFilter("xrv", datalist, str(prepared_synthetic_dir), "training", 8, 99.9, transform,
                                      xrv_weights="random")  # fmt: skip
    image_filter.load()
    record = image_filter.calibrate(None)
    assert record["num_training"] == 8 and record["threshold"] == pytest.approx(record["training_similarity_max"])
    image_filter.use_calibration(record)
    training = load_images(image_filter.training_items[:3], transform)
    results = image_filter.score(torch.cat([training, 1 - training, training.flip(-2)]), [{}] * 9)
    assert [r["pass"] for r in results] == [False] * 3 + [True] * 6
    assert [r["nearest_training"] for r in results[:3]] == [
        str(item["image"]).removeprefix(str(prepared_synthetic_dir) + "/") for item in image_filter.training_items[:3]
    ]
    assert all(r["score"] > 0.9999 for r in results[:3]) and all(r["score"] < record["threshold"] for r in results[3:])
    # in bfloat16 (the sampler's precision where it is fast) the features stay float32 and near the float32 ones,
    # and their cache entries are apart
    from scripts.datasets.filters import PrecisionExtractor

    float32 = image_filter.extract(training)
    image_filter.autocast_dtype = "bfloat16"
    bfloat16 = image_filter.extract(training)
    assert bfloat16.dtype == torch.float32 and not torch.equal(bfloat16, float32)
    assert torch.nn.functional.cosine_similarity(bfloat16, float32).min() > 0.99
    assert PrecisionExtractor(image_filter).identity().endswith("|bfloat16")


def test_missing_training_images_and_unknown_filters_are_one_line_errors(tmp_path, prepared_synthetic_dir):
    with pytest.raises(FilterError, match="training datalist '.*' not found: set --dataset_dir"):
        check_training_images(str(tmp_path / "none.json"), str(tmp_path), "training", 8)
    with pytest.raises(FilterError, match="training-image folder '.*missing' not found"):
        check_training_images(str(prepared_synthetic_dir / "datalist.json"), str(tmp_path / "missing"), "training", 8)
    with pytest.raises(FilterError, match=r"--filters \['sanity', 'blur'\]: each must be one of"):
        load_filters({"sanity": SanityFilter()}, ["sanity", "blur"])


def test_nearest_other_similarities_leave_each_image_out():
    from scripts.evaluation.memorisation import nearest_other_similarities

    features = np.random.default_rng(0).normal(size=(7, 5))
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    similarities = unit @ unit.T
    np.fill_diagonal(similarities, -np.inf)
    assert np.allclose(nearest_other_similarities(features, block=3), similarities.max(axis=1), atol=1e-6)
