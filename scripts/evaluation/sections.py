"""The metrics of an evaluation: one function each, registered by name in ``METRICS``.

A metric is ``compute(context, **settings) -> value``: ``context`` is the run's
``scripts.evaluation.context.EvaluationContext`` (the sets, the real test images, features computed once),
``settings`` its entry of ``configs/evaluate.json#metrics``, and ``value`` (JSON) goes to ``summary.json``
under the metric's name, in the order of the config. A metric that does not apply to the run (no autoencoder,
no generated set of its kind...) returns an empty dict or list. Its ``Metric`` entry also says how the report
shows it. Adding a metric: its function, its entry in ``METRICS``, its entry in ``configs/evaluate.json#metrics``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from scripts.common.progress import progress
from scripts.data.images import iterate_images
from scripts.evaluation import adherence as adherence_lib
from scripts.evaluation import fid as fid_lib
from scripts.evaluation import fidelity as fidelity_lib
from scripts.evaluation import memorisation as memorisation_lib
from scripts.evaluation import metrics as image_metrics
from scripts.evaluation import pathology, report, xrv
from scripts.evaluation.context import REAL_TEST, EvaluationContext, load_images
from scripts.evaluation.extractors import XrvExtractor
from scripts.evaluation.labels import read_chexpert_labels
from scripts.evaluation.plan import REPORTS, UNCONDITIONAL, report_text

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Metric:
    """One named metric of the evaluation.

    Attributes:
        compute: ``(context, **settings) -> summary value``.
        table: the value maps sets to numbers, shown as rows of the report's metrics table.
        render: ``(value, figures) -> HTML parts`` of the metric's own report section (``scripts.evaluation.report``).
    """

    compute: Callable[..., object]
    table: bool = False
    render: Callable[[object, Mapping[str, str]], list[str]] | None = None


def reconstruction_summary(evaluation_dir, items, transform, autoencoder, device, batch_size, kernel_size, weights):
    """MS-SSIM / SSIM / PSNR of the autoencoder's reconstructions of ``items``: per image to
    ``reconstruction.csv``, summarised (mean, std, ``num_images``) in the returned dict."""
    batches = progress(
        iterate_images(items, transform, batch_size),
        total=-(-len(items) // batch_size),
        description="reconstruction",
    )
    rows = image_metrics.reconstruction_scores(
        autoencoder, batches, device=device, kernel_size=kernel_size, weights=weights
    )
    image_metrics.write_csv(rows, os.path.join(evaluation_dir, "reconstruction.csv"))
    return image_metrics.summarise(rows)


def reconstruction(
    context: EvaluationContext,
    items: Sequence[dict] = (),
    autoencoder=None,
    kernel_size: int = image_metrics.MS_SSIM_KERNEL_SIZE,
    weights: Sequence[float] = image_metrics.MS_SSIM_WEIGHTS,
) -> dict:
    """``{"test": reconstruction summary}`` of the test ``items`` (loaded like the real test images)."""
    if not items or autoencoder is None:
        return {}
    logger.info("Reconstruction of %d test images", len(items))
    test = reconstruction_summary(
        context.evaluation_dir, items, context.real_transform, autoencoder, context.device, context.batch_size,
        kernel_size, weights,
    )  # fmt: skip
    return {"test": test}


def diversity(
    context: EvaluationContext,
    max_pairs: int | None = 10_000,
    kernel_size: int = image_metrics.MS_SSIM_KERNEL_SIZE,
    weights: Sequence[float] = image_metrics.MS_SSIM_WEIGHTS,
) -> dict:
    """Pairwise MS-SSIM of the unconditional samples and of the real test images (``metrics.pairwise_diversity``)."""
    settings = {"max_pairs": max_pairs, "seed": context.seed, "batch_size": context.batch_size}
    settings.update(kernel_size=kernel_size, weights=weights, device=context.device, progress=True)
    result = {}
    if UNCONDITIONAL in context.generated:
        result[UNCONDITIONAL] = image_metrics.pairwise_diversity(
            load_images(context.generated[UNCONDITIONAL]), **settings
        )
    if len(context.real_items) >= 2:
        real = load_images(context.real_items, context.real_transform)
        result[REAL_TEST] = image_metrics.pairwise_diversity(real, **settings)
    return result


def fid(context: EvaluationContext, protocols: Sequence[str] = ("xrv",)) -> dict:
    """torchxrayvision FID of each generated set against the real test images, per input protocol."""
    result = {}
    weights_source = getattr(context.xrv_model, "weights_source", "")
    for protocol in protocols:
        real = context.features(XrvExtractor(context.xrv_model, protocol, xrv.REAL), REAL_TEST)
        for kind in context.generated:
            generated = context.features(XrvExtractor(context.xrv_model, protocol, xrv.GENERATED), kind)
            scores = fid_lib.fid_summary(generated, real, protocol, weights_source)
            result[f"{kind}_vs_{REAL_TEST}/{protocol}"] = scores
            if scores["warning"]:
                context.warn(scores["warning"], once=True)
    return result


def adherence(context: EvaluationContext, labels_file: str | None = None) -> list:
    """Prompt adherence rows per finding (``scripts.evaluation.adherence.adherence``)."""
    return adherence_lib.adherence(
        context.xrv_model, context.sets, context.samples_dir, context.real_items, context.real_transform,
        labels_file, context.batch_size,
    )  # fmt: skip


def fidelity(
    context: EvaluationContext,
    kid_num_subsets: int = fidelity_lib.KID_SUBSETS,
    kid_subset_size: int = fidelity_lib.KID_SUBSET_SIZE,
    prdc_nearest_k: int = fidelity_lib.PRDC_NEAREST_K,
) -> dict:
    """FID, KID and PRDC of each generated set against the real test images, per feature extractor."""
    context.note_random_extractors()
    features = context.extractor_features()
    scores = {"kid_num_subsets": kid_num_subsets, "kid_subset_size": kid_subset_size, "prdc_nearest_k": prdc_nearest_k}
    return {
        f"{kind}_vs_{REAL_TEST}/{name}": fidelity_lib.fidelity_scores(
            features[name][kind], features[name][REAL_TEST], seed=context.seed, **scores
        )
        for kind in context.generated
        for name in context.extractors
    }


def per_pathology(
    context: EvaluationContext,
    labels_file: str | None = None,
    min_images: int = 10,
    kid_num_subsets: int = fidelity_lib.KID_SUBSETS,
    kid_subset_size: int = fidelity_lib.KID_SUBSET_SIZE,
    prdc_nearest_k: int = fidelity_lib.PRDC_NEAREST_K,
) -> list:
    """Fidelity per finding: report-conditioned samples whose report names it vs real test images whose report
    does (labels from ``labels_file`` when given, else keyword rules); findings with fewer than
    ``max(2, min_images)`` images in a set are skipped."""
    if REPORTS not in context.generated or not context.extractors:
        return []
    context.note_random_extractors()
    features = context.extractor_features()
    labels = read_chexpert_labels(labels_file) if labels_file else None
    generated_items = context.generated[REPORTS]
    sources = context.by_kind[REPORTS].get("source_items") or [{} for _ in generated_items]
    generated_found = [
        pathology.item_findings(source, item["prompt"], labels) for source, item in zip(sources, generated_items)
    ]
    real_found = [pathology.item_findings(item, report_text(item), labels) for item in context.real_items]
    generated_groups = pathology.groups([found for found, _ in generated_found])
    real_groups = pathology.groups([found for found, _ in real_found])
    decided_by = "+".join(sorted({how for _, how in generated_found + real_found}))
    scores = {"kid_num_subsets": kid_num_subsets, "kid_subset_size": kid_subset_size, "prdc_nearest_k": prdc_nearest_k}
    rows = []
    for finding in pathology.FINDINGS:
        generated_rows, real_rows = generated_groups.get(finding, []), real_groups.get(finding, [])
        row = {"finding": finding, "num_generated": len(generated_rows), "num_real": len(real_rows)}
        row["decided_by"] = decided_by
        if min(len(generated_rows), len(real_rows)) < max(2, int(min_images)):
            row["skipped"] = f"fewer than {max(2, int(min_images))} images in a set"
        else:
            for name, by_set in features.items():
                row[name] = fidelity_lib.fidelity_scores(
                    by_set[REPORTS][generated_rows], by_set[REAL_TEST][real_rows], seed=context.seed, **scores
                )
        rows.append(row)
    return rows


def memorisation(
    context: EvaluationContext,
    training_items: Sequence[dict] = (),
    extractor: str | None = "raddino",
    num_pairs: int = 8,
) -> dict:
    """Nearest training image of every generated image (``scripts.evaluation.memorisation``): the summary,
    ``memorisation.csv`` and a figure of the ``num_pairs`` closest pairs (``figures["memorisation_pairs"]``)."""
    if not (training_items and extractor and context.generated):
        return {}
    if extractor not in context.extractors:
        raise ValueError(
            f"memorisation_extractor '{extractor}' is not one of the feature extractors "
            f"{list(context.extractors)}: add it to --feature_extractors or choose another."
        )
    context.note_random_extractors()
    features = context.extractor_features()[extractor]
    training = context.features(context.extractors[extractor], "training", training_items, context.real_transform)
    generated_items = [item for items in context.generated.values() for item in items]
    generated_features = np.concatenate([features[kind] for kind in context.generated])
    result, rows = memorisation_lib.check(
        generated_items, generated_features, training_items, training, features[REAL_TEST], extractor
    )
    memorisation_lib.write_rows(rows, os.path.join(context.evaluation_dir, "memorisation.csv"))
    by_path = {os.fspath(item["image"]): item for item in training_items}
    pairs = [
        (load_images([{"image": row["generated"]}])[0],
         load_images([by_path[row["nearest_training"]]], context.real_transform)[0], row["similarity"])
        for row in rows[: int(num_pairs)]
    ]  # fmt: skip
    if pairs:
        figure = os.path.join(context.evaluation_dir, "grids", "memorisation_pairs.png")
        context.figures[report.MEMORISATION_PAIRS] = memorisation_lib.pairs_figure(pairs, figure)
    return result


#: metric name (a key of summary.json and of configs/evaluate.json#metrics) -> how it is computed and shown
METRICS: dict[str, Metric] = {
    "reconstruction": Metric(reconstruction, table=True),
    "diversity": Metric(diversity, table=True),
    "fid": Metric(fid, table=True),
    "adherence": Metric(adherence, render=report.adherence_section),
    "fidelity": Metric(fidelity, render=report.fidelity_section),
    "per_pathology": Metric(per_pathology, render=report.per_pathology_section),
    "memorisation": Metric(memorisation, render=report.memorisation_section),
}


def get_metric(name: str) -> Metric:
    """The registered metric ``name``; a one-line error names the registered ones."""
    if name not in METRICS:
        raise ValueError(f"Unknown evaluation metric {name!r} in metrics: choose from {list(METRICS)}.")
    return METRICS[name]
