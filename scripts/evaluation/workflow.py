"""Full evaluation of a model: which images to generate, then every metric, a JSON summary and a report.

``configs/evaluate.json`` (merged over ``inference.json`` and ``data.json``) wires it: ``plan.plan_sample_sets``
decides the generated sets, ``plan.write_prompts_csv`` turns them into the inference workflow's prompts
file, the inference workflow writes the images and ``manifest.csv`` into ``samples/``, and ``run_evaluation``
measures:

- reconstruction: MS-SSIM / SSIM / PSNR of autoencoder reconstructions of test images (per-image CSV);
- diversity: mean pairwise MS-SSIM of the unconditional samples and of the real test images;
- FID (torchxrayvision features) of each generated set against the real test images, per protocol;
- prompt adherence: torchxrayvision probability of each finding on images generated from that finding's
  prompt vs from the "no finding" prompt (and its AUROC), plus the classifier's AUROC on labelled real
  test images when a CheXpert label file is given.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence

import torch

from scripts.common.files import atomic_write_json
from scripts.common.progress import progress
from scripts.data.images import iterate_images
from scripts.evaluation import fid as fid_lib
from scripts.evaluation import metrics, xrv
from scripts.evaluation.adherence import adherence
from scripts.evaluation.plan import REPORTS, UNCONDITIONAL, set_files
from scripts.evaluation.report import save_grid, write_html_report

logger = logging.getLogger(__name__)


def load_images(items: Sequence[dict], transform: Callable | None = None, batch_size: int = 16) -> torch.Tensor:
    """(N, 1, H, W) images in [0, 1] of ``items``."""
    return torch.cat([images for _, images in iterate_images(items, transform, batch_size=batch_size)])


def run_evaluation(
    evaluation_dir: str,
    samples_dir: str,
    sets: Sequence[dict],
    real_items: Sequence[dict],
    real_transform: Callable,
    autoencoder: torch.nn.Module | None,
    xrv_model,
    reconstruction_items: Sequence[dict] = (),
    fid_protocols: Sequence[str] = ("xrv",),
    msssim_kernel_size: int = metrics.MS_SSIM_KERNEL_SIZE,
    msssim_weights: Sequence[float] = metrics.MS_SSIM_WEIGHTS,
    diversity_max_pairs: int | None = 10_000,
    labels_file: str | None = None,
    seed: int = 0,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    grid_images: int = 8,
    settings: dict | None = None,
) -> dict:
    """Compute every metric, write ``summary.json``, ``report.html``, grids and the reconstruction CSV.

    Returns the summary dict (also written to ``evaluation_dir/summary.json``).
    """
    os.makedirs(evaluation_dir, exist_ok=True)
    summary: dict = {
        "settings": dict(settings or {}),
        "warnings": [],
        "reconstruction": {},
        "diversity": {},
        "fid": {},
        "adherence": [],
    }
    if getattr(xrv_model, "random_weights", False):
        summary["warnings"].append(
            "torchxrayvision network has RANDOM weights: FID and adherence numbers are not meaningful."
        )
    summary["settings"]["xrv_weights"] = getattr(xrv_model, "weights_source", "")
    if reconstruction_items and autoencoder is not None:
        logger.info("Reconstruction of %d test images", len(reconstruction_items))
        summary["reconstruction"]["test"] = _reconstruction(
            evaluation_dir, reconstruction_items, real_transform, autoencoder, device, batch_size,
            msssim_kernel_size, msssim_weights,
        )  # fmt: skip

    by_kind = {s["kind"]: s for s in sets}
    generated = {kind: set_files(by_kind[kind], samples_dir) for kind in (UNCONDITIONAL, REPORTS) if kind in by_kind}
    diversity_kwargs = {
        "max_pairs": diversity_max_pairs,
        "seed": seed,
        "batch_size": batch_size,
        "kernel_size": msssim_kernel_size,
        "weights": msssim_weights,
        "device": device,
        "progress": True,
    }
    if UNCONDITIONAL in generated:
        summary["diversity"][UNCONDITIONAL] = metrics.pairwise_diversity(
            load_images(generated[UNCONDITIONAL]), **diversity_kwargs
        )
    if len(real_items) >= 2:
        summary["diversity"]["real_test"] = metrics.pairwise_diversity(
            load_images(real_items, real_transform), **diversity_kwargs
        )

    cache_dir = os.path.join(evaluation_dir, "feature_cache")
    for protocol in fid_protocols:
        real = fid_lib.set_features(
            xrv_model, real_items, "real_test", protocol, xrv.REAL, real_transform, cache_dir, batch_size, progress=True
        )
        for kind, items in generated.items():
            features = fid_lib.set_features(
                xrv_model, items, kind, protocol, xrv.GENERATED, None, cache_dir, batch_size, progress=True
            )
            result = fid_lib.fid_summary(features, real, protocol, getattr(xrv_model, "weights_source", ""))
            summary["fid"][f"{kind}_vs_real_test/{protocol}"] = result
            if result["warning"] and result["warning"] not in summary["warnings"]:
                summary["warnings"].append(result["warning"])

    summary["adherence"] = adherence(xrv_model, sets, samples_dir, real_items, real_transform, labels_file, batch_size)

    grids_dir = os.path.join(evaluation_dir, "grids")
    os.makedirs(grids_dir, exist_ok=True)
    grids = []
    for sample_set in sets:
        items = set_files(sample_set, samples_dir)[:grid_images]
        title = f"{sample_set['name']}: {sample_set['rows'][0]['prompt'] or '(empty prompt)'}"
        grids.append((title, save_grid(load_images(items), os.path.join(grids_dir, f"{sample_set['name']}.png"))))
    if real_items:
        grids.append(
            (
                "real test images",
                save_grid(
                    load_images(real_items[:grid_images], real_transform), os.path.join(grids_dir, "real_test.png")
                ),
            )
        )
    atomic_write_json(os.path.join(evaluation_dir, "summary.json"), summary)
    write_html_report(summary, grids, os.path.join(evaluation_dir, "report.html"))
    logger.info("Evaluation written to %s (summary.json, report.html)", evaluation_dir)
    return summary


def _batches(items: Sequence[dict], transform: Callable | None, batch_size: int, description: str):
    """Image batches of ``items`` under a progress bar."""
    return progress(
        iterate_images(items, transform, batch_size), total=-(-len(items) // batch_size), description=description
    )


def _reconstruction(evaluation_dir, items, transform, autoencoder, device, batch_size, kernel_size, weights) -> dict:
    """MS-SSIM / SSIM / PSNR of the autoencoder's reconstructions of ``items``: per image to
    ``reconstruction.csv``, summarised in the returned dict."""
    batches = _batches(items, transform, batch_size, "reconstruction")
    rows = metrics.reconstruction_scores(autoencoder, batches, device=device, kernel_size=kernel_size, weights=weights)
    metrics.write_csv(rows, os.path.join(evaluation_dir, "reconstruction.csv"))
    return metrics.summarise(rows)


def reconstruction_only(
    evaluation_dir: str,
    items: Sequence[dict],
    transform: Callable,
    autoencoder,
    device="cpu",
    batch_size: int = 16,
    msssim_kernel_size: int = metrics.MS_SSIM_KERNEL_SIZE,
    msssim_weights: Sequence[float] = metrics.MS_SSIM_WEIGHTS,
) -> dict:
    """Reconstruction metrics only (``configs/evaluate_reconstruction.json``): CSV + ``reconstruction.json``."""
    summary = _reconstruction(
        evaluation_dir, items, transform, autoencoder, device, batch_size, msssim_kernel_size, msssim_weights
    )
    atomic_write_json(os.path.join(evaluation_dir, "reconstruction.json"), summary)
    logger.info("Reconstruction MS-SSIM %.4f over %d images", summary["ms_ssim_mean"], summary["num_images"])
    return summary
