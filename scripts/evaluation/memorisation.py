"""Memorisation check: how close each generated image comes to its nearest training image.

Reviewers of synthetic medical data ask first whether a model reproduces its training patients. For
each generated image the nearest training image in a feature space (cosine similarity of the features,
1 = same direction) is found. The similarity alone is hard to read, so the same is measured for real test
images, which the model never saw: a generated image closer to a training image than any test image
comes (``num_closer_than_test``) deserves a look, and the closest pairs are shown side by side in the
report. Near-copies have similarities close to 1 in any of the extractors; which extractor to use is a
setting (RAD-DINO, trained for image retrieval among others, by default).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from scripts.common.files import atomic_path

_BLOCK = 4096


def _unit(features) -> torch.Tensor:
    matrix = torch.as_tensor(np.asarray(features), dtype=torch.float32)
    return matrix / matrix.norm(dim=1, keepdim=True).clamp_min(1e-12)


def nearest_neighbours(queries, references) -> tuple[np.ndarray, np.ndarray]:
    """(indices (N,), cosine similarities (N,)) of each query's nearest reference, for (N, D) and (M, D) features."""
    queries, references = _unit(queries), _unit(references)
    indices, similarities = [], []
    for start in range(0, len(queries), _BLOCK):
        best = (queries[start : start + _BLOCK] @ references.T).max(dim=1)
        indices.append(best.indices)
        similarities.append(best.values)
    return torch.cat(indices).numpy(), torch.cat(similarities).double().numpy()


def nearest_other_similarities(features, block: int = 1024) -> np.ndarray:
    """(N,) cosine similarity of each of (N, D) ``features`` to its nearest *other* row: how close the closest
    pair of distinct real images of a set come (a set of one row gives ``[-1]``)."""
    matrix = _unit(features)
    best = []
    for start in range(0, len(matrix), block):
        similarities = matrix[start : start + block] @ matrix.T
        rows = torch.arange(similarities.shape[0])
        similarities[rows, rows + start] = -1.0
        best.append(similarities.max(dim=1).values)
    return torch.cat(best).double().numpy()


def check(
    generated_items: Sequence[dict],
    generated_features,
    training_items: Sequence[dict],
    training_features,
    test_features=None,
    extractor: str = "",
) -> tuple[dict, list[dict]]:
    """Summary and per-image rows (closest first) of the nearest training image of each generated image.

    Returns ``(summary, rows)``: the summary holds the similarity's mean, median and max over the generated
    images, the same over ``test_features`` (real test images) when given, and ``num_closer_than_test``
    (generated images more similar to a training image than the most similar test image is); each row
    ``{"generated", "nearest_training", "similarity"}``.
    """
    indices, similarities = nearest_neighbours(generated_features, training_features)
    rows = sorted(
        (
            {
                "generated": os.fspath(item["image"]),
                "nearest_training": os.fspath(training_items[index]["image"]),
                "similarity": float(similarity),
            }
            for item, index, similarity in zip(generated_items, indices, similarities)
        ),
        key=lambda row: -row["similarity"],
    )
    summary = {
        "extractor": extractor,
        "num_generated": int(len(similarities)),
        "num_training": int(len(training_items)),
        "similarity_mean": float(similarities.mean()),
        "similarity_median": float(np.median(similarities)),
        "similarity_max": float(similarities.max()),
    }
    if test_features is not None and len(test_features):
        _, test_similarities = nearest_neighbours(test_features, training_features)
        summary.update(
            num_test=int(len(test_similarities)),
            test_similarity_mean=float(test_similarities.mean()),
            test_similarity_max=float(test_similarities.max()),
            num_closer_than_test=int((similarities > test_similarities.max()).sum()),
        )
    return summary, rows


def write_rows(rows: Sequence[dict], path: str) -> str:
    """``memorisation.csv``: generated, nearest_training, similarity (closest first)."""
    with atomic_path(path) as temporary, open(temporary, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["generated", "nearest_training", "similarity"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def pairs_figure(pairs: Sequence[tuple[torch.Tensor, torch.Tensor, float]], path: str, side: int = 192) -> str:
    """PNG of pairs (generated (1, H, W), nearest training (1, H, W), similarity) side by side, one pair per
    column: generated on top, the training image below, the similarity above."""
    header, gap = 14, 6
    figure = Image.new("L", (len(pairs) * (side + gap), 2 * side + header + gap), 255)
    draw = ImageDraw.Draw(figure)
    for column, (generated, training, similarity) in enumerate(pairs):
        left = column * (side + gap)
        draw.text((left + 2, 1), f"cos {similarity:.3f}", fill=0)
        for row, image in enumerate((generated, training)):
            pixels = (image[0].float().clamp(0, 1).numpy() * 255).round().astype(np.uint8)
            picture = Image.fromarray(pixels, mode="L").resize((side, side), Image.Resampling.BILINEAR)
            figure.paste(picture, (left, header + row * (side + gap)))
    with atomic_path(path) as temporary:
        figure.save(temporary, format="PNG")
    return path
