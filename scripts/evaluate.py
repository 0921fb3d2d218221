"""Full evaluation of a model: which images to generate, then every metric, a JSON summary and a report.

``configs/evaluate.json`` (merged over ``inference.json`` and ``data.json``) wires it: ``plan_sample_sets``
decides the generated sets, ``write_prompts_csv`` turns them into the inference workflow's prompts file,
the inference workflow writes the images and ``manifest.csv`` into ``samples/``, and ``run_evaluation``
measures:

- reconstruction: MS-SSIM / SSIM / PSNR of autoencoder reconstructions of test images (per-image CSV);
- diversity: mean pairwise MS-SSIM of the unconditional samples and of the real test images;
- FID (torchxrayvision features) of each generated set against the real test images, per protocol;
- prompt adherence: torchxrayvision probability of each finding on images generated from that finding's
  prompt vs from the "no finding" prompt (and its AUROC), plus the classifier's AUROC on labelled real
  test images when a CheXpert label file is given.
"""

from __future__ import annotations

import base64
import csv
import gzip
import html
import json
import logging
import math
import os
from collections.abc import Callable, Sequence

import torch

from scripts import fid as fid_lib
from scripts import metrics, xrv
from scripts.image_sets import iterate_images

logger = logging.getLogger(__name__)

UNCONDITIONAL, REPORTS, FINDING, NO_FINDING = "unconditional", "reports", "finding", "no_finding"
# seed offsets keep every generated set's images distinct and identifiable by (prompt, seed) in the manifest
SEED_OFFSETS = {UNCONDITIONAL: 0, REPORTS: 1_000_000, NO_FINDING: 2_000_000, FINDING: 3_000_000}


def report_text(item: dict) -> str:
    """The prompt made from a datalist item's report: its sentences joined by spaces."""
    sentences = item.get("sentences") or []
    return " ".join(s.strip() for s in sentences if s and s.strip())


def plan_sample_sets(
    test_items: Sequence[dict],
    num_unconditional: int,
    num_report_conditioned: int,
    findings: Sequence[dict],
    no_finding_prompt: str,
    num_per_finding: int,
    seed: int = 0,
) -> list[dict]:
    """Generated sets: ``{"name", "kind", "rows": [{"prompt", "seed", "num_samples"}], "xrv_label"?, "finding"?}``.

    Args:
        test_items: real test datalist items; the first ``num_report_conditioned`` reports become prompts.
        num_unconditional: empty-prompt samples (diversity and unconditional FID; the paper used 1,000).
        findings: ``{"finding", "prompt", "xrv_label"}`` dicts (``xrv_label`` null: generated, not scored).
        num_per_finding: images per finding prompt and for ``no_finding_prompt`` (0 disables adherence).
    """
    sets = []
    if num_unconditional > 0:
        rows = [{"prompt": "", "seed": seed + SEED_OFFSETS[UNCONDITIONAL], "num_samples": int(num_unconditional)}]
        sets.append({"name": UNCONDITIONAL, "kind": UNCONDITIONAL, "rows": rows})
    reports = [report_text(item) for item in test_items[: max(0, int(num_report_conditioned))]]
    if reports:
        rows = [{"prompt": text, "seed": seed + SEED_OFFSETS[REPORTS] + i, "num_samples": 1} for i, text in enumerate(reports)]
        sets.append({"name": REPORTS, "kind": REPORTS, "rows": rows})
    if num_per_finding > 0 and findings:
        rows = [{"prompt": no_finding_prompt, "seed": seed + SEED_OFFSETS[NO_FINDING], "num_samples": int(num_per_finding)}]
        sets.append({"name": NO_FINDING, "kind": NO_FINDING, "rows": rows, "finding": "No Finding"})
        for index, finding in enumerate(findings):
            start = seed + SEED_OFFSETS[FINDING] + 10_000 * index
            rows = [{"prompt": finding["prompt"], "seed": start, "num_samples": int(num_per_finding)}]
            sets.append({"name": f"finding_{index:02d}", "kind": FINDING, "rows": rows, "finding": finding["finding"], "xrv_label": finding.get("xrv_label")})
    if not sets:
        raise ValueError("Nothing to generate: set --num_unconditional_images, --num_report_images or --adherence_num_samples above 0.")
    return sets


