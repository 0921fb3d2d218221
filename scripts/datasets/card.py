"""The data set's summary (``dataset_summary.json``) and card (``README.md``, the Hugging Face hub's form).

Every count is read back from the written Parquet shards (never from what the run meant to write), so the card
states the data as it is: images per split, per filter its threshold and how many images it rejects, and per
CheXpert finding the images positive for it before any filter, after each filter in turn (an image counts after
filter *f* when it passed every filter up to *f*) and in the accepted split.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence

from scripts.common.files import atomic_write_json, atomic_write_text
from scripts.data.layout import CHEXPERT_LABELS
from scripts.datasets import parquet

SUMMARY = "dataset_summary.json"
CARD = "README.md"
#: the hub's size categories, by upper bound
SIZE_CATEGORIES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"))


def size_category(count: int) -> str:
    for bound, name in SIZE_CATEGORIES:
        if count < bound:
            return name
    return "1M<n<10M"


def setting_value(value):
    """A setting as JSON: plain values as they are, a component (e.g. ``@classifier_features``) as
    ``{"component": its class, "identity": ...}``."""
    try:
        json.dumps(value)
        return value
    except TypeError:
        identity = value.identity() if hasattr(value, "identity") else repr(value)
        return {"component": type(value).__name__, "identity": identity}


def summarize(shards: Sequence[str], filters: Sequence, thresholds: Mapping, settings: Mapping) -> dict:
    """Counts of the shards' rows (module docstring), the filters' thresholds and the run's ``settings``."""
    passes = [f"{f.name}_pass" for f in filters]
    rows = parquet.read_columns(shards, ["accepted", *CHEXPERT_LABELS, *passes])
    total, accepted = len(rows), sum(bool(row["accepted"]) for row in rows)
    summary = {
        "settings": {key: setting_value(value) for key, value in settings.items()},
        "num_images": total,
        "splits": {"train": accepted, "rejected": total - accepted},
    }
    summary["filters"] = []
    for image_filter, column in zip(filters, passes):
        record = thresholds["records"][image_filter.name]
        rejected = sum(not row[column] for row in rows)
        summary["filters"].append(
            {"name": image_filter.name, "rejected": rejected, "rejection_rate": rejected / max(total, 1),
             "threshold": image_filter.describe(record), "calibration": record}
        )  # fmt: skip
    summary["findings"] = []
    for name in CHEXPERT_LABELS:
        remaining = [row for row in rows if row[name] == 1.0]
        counts = {"finding": name, "all": len(remaining)}
        for image_filter, column in zip(filters, passes):
            remaining = [row for row in remaining if row[column]]
            counts[f"after_{image_filter.name}"] = len(remaining)
        counts["accepted"] = len(remaining)
        summary["findings"].append(counts)
    summary["shards"] = [os.path.relpath(path, os.path.dirname(os.path.dirname(path))) for path in shards]
    return summary


def _front_matter(summary: Mapping, card: Mapping) -> str:
    lines = ["---", f"license: {card.get('license', 'other')}"]
    for key in ("license_name", "license_link"):
        if card.get(key):
            lines.append(f"{key}: {card[key]}")
    lines += ["task_categories:", "- image-classification", "- text-to-image", "tags:"]
    lines += [
        "- medical",
        "- chest-x-ray",
        "- synthetic",
        "size_categories:",
        f"- {size_category(summary['num_images'])}",
    ]
    lines += ["configs:", "- config_name: default", "  data_files:"]
    for split in parquet.SPLITS:
        if summary["splits"][split]:  # the hub refuses a split without files
            lines += [f"  - split: {split}", f"    path: {parquet.DATA_DIR}/{split}-*.parquet"]
    return "\n".join(lines + ["---", ""])


