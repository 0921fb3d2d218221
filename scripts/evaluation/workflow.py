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
from collections.abc import Callable, Sequence

import numpy as np
import torch

from scripts.common.files import atomic_write_json
from scripts.common.progress import progress
from scripts.data.images import iterate_images
from scripts.evaluation import extractors as extractors_lib
from scripts.evaluation import fid as fid_lib
from scripts.evaluation import fidelity, memorisation, metrics, pathology, xrv
from scripts.evaluation.adherence import adherence
from scripts.evaluation.labels import read_chexpert_labels
from scripts.evaluation.plan import REPORTS, UNCONDITIONAL, report_text, set_files
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
    extractors: dict | None = None,
    kid_num_subsets: int = fidelity.KID_SUBSETS,
    kid_subset_size: int = fidelity.KID_SUBSET_SIZE,
    prdc_nearest_k: int = fidelity.PRDC_NEAREST_K,
    pathology_min_images: int = 10,
    training_items: Sequence[dict] = (),
    memorisation_extractor: str | None = "raddino",
    memorisation_pairs: int = 8,
) -> dict:
    """Compute every metric, write ``summary.json``, ``report.html``, grids and the reconstruction CSV.

    ``extractors`` (name -> ``scripts.evaluation.extractors.FeatureExtractor``) give the fidelity, per-pathology
    and memorisation sections; ``training_items`` (loaded with ``real_transform``) are searched for each
    generated image's nearest neighbour with ``memorisation_extractor``.

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
        "fidelity": {},
        "per_pathology": [],
        "memorisation": {},
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

    extractors = dict(extractors or {})
    for name, extractor in extractors.items():
        if extractor.random_weights and name != "xrv":  # the torchxrayvision network is warned about above
            summary["warnings"].append(
                f"Feature extractor '{name}' has RANDOM weights: its numbers are not meaningful."
            )
    features = {
        name: {
            key: extractors_lib.set_features(
                extractor, items, key, real_transform if key == "real_test" else None, cache_dir, batch_size, True
            )
            for key, items in (("real_test", real_items), *generated.items())
        }
        for name, extractor in extractors.items()
    }
    scores = {"kid_num_subsets": kid_num_subsets, "kid_subset_size": kid_subset_size, "prdc_nearest_k": prdc_nearest_k}
    for kind in generated:
        for name in extractors:
            result = fidelity_scores(features[name][kind], features[name]["real_test"], seed=seed, **scores)
            summary["fidelity"][f"{kind}_vs_real_test/{name}"] = result
    if REPORTS in generated and extractors:
        summary["per_pathology"] = _per_pathology(
            by_kind[REPORTS], generated[REPORTS], real_items, labels_file, features, pathology_min_images, seed, scores
        )
    pairs_figure = None
    if training_items and memorisation_extractor and generated:
        if memorisation_extractor not in extractors:
            raise ValueError(
                f"memorisation_extractor '{memorisation_extractor}' is not one of the feature extractors "
                f"{list(extractors)}: add it to --feature_extractors or choose another."
            )
        summary["memorisation"], pairs_figure = _memorisation(
            evaluation_dir, extractors[memorisation_extractor], memorisation_extractor, generated, features,
            training_items, real_transform, cache_dir, batch_size, memorisation_pairs,
        )  # fmt: skip

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
    write_html_report(summary, grids, os.path.join(evaluation_dir, "report.html"), pairs_figure)
    logger.info("Evaluation written to %s (summary.json, report.html)", evaluation_dir)
    return summary


def fidelity_scores(
    generated_features,
    real_features,
    kid_num_subsets: int = fidelity.KID_SUBSETS,
    kid_subset_size: int = fidelity.KID_SUBSET_SIZE,
    prdc_nearest_k: int = fidelity.PRDC_NEAREST_K,
    seed: int = 0,
) -> dict:
    """FID, KID (mean, std) and PRDC of generated vs real features; a metric the set sizes cannot give is None
    and ``notes`` says why."""
    result = {"num_generated": int(len(generated_features)), "num_real": int(len(real_features)), "notes": []}
    result["fid"] = fid_lib.frechet_distance(generated_features, real_features)
    warning = fid_lib.small_set_warning(len(generated_features), len(real_features), real_features.shape[1])
    if warning:
        result["notes"].append(warning)
    result.update(fidelity.kid(real_features, generated_features, kid_num_subsets, kid_subset_size, seed))
    if min(len(generated_features), len(real_features)) > prdc_nearest_k:
        result.update(fidelity.prdc(real_features, generated_features, prdc_nearest_k))
    else:
        result.update(precision=None, recall=None, density=None, coverage=None, nearest_k=prdc_nearest_k)
        result["notes"].append(f"PRDC needs more than k = {prdc_nearest_k} images per set.")
    return result


def _per_pathology(reports_set, generated_items, real_items, labels_file, features, min_images, seed, scores) -> list:
    """Fidelity per finding: report-conditioned samples whose report names it vs real test images whose report
    does (labels from ``labels_file`` when given, else keyword rules)."""
    labels = read_chexpert_labels(labels_file) if labels_file else None
    sources = reports_set.get("source_items") or [{} for _ in generated_items]
    generated_found = [
        pathology.item_findings(source, item["prompt"], labels) for source, item in zip(sources, generated_items)
    ]
    real_found = [pathology.item_findings(item, report_text(item), labels) for item in real_items]
    generated_groups = pathology.groups([found for found, _ in generated_found])
    real_groups = pathology.groups([found for found, _ in real_found])
    decided_by = sorted({how for _, how in generated_found + real_found})
    rows = []
    for finding in pathology.FINDINGS:
        generated_rows, real_rows = generated_groups.get(finding, []), real_groups.get(finding, [])
        row = {"finding": finding, "num_generated": len(generated_rows), "num_real": len(real_rows)}
        row["decided_by"] = "+".join(decided_by)
        if min(len(generated_rows), len(real_rows)) < max(2, int(min_images)):
            row["skipped"] = f"fewer than {max(2, int(min_images))} images in a set"
        else:
            for name, by_set in features.items():
                row[name] = fidelity_scores(
                    by_set[REPORTS][generated_rows], by_set["real_test"][real_rows], seed=seed, **scores
                )
        rows.append(row)
    return rows


def _memorisation(evaluation_dir, extractor, name, generated, features, training_items, transform, cache_dir,
                  batch_size, num_pairs):  # fmt: skip
    """Nearest training image of every generated image: summary, ``memorisation.csv`` and the closest pairs."""
    training = extractors_lib.set_features(
        extractor, training_items, "training", transform, cache_dir, batch_size, True
    )
    generated_items = [item for items in generated.values() for item in items]
    generated_features = np.concatenate([features[name][kind] for kind in generated])
    result, rows = memorisation.check(
        generated_items, generated_features, training_items, training, features[name]["real_test"], name
    )
    memorisation.write_rows(rows, os.path.join(evaluation_dir, "memorisation.csv"))
    by_path = {os.fspath(item["image"]): item for item in training_items}
    pairs = [
        (load_images([{"image": row["generated"]}])[0], load_images([by_path[row["nearest_training"]]], transform)[0],
         row["similarity"])
        for row in rows[: int(num_pairs)]
    ]  # fmt: skip
    figure = None
    if pairs:
        figure = memorisation.pairs_figure(pairs, os.path.join(evaluation_dir, "grids", "memorisation_pairs.png"))
    return result, figure


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
