"""Scoring the generated images by blocks, rank-sharded and resumable, into the data set's Parquet shards.

``calibrate_filters`` runs once before generation: rank 0 derives each filter's thresholds (``thresholds.json``,
reused while the filters' settings and calibration images are unchanged), every rank adopts them. After
generation, ``score_blocks`` gives block ``k`` (plan rows ``k·S`` .. ``(k+1)·S - 1``) to rank ``k mod W``: its
images are scored by every filter and written as the block's train / rejected shards
(``scripts.datasets.parquet``), then ``blocks/block-<k>.json`` records the block as done, with the identity of
what decided it (image names, thresholds, filter settings). A re-run skips the blocks whose record matches, and
rewrites those whose inputs changed; a kill at any point leaves either a finished block or one done again.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence

from scripts.common.distributed import barrier, is_main_process, rank_and_world
from scripts.common.errors import CxrLdmError
from scripts.common.files import atomic_write_json, remove_leftovers
from scripts.common.hashing import settings_digest
from scripts.data.images import iterate_images
from scripts.datasets import parquet
from scripts.datasets.writer import non_finite_pixels
from scripts.sampling.writer import MANIFEST, existing_image

logger = logging.getLogger(__name__)

THRESHOLDS = "thresholds.json"
BLOCKS_DIR = "blocks"
DICOM_DIR = "dicom"


class DatasetIncompleteError(CxrLdmError, RuntimeError):
    """The data set's images or blocks are not all there (an interrupted run): re-running completes it."""


def calibration_identity(filters: Sequence, calibration) -> str:
    """Digest of what decides the thresholds: each filter's settings and the calibration images and labels."""
    images = [] if calibration is None else [[os.fspath(i["image"]), i.get("labels")] for i in calibration.items]
    return settings_digest({"filters": {f.name: f.identity() for f in filters}, "calibration": images}, length=16)


def calibrate_filters(filters: Sequence, calibration, dataset_dir: str) -> dict:
    """Thresholds of ``filters`` (``{"identity", "records": {name: record}}``), derived on rank 0 or read from
    ``<dataset_dir>/thresholds.json`` when its identity matches, then adopted by every filter on every rank."""
    path = os.path.join(dataset_dir, THRESHOLDS)
    identity = calibration_identity(filters, calibration)
    if is_main_process():
        if os.path.isdir(dataset_dir):
            remove_leftovers(dataset_dir)  # of a killed run; no rank writes before the barrier below
        stored = {}
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                stored = json.load(f)
        if stored.get("identity") != identity:
            records = {}
            for image_filter in filters:
                logger.info("Calibrating filter %s", image_filter.name)
                records[image_filter.name] = image_filter.calibrate(calibration)
            atomic_write_json(path, {"identity": identity, "records": records})
    barrier()
    with open(path, encoding="utf-8") as f:
        thresholds = json.load(f)
    for image_filter in filters:
        image_filter.use_calibration(thresholds["records"][image_filter.name])
    return thresholds


def block_rows(plan: Sequence[dict], jobs: Sequence[dict], rows_per_shard: int) -> list[list[dict]]:
    """The plan rows of each block, each with its image's ``name`` (plan row i is job i)."""
    size = int(rows_per_shard)
    rows = [{**row, "name": job["name"]} for row, job in zip(plan, jobs)]
    return [rows[start : start + size] for start in range(0, len(rows), size)]


def block_identity(rows: Sequence[dict], filters: Sequence, thresholds: Mapping) -> str:
    """Digest of what decides a block's shards: its rows, the filters' settings and thresholds, the columns."""
    plan = [{k: v for k, v in row.items() if k != "labels"} | {"labels": sorted(row["labels"].items())} for row in rows]
    settings = {"filters": {f.name: f.identity() for f in filters}, "thresholds": thresholds.get("records")}
    return settings_digest({"rows": plan, **settings, "columns": parquet.filter_columns(filters)}, length=16)


def _record_path(dataset_dir: str, block: int) -> str:
    return os.path.join(dataset_dir, BLOCKS_DIR, f"block-{block:05d}.json")


def read_block_record(dataset_dir: str, block: int) -> dict | None:
    """The record of a finished block (None when absent or when one of its shards is missing)."""
    path = _record_path(dataset_dir, block)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        record = json.load(f)
    return record if all(os.path.isfile(os.path.join(dataset_dir, name)) for name in record["files"]) else None


def _manifest_rows(images_dir: str) -> dict[str, dict]:
    path = os.path.join(images_dir, MANIFEST)
    if not os.path.isfile(path):
        return {}
    with open(path, newline="", encoding="utf-8") as f:
        return {row["file"]: row for row in csv.DictReader(f)}


def score_block(rows: Sequence[dict], images_dir: str, filters: Sequence, batch_size: int) -> list[dict]:
    """Every row of a block with its image's path and each filter's ``<name>_score``, ``<name>_pass`` and extras,
    and ``accepted`` (passed every filter)."""
    items = []
    for row in rows:
        path = existing_image(images_dir, row["name"])
        if path is None or not path.endswith(".png"):
            raise DatasetIncompleteError(
                f"Image {row['name']} of plan row {row['index']} is not in '{images_dir}' as PNG: re-run the command "
                "(with --output_format png or png16) to finish the data set."
            )
        items.append({**row, "image": path, "non_finite_pixels": non_finite_pixels(images_dir, row["name"])})
    scored = []
    for batch, images in iterate_images(items, None, batch_size):
        results = [dict(item) for item in batch]
        for image_filter in filters:
            for result, outcome in zip(results, image_filter.score(images, batch)):
                result.update({f"{image_filter.name}_{key}": value for key, value in outcome.items()})
        scored += results
    for result in scored:
        result["accepted"] = all(result[f"{f.name}_pass"] for f in filters)
    return scored