def command_line(settings: Mapping, config_files: Sequence[str]) -> str:
    """A command that makes this data set: the configs and each setting as ``--key value``."""
    files = "[" + ",".join(f"'{name}'" for name in config_files) + "]"
    parts = [f'python -m monai.bundle run --config_file "{files}"']
    for key, value in settings.items():
        if isinstance(value, Mapping) and "component" in value:
            parts.append(f"--{key} <a {value['component']} component: {value['identity']}>")
        elif value is not None:
            text = value if isinstance(value, str) else repr(value)
            quoted = not text or any(c in text for c in " ,[]'")
            parts.append(f'--{key} "{text}"' if quoted else f"--{key} {text}")
    return " \\\n    ".join(parts)


def _tables(summary: Mapping, filters: Sequence) -> list[str]:
    total = summary["num_images"]
    lines = ["| filter | rejected | rejection rate | score and threshold |", "| --- | --- | --- | --- |"]
    for entry in summary["filters"]:
        threshold = entry["threshold"].replace("|", "\\|")  # a table cell
        lines.append(f"| {entry['name']} | {entry['rejected']} | {entry['rejection_rate']:.1%} | {threshold} |")
    heads = ["finding", "all images", *[f"after {f.name}" for f in filters], "accepted (train)"]
    lines += ["", f"Images positive for each finding (of {total}), before and after each filter:", ""]
    lines += ["| " + " | ".join(heads) + " |", "|" + " --- |" * len(heads)]
    for counts in summary["findings"]:
        values = [counts["all"], *[counts[f"after_{f.name}"] for f in filters], counts["accepted"]]
        lines.append(f"| {counts['finding']} | " + " | ".join(str(v) for v in values) + " |")
    return lines


def write_card(dataset_dir: str, summary: Mapping, filters: Sequence, card: Mapping, model: Mapping) -> str:
    """``README.md``: front matter, how the set was made, the filters and counts, use and terms; returns its path."""
    train, rejected = summary["splits"]["train"], summary["splits"]["rejected"]
    lines = [_front_matter(summary, card), f"# {card.get('title', 'Synthetic chest X-ray data set')}", ""]
    lines += [
        f"{summary['num_images']} synthetic frontal chest X-rays generated from text by the cxr-ldm latent diffusion "
        f"model, each with its prompt and 14 CheXpert labels: {train} accepted (split `train`) and {rejected} rejected "
        "by at least one filter (split `rejected`, kept with every score and verdict).",
        "",
        "**Synthetic images for research only — not for diagnosis or any clinical decision.**",
        "",
        "## How it was made",
        "",
        f"Model: {card.get('model', 'cxr-ldm')}; bundle version {model.get('model_version', '')}; weights "
        f"fingerprints: autoencoder `{model.get('autoencoder_weights', '')}`, diffusion UNet "
        f"`{model.get('diffusion_weights', '')}`, text encoder `{model.get('text_encoder', '')}`.",
        "",
        "The command (every setting the data set depends on; paths as on the machine that made it):",
        "",
        "```bash",
        command_line(summary["settings"], card.get("config_files", ["configs/inference.json", "configs/dataset.json"])),
        "```",
        "",
        "## Filters and counts",
        "",
        *_tables(summary, filters),
        "",
        "## Load it",
        "",
        "```python",
        "import datasets",
        f'data = datasets.load_dataset("parquet", data_dir="{os.path.basename(os.path.abspath(dataset_dir))}")',
        'first = data["train"][0]  # first["image"] (PIL), first["prompt"], first["Pleural Effusion"], ...',
        "```",
        "",
        "Columns: `image` (PNG), `prompt`, the 14 CheXpert labels (1, 0, -1 uncertain, null not mentioned), `view`, "
        "`seed`, the generation settings and weights fingerprints, and per filter `<name>_score`, `<name>_pass` and "
        "its details. `plan.csv` lists the plan; `thresholds.json` the filters' calibration.",
        "",
        "## Intended use",
        "",
        card.get("intended_use", ""),
        "",
        "## Training data and its terms",
        "",
        card.get("data_terms", ""),
        "",
    ]
    return atomic_write_text(os.path.join(dataset_dir, CARD), "\n".join(lines))


def write_summary(dataset_dir: str, summary: Mapping) -> str:
    return atomic_write_json(os.path.join(dataset_dir, SUMMARY), json.loads(json.dumps(summary)))
