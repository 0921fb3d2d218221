"""Full evaluation of a model: which images to generate, then every metric, a JSON summary and a report.

``configs/evaluate.json`` (an overlay of ``inference.json``) wires it: ``plan.plan_sample_sets``
decides the generated sets, ``plan.write_prompts_csv`` turns them into the inference workflow's prompts
file, the inference workflow writes the images and ``manifest.csv`` into ``samples/``, and ``run_evaluation``
computes the metrics listed in the config's ``metrics`` section (``scripts.evaluation.sections.METRICS``),
each on the shared ``scripts.evaluation.context.EvaluationContext``:

- reconstruction: MS-SSIM / SSIM / PSNR of autoencoder reconstructions of test images (per-image CSV);
- diversity: mean pairwise MS-SSIM of the unconditional samples and of the real test images;
- FID (torchxrayvision features) of each generated set against the real test images, per protocol;
- prompt adherence: torchxrayvision probability of each finding on images generated from that finding's
  prompt vs from the "no finding" prompt (and its AUROC), plus the classifier's AUROC on labelled real
  test images when a CheXpert label file is given;
- fidelity per feature extractor (torchxrayvision, RAD-DINO, Inception; ``scripts.evaluation.extractors``):
  FID, KID and precision / recall / density / coverage of each generated set against the real test images;
- the same per pathology: report-conditioned samples and real test images grouped by the findings of their
  reports (labels when given, else keyword rules: ``scripts.evaluation.pathology``);
- memorisation: each generated image's nearest training image (``scripts.evaluation.memorisation``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence

from scripts.common.files import atomic_write_json
from scripts.evaluation.context import EvaluationContext, load_images
from scripts.evaluation.metrics import MS_SSIM_KERNEL_SIZE, MS_SSIM_WEIGHTS
from scripts.evaluation.plan import set_files
from scripts.evaluation.report import metrics_table_rows, save_grid, write_html_report
from scripts.evaluation.sections import get_metric, reconstruction_summary

logger = logging.getLogger(__name__)


def run_evaluation(
    context: EvaluationContext,
    metrics: Mapping[str, Mapping | None],
    grid_images: int = 8,
    settings: dict | None = None,
) -> dict:
    """Compute the ``metrics`` on ``context``, write ``summary.json``, ``report.html`` and the sample grids (the
    first ``grid_images`` of each set) to ``context.evaluation_dir``.

    Args:
        metrics: metric name (``scripts.evaluation.sections.METRICS``) -> its settings (keyword arguments of its
            function), computed in this order; the summary holds one key per metric after ``settings`` and
            ``warnings``.
        settings: the sampling settings recorded in the summary.

    Returns the summary dict (also written to ``summary.json``).
    """
    os.makedirs(context.evaluation_dir, exist_ok=True)
    summary: dict = {"settings": dict(settings or {}), "warnings": context.warnings}
    if getattr(context.xrv_model, "random_weights", False):
        context.warn("torchxrayvision network has RANDOM weights: FID and adherence numbers are not meaningful.")
    summary["settings"]["xrv_weights"] = getattr(context.xrv_model, "weights_source", "")
    for name, metric_settings in metrics.items():
        summary[name] = get_metric(name).compute(context, **dict(metric_settings or {}))
    table_rows, sections = [], []
    for name in metrics:
        metric = get_metric(name)
        table_rows += metrics_table_rows(name, summary[name]) if metric.table else []
        sections += metric.render(summary[name], context.figures) if metric.render else []
    grids = write_grids(context, grid_images)
    atomic_write_json(os.path.join(context.evaluation_dir, "summary.json"), summary)
    report_path = os.path.join(context.evaluation_dir, "report.html")
    write_html_report(context.warnings, table_rows, sections, grids, report_path)
    logger.info("Evaluation written to %s (summary.json, report.html)", context.evaluation_dir)
    return summary


def write_grids(context: EvaluationContext, grid_images: int) -> list[tuple[str, str]]:
    """A PNG grid of the first ``grid_images`` of each sample set and of the real test images, in
    ``<evaluation_dir>/grids``; returns (title, path) pairs."""
    grids_dir = os.path.join(context.evaluation_dir, "grids")
    os.makedirs(grids_dir, exist_ok=True)
    grids = []
    for sample_set in context.sets:
        items = set_files(sample_set, context.samples_dir)[:grid_images]
        title = f"{sample_set['name']}: {sample_set['rows'][0]['prompt'] or '(empty prompt)'}"
        grids.append((title, save_grid(load_images(items), os.path.join(grids_dir, f"{sample_set['name']}.png"))))
    if context.real_items:
        real = load_images(context.real_items[:grid_images], context.real_transform)
        grids.append(("real test images", save_grid(real, os.path.join(grids_dir, "real_test.png"))))
    return grids


def reconstruction_only(
    evaluation_dir: str,
    transform: Callable,
    items: Sequence[dict],
    autoencoder,
    device="cpu",
    batch_size: int = 16,
    kernel_size: int = MS_SSIM_KERNEL_SIZE,
    weights: Sequence[float] = MS_SSIM_WEIGHTS,
) -> dict:
    """Reconstruction metrics only (``configs/evaluate_reconstruction.json``): CSV + ``reconstruction.json``.

    ``items``, ``autoencoder``, ``kernel_size`` and ``weights`` are the settings of the ``reconstruction`` metric.
    """
    summary = reconstruction_summary(
        evaluation_dir, items, transform, autoencoder, device, batch_size, kernel_size, weights
    )
    atomic_write_json(os.path.join(evaluation_dir, "reconstruction.json"), summary)
    logger.info("Reconstruction MS-SSIM %.4f over %d images", summary["ms_ssim_mean"], summary["num_images"])
    return summary
