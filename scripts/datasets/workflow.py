"""The data-set workflow's first and last steps (``configs/dataset.json``): the checks made before any model loads,
and the merge of every rank's blocks into the summary and card.

The steps between are the plan (``scripts.datasets.plan``), the filters' calibration and scoring
(``scripts.datasets.scoring``) and the inference workflow's own generation.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from scripts.common.distributed import barrier, is_main_process
from scripts.common.errors import CxrLdmError
from scripts.datasets import card as card_lib
from scripts.datasets.filters import check_filter_names, check_training_images
from scripts.datasets.scoring import finished_shards
from scripts.sampling.settings import as_int

logger = logging.getLogger(__name__)

#: output formats whose files are PNG (the Parquet shards hold the files' bytes)
PNG_FORMATS = ("png", "png16")


class DatasetSettingsError(CxrLdmError, ValueError):
    """A data-set setting that cannot work."""


def check_dataset(
    output_format: str,
    filters: Sequence[str],
    rows_per_shard,
    memorisation_datalist: str = "",
    memorisation_dataset_dir: str = "",
    memorisation_section: str = "training",
    memorisation_images: int = 0,
) -> None:
    """Settings of the data-set workflow that can be checked from their values alone (before any model loads):
    PNG output, known filters, a positive shard size, and the memorisation filter's training images on disk."""
    if str(output_format).lower() not in PNG_FORMATS:
        raise DatasetSettingsError(
            f"--output_format {output_format!r}: a data set stores PNG files; use png (8-bit) or png16 (16-bit)."
        )
    names = check_filter_names(filters)
    as_int(rows_per_shard, "--rows_per_shard", 1, error=DatasetSettingsError)
    if "memorisation" in names:
        check_training_images(
            memorisation_datalist, memorisation_dataset_dir, memorisation_section, memorisation_images
        )


def finalize_dataset(
    plan: Sequence[dict],
    jobs: Sequence[dict],
    dataset_dir: str,
    filters: Sequence,
    thresholds: Mapping,
    rows_per_shard: int,
    settings: Mapping,
    card: Mapping,
    model_identity: Mapping,
) -> dict | None:
    """Once every rank has scored its blocks, rank 0 checks that every block is finished, removes shards of other
    plans, and writes ``dataset_summary.json`` and ``README.md`` from the shards; returns the summary."""
    barrier()
    if not is_main_process():
        return None
    shards = finished_shards(plan, jobs, dataset_dir, filters, thresholds, rows_per_shard)
    summary = card_lib.summarize(shards, filters, thresholds, settings)
    card_lib.write_summary(dataset_dir, summary)
    card_lib.write_card(dataset_dir, summary, filters, card, model_identity)
    logger.info(
        "Data set in %s: %d images, %d accepted (train), %d rejected",
        dataset_dir, summary["num_images"], summary["splits"]["train"], summary["splits"]["rejected"],
    )  # fmt: skip
    return summary