def write_prompts_csv(sets: Sequence[dict], path: str) -> str:
    """The prompts file (``prompt,seed,num_samples``) of all sets for the inference workflow; returns ``path``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["prompt", "seed", "num_samples"])
        writer.writeheader()
        for sample_set in sets:
            writer.writerows(sample_set["rows"])
    os.replace(tmp, path)
    return path


def set_files(sample_set: dict, samples_dir: str) -> list[dict]:
    """Items (``image`` path, ``name``, ``prompt``, ``seed``) of one generated set, from ``samples_dir/manifest.csv``."""
    manifest = os.path.join(samples_dir, "manifest.csv")
    if not os.path.isfile(manifest):
        raise FileNotFoundError(f"'{manifest}' not found: the generation step did not run; re-run the evaluation command.")
    with open(manifest, newline="", encoding="utf-8") as f:
        by_key = {(row["prompt"], int(row["seed"])): row["file"] for row in csv.DictReader(f)}
    items = []
    for row in sample_set["rows"]:
        for seed in range(row["seed"], row["seed"] + row["num_samples"]):
            name = by_key.get((row["prompt"], seed))
            if name is None or not os.path.isfile(os.path.join(samples_dir, name)):
                raise FileNotFoundError(f"Sample of prompt {row['prompt']!r} seed {seed} missing from '{samples_dir}': re-run to finish generation.")
            items.append({"image": os.path.join(samples_dir, name), "name": name, "prompt": row["prompt"], "seed": seed})
    return items


def load_images(items: Sequence[dict], transform: Callable | None = None, batch_size: int = 16) -> torch.Tensor:
    """(N, 1, H, W) images in [0, 1] of ``items``."""
    return torch.cat([images for _, images in iterate_images(items, transform, batch_size=batch_size)])


def read_chexpert_labels(path: str) -> dict[str, dict[str, float]]:
    """CheXpert labels per study id (``mimic-cxr-2.0.0-chexpert.csv[.gz]``): label name → 1, 0, -1 or nan."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        labels = {}
        for row in reader:
            study = str(row.pop("study_id")).lstrip("s")
            row.pop("subject_id", None)
            labels[study] = {k: float(v) if str(v).strip() else math.nan for k, v in row.items()}
    return labels


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
    probabilities = lambda items: torch.cat([xrv.pathology_probabilities(classifier, images) for _, images in iterate_images(items, batch_size=batch_size)])  # noqa: E731
    baseline = probabilities(set_files(by_kind[NO_FINDING], samples_dir))
    real_probabilities, real_labels = None, None
    if labels_file and real_items:
        labels = read_chexpert_labels(labels_file)
        real_labels = [labels.get(str(item.get("study_id", "")).lstrip("s"), {}) for item in real_items]
        real_probabilities = torch.cat([xrv.pathology_probabilities(classifier, images) for _, images in iterate_images(real_items, real_transform, batch_size=batch_size)])
    rows = []
    for sample_set in sets:
        if sample_set["kind"] != FINDING:
            continue
        label = sample_set.get("xrv_label")
        row = {"finding": sample_set["finding"], "prompt": sample_set["rows"][0]["prompt"], "xrv_label": label,
               "num_samples": sample_set["rows"][0]["num_samples"], "mean_probability": None, "no_finding_mean_probability": None,
               "difference": None, "auroc_generated": None, "auroc_real": None, "num_real_positive": 0, "num_real_negative": 0}
        if label in label_index:
            column = label_index[label]
            own = probabilities(set_files(sample_set, samples_dir))[:, column].numpy()
            base = baseline[:, column].numpy()
            row.update(mean_probability=float(own.mean()), no_finding_mean_probability=float(base.mean()),
                       difference=float(own.mean() - base.mean()), auroc_generated=auroc(own, base))
            if real_probabilities is not None:
                # CheXpert: 1 positive, 0 negative, -1 uncertain (left out), blank = not mentioned (negative)
                values = [lab.get(sample_set["finding"], math.nan) for lab in real_labels]
                scores = real_probabilities[:, column].numpy()
                positive = [s for s, v in zip(scores, values) if v == 1.0]
                negative = [s for s, v, lab in zip(scores, values, real_labels) if lab and (v == 0.0 or math.isnan(v))]
                row.update(auroc_real=auroc(positive, negative), num_real_positive=len(positive), num_real_negative=len(negative))
        rows.append(row)
    return rows


