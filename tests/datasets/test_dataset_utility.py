"""The utility workflow: one classifier per arm on its images (real, synthetic, both, synthetic_unfiltered), each
tested on real images; per-finding AUROC recomputed independently from the saved weights; arms reused on a re-run."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from helpers.bundle import run_config
from helpers.datasets import TINY_UTILITY, UTILITY_CONFIG, labels_file, tiny_classifier
from scripts.common.errors import root_cause
from scripts.data.layout import CHEXPERT_LABELS
from scripts.datasets import parquet
from scripts.datasets.utility import load_item, real_items
from scripts.evaluation.context import load_images

ARMS = ["real", "synthetic", "both", "synthetic_unfiltered"]


def _write_synthetic_set(folder, items, transform):
    """A data set whose images are the given real images (as 8-bit PNG) with their labels: every third rejected."""
    from scripts.evaluation.labels import read_chexpert_labels

    images = load_images(items, transform)
    labels = read_chexpert_labels(str(items[0]["labels_file"]))
    rows = {"train": [], "rejected": []}
    for index, (item, image) in enumerate(zip(items, images)):
        buffer = io.BytesIO()
        Image.fromarray((image[0].numpy() * 255).round().astype(np.uint8)).save(buffer, format="PNG")
        values = {"file": f"{index}.png", "index": index, **labels[str(item["study_id"])]}
        row = parquet.table_row(buffer.getvalue(), f"{index}.png", values, parquet.COLUMNS)
        rows["rejected" if index % 3 == 2 else "train"].append(row)
    for split, split_rows in rows.items():
        parquet.write_shard(str(folder / parquet.shard_name(split, 0, 1)), split_rows, [])
    return {split: len(split_rows) for split, split_rows in rows.items()}


@pytest.fixture(scope="module")
def utility_run(prepared_synthetic_dir, tmp_path_factory):
    from helpers.bundle import load_parser

    root = tmp_path_factory.mktemp("utility")
    overrides = {
        "dataset_dir": str(prepared_synthetic_dir), "chexpert_labels_file": str(labels_file(prepared_synthetic_dir)),
        "synthetic_dir": str(root / "set"), "utility_dir": str(root / "utility"), "arms": ARMS,
        "test_section": "training",  # the tiny prepared set's test split has one or two images
    }  # fmt: skip
    parser = load_parser([UTILITY_CONFIG, TINY_UTILITY], overrides)
    transform = parser.get_parsed_content("real_transform")
    training = parser.get_parsed_content("real_training_items")()
    from scripts.data.images import datalist_items

    items = datalist_items(str(prepared_synthetic_dir / "datalist.json"), "validation", str(prepared_synthetic_dir))
    items = [{**item, "labels_file": labels_file(prepared_synthetic_dir)} for item in items] * 3
    sizes = _write_synthetic_set(root / "set", items, transform)
    run_config([UTILITY_CONFIG, TINY_UTILITY], overrides)
    return root, overrides, {"real": len(training), **sizes}, transform


def _auroc(scores, targets):
    """Probability that a positive scores above a negative (ties half): an independent AUROC."""
    positives, negatives = scores[targets == 1], scores[targets == 0]
    if not len(positives) or not len(negatives):
        return None
    greater = (positives[:, None] > negatives[None, :]).sum() + 0.5 * (positives[:, None] == negatives[None, :]).sum()
    return float(greater / (len(positives) * len(negatives)))


def test_every_arm_trains_on_its_images_and_is_scored_on_the_real_images(utility_run, prepared_synthetic_dir):
    root, overrides, sizes, transform = utility_run
    summary = json.loads((root / "utility" / "utility.json").read_text())
    counts = {arm: summary["arms"][arm]["num_training_images"] for arm in ARMS}
    assert counts == {
        "real": sizes["real"], "synthetic": sizes["train"], "both": sizes["real"] + sizes["train"],
        "synthetic_unfiltered": sizes["train"] + sizes["rejected"],
    }  # fmt: skip
    test = real_items(str(prepared_synthetic_dir / "datalist.json"), "training", str(prepared_synthetic_dir),
                      str(labels_file(prepared_synthetic_dir)))  # fmt: skip
    loaded = [load_item(item, transform, 32) for item in test]
    images, targets = torch.stack([i["image"] for i in loaded]), torch.stack([i["label"] for i in loaded]).numpy()
    means = {}
    for arm in ARMS:
        network = tiny_classifier()
        network.load_state_dict(torch.load(root / "utility" / arm / "classifier.pt", weights_only=True))
        with torch.no_grad():
            probabilities = torch.sigmoid(network.eval()(images)).numpy()
        expected = {}
        for column, name in enumerate(CHEXPERT_LABELS):
            known = ~np.isnan(targets[:, column])
            expected[name] = _auroc(probabilities[known, column], targets[known, column])
        assert summary["arms"][arm]["auroc"] == pytest.approx(expected, abs=1e-9), arm
        common = summary["comparison"]["findings"]
        means[arm] = np.mean([expected[name] for name in common])
    assert summary["comparison"]["findings"], "some finding has both classes in the test images"
    assert summary["comparison"]["mean_auroc"] == pytest.approx(means)
    assert summary["comparison"]["ratio_to_real"] == pytest.approx({arm: means[arm] / means["real"] for arm in ARMS})
    report = (root / "utility" / "report.md").read_text()
    for arm in ARMS:
        assert f"| {arm} | {counts[arm]} | {means[arm]:.3f} |" in report


def test_a_rerun_reuses_trained_arms_and_a_new_recipe_trains_again(utility_run):
    root, overrides, _, _ = utility_run
    weights = {arm: (root / "utility" / arm / "classifier.pt").stat().st_mtime_ns for arm in ARMS}
    run_config([UTILITY_CONFIG, TINY_UTILITY], {**overrides, "arms": ["real", "synthetic"]})
    assert {arm: (root / "utility" / arm / "classifier.pt").stat().st_mtime_ns for arm in ARMS} == weights
    run_config([UTILITY_CONFIG, TINY_UTILITY], {**overrides, "arms": ["real"], "train#learning_rate": 0.01})
    assert (root / "utility" / "real" / "classifier.pt").stat().st_mtime_ns != weights["real"]
    with pytest.raises(Exception) as raised:
        run_config([UTILITY_CONFIG, TINY_UTILITY], {**overrides, "arms": ["fake"]})
    assert str(root_cause(raised.value)) == (
        "--arms ['fake']: choose from ['real', 'synthetic', 'both', 'synthetic_unfiltered']."
    )
