"""Prompt adherence: does a finding's prompt raise the classifier's probability of that finding?"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from scripts.data.images import iterate_images
from scripts.evaluation import xrv
from scripts.evaluation.labels import read_chexpert_labels
from scripts.evaluation.plan import FINDING, NO_FINDING, set_files


def auroc(positive_scores: Sequence[float], negative_scores: Sequence[float]) -> float | None:
    """Area under the ROC curve (Mann–Whitney U / n₊n₋); None without both classes."""
    from scipy.stats import mannwhitneyu

    if len(positive_scores) == 0 or len(negative_scores) == 0:
        return None
    statistic = mannwhitneyu(positive_scores, negative_scores, alternative="two-sided").statistic
    return float(statistic / (len(positive_scores) * len(negative_scores)))


def adherence(
    classifier,
    sets: Sequence[dict],
    samples_dir: str,
    real_items: Sequence[dict] = (),
    real_transform: Callable | None = None,
    labels_file: str | None = None,
    batch_size: int = 16,
) -> list[dict]:
    """Per finding: mean classifier probability of its label on its own samples vs the no-finding samples.

    Returns rows ``{"finding", "prompt", "xrv_label", "num_samples", "mean_probability",
    "no_finding_mean_probability", "difference", "auroc_generated", "auroc_real", "num_real_positive",
    "num_real_negative"}``; labels absent from the classifier give ``None`` scores.
    """
    by_kind = {s["kind"]: s for s in sets}
    if NO_FINDING not in by_kind:
        return []
    label_index = {name: i for i, name in enumerate(classifier.pathologies) if name}

    def probabilities(items: Sequence[dict], transform: Callable | None = None) -> torch.Tensor:
        """(N, 18) classifier probabilities of the images of ``items``."""
        batches = iterate_images(items, transform, batch_size=batch_size)
        return torch.cat([xrv.pathology_probabilities(classifier, images) for _, images in batches])

    baseline = probabilities(set_files(by_kind[NO_FINDING], samples_dir))
    real_probabilities, real_labels = None, None
    if labels_file and real_items:
        labels = read_chexpert_labels(labels_file)
        real_labels = [labels.get(str(item.get("study_id", "")).lstrip("s"), {}) for item in real_items]
        real_probabilities = probabilities(real_items, real_transform)
    rows = []
    for sample_set in sets:
        if sample_set["kind"] != FINDING:
            continue
        label = sample_set.get("xrv_label")
        row = {
            "finding": sample_set["finding"],
            "prompt": sample_set["rows"][0]["prompt"],
            "xrv_label": label,
            "num_samples": sample_set["rows"][0]["num_samples"],
            "mean_probability": None,
            "no_finding_mean_probability": None,
            "difference": None,
            "auroc_generated": None,
            "auroc_real": None,
            "num_real_positive": 0,
            "num_real_negative": 0,
        }
        if label in label_index:
            column = label_index[label]
            own = probabilities(set_files(sample_set, samples_dir))[:, column].numpy()
            base = baseline[:, column].numpy()
            row.update(
                mean_probability=float(own.mean()),
                no_finding_mean_probability=float(base.mean()),
                difference=float(own.mean() - base.mean()),
                auroc_generated=auroc(own, base),
            )
            if real_probabilities is not None:
                # CheXpert: 1 positive, 0 negative, -1 uncertain (left out), blank = not mentioned (negative)
                values = [lab.get(sample_set["finding"], math.nan) for lab in real_labels]
                scores = real_probabilities[:, column].numpy()
                positive = [s for s, v in zip(scores, values) if v == 1.0]
                negative = [s for s, v, lab in zip(scores, values, real_labels) if lab and (v == 0.0 or math.isnan(v))]
                row.update(
                    auroc_real=auroc(positive, negative),
                    num_real_positive=len(positive),
                    num_real_negative=len(negative),
                )
        rows.append(row)
    return rows