def save_grid(images: torch.Tensor, path: str, columns: int = 8) -> str:
    """Save (N, 1, H, W) images in [0, 1] as one PNG grid (temp name, then renamed)."""
    from torchvision.utils import save_image

    tmp = f"{path}.tmp{os.getpid()}.png"
    save_image(images.float().clamp(0, 1), tmp, nrow=min(columns, len(images)), padding=2, pad_value=1.0)
    os.replace(tmp, path)
    return path


def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4f}"
    return html.escape(str(value))


def write_html_report(summary: dict, grids: Sequence[tuple[str, str]], path: str) -> str:
    """A self-contained HTML page: metric tables and one embedded sample grid per prompt set."""
    parts = ["<!doctype html><meta charset='utf-8'><title>cxr-ldm evaluation</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #999;padding:3px 8px;text-align:right}.warn{color:#b00}</style>",
             "<h1>cxr-ldm evaluation</h1>"]
    for warning in summary.get("warnings", []):
        parts.append(f"<p class='warn'>{html.escape(warning)}</p>")
    scalar_rows = []
    for section in ("reconstruction", "diversity", "fid"):
        for name, values in (summary.get(section) or {}).items():
            if isinstance(values, dict):
                cells = ", ".join(f"{k}={_fmt(v)}" for k, v in values.items() if k not in ("warning",))
                scalar_rows.append(f"<tr><th>{section}</th><td>{html.escape(name)}</td><td style='text-align:left'>{cells}</td></tr>")
    parts.append("<h2>Metrics</h2><table><tr><th>metric</th><th>set</th><th>values</th></tr>" + "".join(scalar_rows) + "</table>")
    if summary.get("adherence"):
        keys = ["finding", "xrv_label", "num_samples", "mean_probability", "no_finding_mean_probability", "difference", "auroc_generated", "auroc_real"]
        header = "".join(f"<th>{k}</th>" for k in keys)
        body = "".join("<tr>" + "".join(f"<td>{_fmt(row[k])}</td>" for k in keys) + "</tr>" for row in summary["adherence"])
        parts.append(f"<h2>Prompt adherence (torchxrayvision probabilities)</h2><table><tr>{header}</tr>{body}</table>")
    parts.append("<h2>Samples</h2>")
    for title, grid in grids:
        with open(grid, "rb") as f:
            data = base64.b64encode(f.read()).decode()
        parts.append(f"<h3>{html.escape(title)}</h3><img alt='{html.escape(title)}' src='data:image/png;base64,{data}'>")
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(parts))
    os.replace(tmp, path)
    return path


def _write_json(data: dict, path: str) -> str:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, allow_nan=True)
    os.replace(tmp, path)
    return path


