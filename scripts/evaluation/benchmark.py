"""A benchmark set in CheXGenBench's format, generated through the inference workflow.

CheXGenBench (Dutt et al. 2025) compares chest X-ray generators on images generated from the reports of its
test split, ``MIMIC_Splits/LLAVARAD_ANNOTATIONS_TEST.csv`` (column ``annotated_prompt``; its scripts drop
repeated prompts). Its metric scripts read

- a CSV (``prompt_INFO.csv``) with the prompt of each image and ``img_savename``, the image's file name
  relative to the folder given as ``--synthetic_img_dir``;
- that folder of images, opened with PIL and converted to RGB.

``configs/benchmark.json`` reads the prompts (``read_benchmark_prompts``), writes the inference workflow's
prompts file (``write_generation_prompts``: one image per distinct prompt, seed ``seed + row``), generates
the images into ``<benchmark_dir>/synthetic_images`` with the usual resume and multi-GPU support, and writes
``<benchmark_dir>/prompt_INFO.csv`` (``export_prompt_info``) with the columns

- ``prompt`` and ``annotated_prompt``: the prompt exactly as in the benchmark CSV (CheXGenBench's
  per-pathology analysis matches synthetic to real rows by this text, so it is copied unchanged, spaces
  included);
- ``img_savename``: the image's file name in ``synthetic_images``;
- ``seed``, and ``chexpert_labels`` when the benchmark CSV has it.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence

from scripts.common.distributed import is_main_process
from scripts.common.errors import CxrLdmError
from scripts.common.files import atomic_path

PROMPT_INFO = "prompt_INFO.csv"
IMAGES_DIR = "synthetic_images"
#: columns of the benchmark CSV copied to prompt_INFO.csv when present
PASSED_THROUGH = ("chexpert_labels",)


class BenchmarkError(CxrLdmError, ValueError):
    """A benchmark prompts file that cannot be used, or a benchmark set that is not complete."""


def read_benchmark_prompts(path: str, prompt_column: str = "annotated_prompt", limit: int | None = None) -> list[dict]:
    """Distinct prompts of a benchmark CSV in file order: ``[{"prompt", "row", *PASSED_THROUGH}]``.

    ``row`` is the prompt's index among the distinct prompts; ``limit`` keeps the first ``limit`` of them.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise BenchmarkError(
            f"Benchmark prompts file '{path}' not found: point --benchmark_prompts_csv at CheXGenBench's "
            "MIMIC_Splits/LLAVARAD_ANNOTATIONS_TEST.csv (unzip MIMIC_Splits/llavarad_annotations.zip first)."
        )
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if prompt_column not in (reader.fieldnames or []):
            raise BenchmarkError(
                f"Benchmark prompts file '{path}' has no column '{prompt_column}' (columns: {reader.fieldnames}): "
                "set --benchmark_prompt_column."
            )
        seen: set[str] = set()
        rows = []
        for record in reader:
            text = record[prompt_column] or ""
            if text in seen:
                continue
            seen.add(text)
            row = {"prompt": text, "row": len(rows)}
            row.update({k: record[k] for k in PASSED_THROUGH if k in record})
            rows.append(row)
            if limit is not None and len(rows) >= int(limit):
                break
    if not rows:
        raise BenchmarkError(f"Benchmark prompts file '{path}' holds no prompts.")
    return rows


def write_generation_prompts(rows: Sequence[dict], path: str, seed: int) -> str:
    """The inference workflow's prompts file: one image per prompt, seed ``seed + row``; returns ``path``."""
    with atomic_path(path) as temporary, open(temporary, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["prompt", "seed", "num_samples"])
        writer.writeheader()
        writer.writerows({"prompt": r["prompt"], "seed": int(seed) + r["row"], "num_samples": 1} for r in rows)
    return path


def export_prompt_info(rows: Sequence[dict], images_dir: str, benchmark_dir: str, seed: int) -> str | None:
    """Write ``<benchmark_dir>/prompt_INFO.csv`` for the generated set (rank 0 only); returns its path.

    Every prompt's image is found by (prompt, seed) in ``images_dir/manifest.csv``; a missing one is an error
    (re-running the command generates it).
    """
    if not is_main_process():
        return None
    manifest = os.path.join(images_dir, "manifest.csv")
    if not os.path.isfile(manifest):
        raise BenchmarkError(f"'{manifest}' not found: nothing was generated; re-run the command.")
    with open(manifest, newline="", encoding="utf-8") as f:
        files = {(r["prompt"], int(r["seed"])): r["file"] for r in csv.DictReader(f)}
    output = []
    for row in rows:
        # the prompts file reader strips the text; the manifest holds what was generated
        name = files.get((row["prompt"].strip(), int(seed) + row["row"]))
        if name is None or not os.path.isfile(os.path.join(images_dir, name)):
            raise BenchmarkError(
                f"No image for benchmark prompt {row['row']} ({row['prompt'][:40]!r}) in '{images_dir}': re-run "
                "the command to finish the set."
            )
        record = {"prompt": row["prompt"], "annotated_prompt": row["prompt"], "img_savename": name}
        record["seed"] = int(seed) + row["row"]
        record.update({k: row[k] for k in PASSED_THROUGH if k in row})
        output.append(record)
    path = os.path.join(benchmark_dir, PROMPT_INFO)
    columns = ["prompt", "annotated_prompt", "img_savename", "seed", *[k for k in PASSED_THROUGH if k in rows[0]]]
    with atomic_path(path) as temporary, open(temporary, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(output)
    return path
