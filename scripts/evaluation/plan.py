"""Which images an evaluation generates: the sample sets, their prompts file, and finding a set's files.

Sets: unconditional samples (diversity, unconditional FID), report-conditioned samples (FID against the
test images), and per-finding prompts plus a "no finding" prompt (prompt adherence). Seeds are offset per
kind so every image is identified by (prompt, seed) in the sampling manifest.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Sequence

from scripts.common.files import atomic_path

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
        rows = [
            {"prompt": text, "seed": seed + SEED_OFFSETS[REPORTS] + i, "num_samples": 1}
            for i, text in enumerate(reports)
        ]
        # the test items whose reports are the prompts, in order: their labels group the per-pathology scores
        sources = [
            {k: item[k] for k in ("subject_id", "study_id", "dicom_id") if k in item}
            for item in test_items[: len(reports)]
        ]
        sets.append({"name": REPORTS, "kind": REPORTS, "rows": rows, "source_items": sources})
    if num_per_finding > 0 and findings:
        rows = [
            {"prompt": no_finding_prompt, "seed": seed + SEED_OFFSETS[NO_FINDING], "num_samples": int(num_per_finding)}
        ]
        sets.append({"name": NO_FINDING, "kind": NO_FINDING, "rows": rows, "finding": "No Finding"})
        for index, finding in enumerate(findings):
            start = seed + SEED_OFFSETS[FINDING] + 10_000 * index
            rows = [{"prompt": finding["prompt"], "seed": start, "num_samples": int(num_per_finding)}]
            sets.append(
                {
                    "name": f"finding_{index:02d}",
                    "kind": FINDING,
                    "rows": rows,
                    "finding": finding["finding"],
                    "xrv_label": finding.get("xrv_label"),
                }
            )
    if not sets:
        raise ValueError(
            "Nothing to generate: set --num_unconditional_images, --num_report_images or --adherence_num_samples "
            "above 0."
        )
    return sets


def write_prompts_csv(sets: Sequence[dict], path: str) -> str:
    """The prompts file (``prompt,seed,num_samples``) of all sets for the inference workflow; returns ``path``."""
    with atomic_path(path) as temporary, open(temporary, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["prompt", "seed", "num_samples"])
        writer.writeheader()
        for sample_set in sets:
            writer.writerows(sample_set["rows"])
    return path


def set_files(sample_set: dict, samples_dir: str) -> list[dict]:
    """Items (``image`` path, ``name``, ``prompt``, ``seed``) of one generated set.

    They are found by (prompt, seed) in ``samples_dir/manifest.csv``.
    """
    manifest = os.path.join(samples_dir, "manifest.csv")
    if not os.path.isfile(manifest):
        raise FileNotFoundError(
            f"'{manifest}' not found: the generation step did not run; re-run the evaluation command."
        )
    with open(manifest, newline="", encoding="utf-8") as f:
        by_key = {(row["prompt"], int(row["seed"])): row["file"] for row in csv.DictReader(f)}
    items = []
    for row in sample_set["rows"]:
        for seed in range(row["seed"], row["seed"] + row["num_samples"]):
            name = by_key.get((row["prompt"], seed))
            if name is None or not os.path.isfile(os.path.join(samples_dir, name)):
                raise FileNotFoundError(
                    f"Sample of prompt {row['prompt']!r} seed {seed} missing from '{samples_dir}': re-run to finish "
                    "generation."
                )
            items.append(
                {"image": os.path.join(samples_dir, name), "name": name, "prompt": row["prompt"], "seed": seed}
            )
    return items


def describe_plan(
    sets: Sequence[dict],
    xrv_model,
    real_items: Sequence[dict],
    reconstruction_items: Sequence[dict],
    extractors: dict | None = None,
) -> None:
    """Log what the evaluation will generate and measure (called first, so missing weights of the classifier
    and the feature extractors fail before generation)."""
    total = sum(row["num_samples"] for s in sets for row in s["rows"])
    logger.info(
        "Evaluation plan: %d images to generate in %d sets (%s); %d real test images; %d reconstructions; classifier "
        "%s",
        total,
        len(sets),
        ", ".join(s["name"] for s in sets),
        len(real_items),
        len(reconstruction_items),
        getattr(xrv_model, "weights_source", "?"),
    )
    for name, extractor in (extractors or {}).items():
        logger.info("Feature extractor %s: %s (%d-d)", name, extractor.weights_source, extractor.feature_dim)
