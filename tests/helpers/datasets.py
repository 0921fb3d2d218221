"""Test helpers for the data-set workflow: the tiny label classifier, its weights, and the overrides of a tiny run.

``dataset_overrides(prepared_dir, synthetic_dir, classifier_weights)`` points ``configs/dataset.json`` at the
session's prepared synthetic data (``prepared_synthetic_dir``; its label table is in the raw tree beside it), the
tiny classifier of ``configs/tiny/dataset_utility.json`` and few images, so a whole data set takes seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from helpers.bundle import CONFIGS
from scripts.data.synthetic import CHEXPERT_CSV

DATASET_CONFIG = str(CONFIGS / "dataset.json")
UTILITY_CONFIG = str(CONFIGS / "dataset_utility.json")
TINY_UTILITY = str(CONFIGS / "tiny" / "dataset_utility.json")
TINY_CLASSIFIER = json.loads(Path(TINY_UTILITY).read_text(encoding="utf-8"))


def labels_file(prepared_dir) -> Path:
    """The CheXpert-format table of the prepared synthetic data (written by the generator into the raw tree)."""
    return Path(prepared_dir).parent / "raw" / CHEXPERT_CSV


def tiny_classifier(seed: int = 0) -> torch.nn.Module:
    """The tiny classifier network of ``configs/tiny/dataset_utility.json``, initialised from ``seed``."""
    from monai.bundle import ConfigParser

    torch.manual_seed(seed)
    return ConfigParser({"net": TINY_CLASSIFIER["classifier_def"]}).get_parsed_content("net")()


def write_classifier_weights(path, seed: int = 0) -> Path:
    torch.save(tiny_classifier(seed).state_dict(), path)
    return Path(path)


def dataset_overrides(prepared_dir, synthetic_dir, classifier_weights, **overrides) -> dict:
    """Overrides of a tiny data-set run: plan from the prepared reports, every filter, the tiny classifier for label
    agreement and its features for memorisation (``@classifier_features``), 8 training images."""
    return {
        "synthetic_dir": str(synthetic_dir),
        "dataset_dir": str(prepared_dir),
        "chexpert_labels_file": str(labels_file(prepared_dir)),
        "plan_size": 6,
        "rows_per_shard": 4,
        "label_classifier": "@utility_classifier",
        "label_classifier_weights": str(classifier_weights),
        "classifier_def": TINY_CLASSIFIER["classifier_def"],
        "classifier_image_size": TINY_CLASSIFIER["classifier_image_size"],
        "label_min_calibration_positives": 1,
        "memorisation_extractor": "@classifier_features",
        "memorisation_training_images": 8,
        **overrides,
    }