def describe_plan(sets: Sequence[dict], xrv_model, real_items: Sequence[dict], reconstruction_items: Sequence[dict]) -> None:
    """Log what the evaluation will generate and measure (called first, so missing weights fail before generation)."""
    total = sum(row["num_samples"] for s in sets for row in s["rows"])
    logger.info("Evaluation plan: %d images to generate in %d sets (%s); %d real test images; %d reconstructions; classifier %s",
                total, len(sets), ", ".join(s["name"] for s in sets), len(real_items), len(reconstruction_items),
                getattr(xrv_model, "weights_source", "?"))


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
    summary: dict = {"settings": dict(settings or {}), "warnings": [], "reconstruction": {}, "diversity": {}, "fid": {}, "adherence": []}
    if getattr(xrv_model, "random_weights", False):
        summary["warnings"].append("torchxrayvision network has RANDOM weights: FID and adherence numbers are not meaningful.")
    summary["settings"]["xrv_weights"] = getattr(xrv_model, "weights_source", "")
    if reconstruction_items and autoencoder is not None:
        logger.info("Reconstruction of %d test images", len(reconstruction_items))
        rows = metrics.reconstruction_scores(
            autoencoder, _progress(iterate_images(reconstruction_items, real_transform, batch_size), len(reconstruction_items), batch_size, "reconstruction"),
            device=device, kernel_size=msssim_kernel_size, weights=msssim_weights,
        )
        metrics.write_csv(rows, os.path.join(evaluation_dir, "reconstruction.csv"))
        summary["reconstruction"]["test"] = metrics.summarise(rows)

    by_kind = {s["kind"]: s for s in sets}
    generated = {kind: set_files(by_kind[kind], samples_dir) for kind in (UNCONDITIONAL, REPORTS) if kind in by_kind}
    diversity_kwargs = {"max_pairs": diversity_max_pairs, "seed": seed, "batch_size": batch_size, "kernel_size": msssim_kernel_size,
                        "weights": msssim_weights, "device": device, "progress": True}
    if UNCONDITIONAL in generated:
        summary["diversity"][UNCONDITIONAL] = metrics.pairwise_diversity(load_images(generated[UNCONDITIONAL]), **diversity_kwargs)
    if len(real_items) >= 2:
        summary["diversity"]["real_test"] = metrics.pairwise_diversity(load_images(real_items, real_transform), **diversity_kwargs)

    cache_dir = os.path.join(evaluation_dir, "feature_cache")
    for protocol in fid_protocols:
        real = fid_lib.set_features(xrv_model, real_items, "real_test", protocol, xrv.REAL, real_transform, cache_dir, batch_size, progress=True)
        for kind, items in generated.items():
            features = fid_lib.set_features(xrv_model, items, kind, protocol, xrv.GENERATED, None, cache_dir, batch_size, progress=True)
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
        grids.append(("real test images", save_grid(load_images(real_items[:grid_images], real_transform), os.path.join(grids_dir, "real_test.png"))))
    _write_json(summary, os.path.join(evaluation_dir, "summary.json"))
    write_html_report(summary, grids, os.path.join(evaluation_dir, "report.html"))
    logger.info("Evaluation written to %s (summary.json, report.html)", evaluation_dir)
    return summary


def _progress(iterable, total_items: int, batch_size: int, description: str):
    from tqdm.auto import tqdm

    return tqdm(iterable, total=-(-total_items // batch_size), desc=description)


def reconstruction_only(evaluation_dir: str, items: Sequence[dict], transform: Callable, autoencoder, device="cpu",
                        batch_size: int = 16, msssim_kernel_size: int = metrics.MS_SSIM_KERNEL_SIZE,
                        msssim_weights: Sequence[float] = metrics.MS_SSIM_WEIGHTS) -> dict:
    """Reconstruction metrics only (``configs/evaluate_reconstruction.json``): CSV + ``reconstruction.json``."""
    rows = metrics.reconstruction_scores(autoencoder, _progress(iterate_images(items, transform, batch_size), len(items), batch_size, "reconstruction"),
                                         device=device, kernel_size=msssim_kernel_size, weights=msssim_weights)
    metrics.write_csv(rows, os.path.join(evaluation_dir, "reconstruction.csv"))
    summary = metrics.summarise(rows)
    _write_json(summary, os.path.join(evaluation_dir, "reconstruction.json"))
    logger.info("Reconstruction MS-SSIM %.4f over %d images", summary["ms_ssim_mean"], summary["num_images"])
    return summary