def write_dicom(image_path: str, generation: Mapping, dicom_dir: str) -> str:
    """The image as a synthetic Secondary Capture DICOM in ``dicom_dir`` (the inference writer's ``dcm`` format: one
    study and series per folder), unless it is there already; returns its path."""
    from scripts.data.dicom import run_uids
    from scripts.data.images import load_image_file
    from scripts.sampling.writer import write_image

    name = os.path.splitext(os.path.basename(image_path))[0]
    path = os.path.join(dicom_dir, name + ".dcm")
    if not os.path.isfile(path):
        study_uid, series_uid = run_uids(dicom_dir)
        job = {**generation, "name": name, "study_uid": study_uid, "series_uid": series_uid}
        write_image(load_image_file(image_path), path, "dcm", job)
    return path


def write_block(
    block: int, num_blocks: int, rows, images_dir, dataset_dir, filters, batch_size, identity, dicom: bool = False
) -> dict:
    """Score block ``block`` and write its shards (and with ``dicom`` its images as DICOM in ``<dataset_dir>/dicom``),
    then its record (the mark of a finished block)."""
    manifest = _manifest_rows(images_dir)
    columns = {**parquet.COLUMNS, **parquet.filter_columns(filters)}
    by_split = {split: [] for split in parquet.SPLITS}
    for result in score_block(rows, images_dir, filters, batch_size):
        file_name = os.path.basename(result["image"])
        generation = manifest.get(file_name)
        if generation is None:
            raise DatasetIncompleteError(
                f"Image {file_name} has no row in '{images_dir}/{MANIFEST}': re-run the command to rebuild it."
            )
        values = {**generation, **result, **{name: value for name, value in result["labels"].items()}}
        values.update(file=file_name, generation_settings=json.dumps(generation, sort_keys=True))
        with open(result["image"], "rb") as f:
            row = parquet.table_row(f.read(), file_name, values, columns)
        if dicom:
            write_dicom(result["image"], generation, os.path.join(dataset_dir, DICOM_DIR))
        by_split["train" if result["accepted"] else "rejected"].append(row)
    files = []
    for split, split_rows in by_split.items():
        name = parquet.shard_name(split, block, num_blocks)
        if split_rows:
            parquet.write_shard(os.path.join(dataset_dir, name), split_rows, filters)
            files.append(name)
        elif os.path.isfile(os.path.join(dataset_dir, name)):
            os.remove(os.path.join(dataset_dir, name))
    record = {"identity": identity, "files": files, "num_rows": len(rows), "num_accepted": len(by_split["train"])}
    atomic_write_json(_record_path(dataset_dir, block), record)
    return record


def score_blocks(
    plan: Sequence[dict],
    jobs: Sequence[dict],
    images_dir: str,
    dataset_dir: str,
    filters: Sequence,
    thresholds: Mapping,
    rows_per_shard: int = 1000,
    batch_size: int = 16,
    dicom: bool = False,
) -> list[int]:
    """Score and write this rank's unfinished blocks (module docstring), with ``dicom`` also every image as synthetic
    DICOM in ``<dataset_dir>/dicom`` (their split is the Parquet row's); returns the blocks written."""
    barrier()  # rank 0 merges the ranks' manifests after generation: every rank reads the merged one
    blocks = block_rows(plan, jobs, rows_per_shard)
    rank, world = rank_and_world()
    written = []
    for block in range(rank, len(blocks), world):
        identity = block_identity(blocks[block], filters, thresholds) + ("+dicom" if dicom else "")
        record = read_block_record(dataset_dir, block)
        if record is not None and record["identity"] == identity:
            continue
        write_block(block, len(blocks), blocks[block], images_dir, dataset_dir, filters, batch_size, identity, dicom)
        written.append(block)
    logger.info("Rank %d scored %d block(s) of %d", rank, len(written), len(blocks))
    return written


def finished_shards(plan: Sequence[dict], jobs, dataset_dir: str, filters, thresholds, rows_per_shard: int):
    """Paths of the shards of every block, checked to be finished with the current identity; the Parquet files
    and block records of other plans are removed (rank 0, after every rank has scored)."""
    blocks = block_rows(plan, jobs, rows_per_shard)
    files = []
    for block, rows in enumerate(blocks):
        record = read_block_record(dataset_dir, block)
        if record is None or record["identity"].split("+")[0] != block_identity(rows, filters, thresholds):
            raise DatasetIncompleteError(
                f"Block {block} of the data set in '{dataset_dir}' is not finished: re-run the command to complete it."
            )
        files += [os.path.join(dataset_dir, name) for name in record["files"]]
    keep = {os.path.abspath(path) for path in files}
    for path in parquet.shard_files(dataset_dir):
        if os.path.abspath(path) not in keep:
            os.remove(path)
    records_dir = os.path.join(dataset_dir, BLOCKS_DIR)
    for name in sorted(os.listdir(records_dir)) if os.path.isdir(records_dir) else []:
        number = name.removeprefix("block-").removesuffix(".json")
        if number.isdigit() and int(number) >= len(blocks):
            os.remove(os.path.join(records_dir, name))
    return sorted(files, key=lambda path: (os.path.basename(path).split("-")[0], path))


def num_blocks(num_rows: int, rows_per_shard: int) -> int:
    return math.ceil(num_rows / int(rows_per_shard))
