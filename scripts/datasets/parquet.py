"""The data set's Parquet shards, in the layout the Hugging Face ``datasets`` library and hub read.

``<dataset>/data/train-<k>-of-<n>.parquet`` holds the accepted images of block ``k`` (plan rows ``k·S`` to
``(k+1)·S - 1``, ``S`` = ``rows_per_shard``) and ``data/rejected-<k>-of-<n>.parquet`` those that failed a filter;
a block without rejected (or accepted) images has no such file. ``datasets.load_dataset("parquet",
data_dir=<dataset>)`` reads both splits, and ``datasets.load_dataset(<dataset>)`` reads them through the card's
``configs``. Each row (``COLUMNS`` then the filters' columns):

- ``image``: ``{"bytes": PNG file, "path": file name}`` (8- or 16-bit grayscale; an ``Image`` feature in the
  schema's ``huggingface`` metadata, so ``datasets`` decodes it to a PIL image);
- the plan: ``file``, ``index``, ``accepted``, ``prompt``, ``negative_prompt``, ``view``, ``seed``, ``plan_finding``,
  ``source_subject_id``, ``source_study_id``, ``label_source`` (label table, report keywords, template prompt of a
  label table, prompts file), and the 14 CheXpert labels (1.0, 0.0, -1.0 or null);
- the generation: steps, guidance, scheduler, null prompt, precision, model version, weights fingerprints, and
  ``generation_settings`` (JSON of the image's whole manifest row);
- per filter: ``<name>_score``, ``<name>_pass`` and its extra columns.

Files are written under a temporary name and renamed; their content depends only on the plan, the images and the
filters' verdicts, so a resumed run writes the same bytes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from scripts.common.files import atomic_path
from scripts.data.layout import CHEXPERT_LABELS

SPLITS = ("train", "rejected")
DATA_DIR = "data"
#: column type -> (pyarrow type constructor, Hugging Face ``Value`` dtype)
ARROW_TYPES = {"string": ("string", "string"), "int": ("int64", "int64"), "float": ("float64", "float64")}
ARROW_TYPES["bool"] = ("bool_", "bool")
#: columns of every row after ``image``, with their types
COLUMNS = {
    "file": "string",
    "index": "int",
    "accepted": "bool",
    "prompt": "string",
    "negative_prompt": "string",
    "view": "string",
    "seed": "int",
    "plan_finding": "string",
    "source_subject_id": "string",
    "source_study_id": "string",
    "label_source": "string",
    **{name: "float" for name in CHEXPERT_LABELS},
    "num_inference_steps": "int",
    "guidance_scale": "float",
    "scheduler": "string",
    "null_prompt": "string",
    "autocast_dtype": "string",
    "model_version": "string",
    "autoencoder_weights": "string",
    "diffusion_weights": "string",
    "text_encoder": "string",
    "generation_settings": "string",
}


def shard_name(split: str, block: int, num_blocks: int) -> str:
    """``data/<split>-<block>-of-<num_blocks>.parquet`` (relative to the data set folder)."""
    return f"{DATA_DIR}/{split}-{block:05d}-of-{num_blocks:05d}.parquet"


def filter_columns(filters: Sequence) -> dict[str, str]:
    """The filters' columns, in filter order: ``<name>_score``, ``<name>_pass``, then ``<name>_<extra>``."""
    columns = {}
    for image_filter in filters:
        columns[f"{image_filter.name}_score"] = "float"
        columns[f"{image_filter.name}_pass"] = "bool"
        columns.update({f"{image_filter.name}_{key}": kind for key, kind in image_filter.extra_columns.items()})
    return columns


def schema(filters: Sequence):
    """The pyarrow schema of a shard, with the Hugging Face features in its metadata."""
    import pyarrow as pa

    columns = {**COLUMNS, **filter_columns(filters)}
    features = {"image": {"_type": "Image"}}
    features.update({name: {"dtype": ARROW_TYPES[kind][1], "_type": "Value"} for name, kind in columns.items()})
    fields = [pa.field("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())]))]
    fields += [pa.field(name, getattr(pa, ARROW_TYPES[kind][0])()) for name, kind in columns.items()]
    return pa.schema(fields, metadata={"huggingface": json.dumps({"info": {"features": features}})})


def _typed(value, kind: str):
    if value is None or value == "":
        return None
    if kind == "int":
        return int(float(value))
    if kind == "float":
        number = float(value)
        return None if number != number else number  # NaN (a blank label) is stored as null
    if kind == "bool":
        return value.strip().lower() in ("true", "1") if isinstance(value, str) else bool(value)
    return str(value)


def table_row(image_bytes: bytes, file_name: str, values: dict, columns: dict[str, str]) -> dict:
    """One shard row: the image and ``values`` converted to ``columns``' types (missing ones are null)."""
    typed = {key: _typed(values.get(key), kind) for key, kind in columns.items()}
    return {"image": {"bytes": image_bytes, "path": file_name}, **typed}


def write_shard(path: str, rows: Sequence[dict], filters: Sequence) -> str:
    """Write ``rows`` (``table_row``'s) as one Parquet file atomically; returns ``path``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(list(rows), schema=schema(filters))
    with atomic_path(path) as temporary:
        pq.write_table(table, temporary)
    return path


def read_columns(paths: Sequence[str], columns: Sequence[str]) -> list[dict]:
    """The rows of ``columns`` of the shards ``paths`` (without the images), in file order."""
    import pyarrow.parquet as pq

    rows = []
    for path in paths:
        rows += pq.read_table(path, columns=list(columns)).to_pylist()
    return rows


def shard_files(dataset_dir: str) -> list[str]:
    """Paths of the Parquet files under ``<dataset_dir>/data`` (temporary files of a writer left out)."""
    from scripts.common.files import is_temporary

    folder = os.path.join(dataset_dir, DATA_DIR)
    if not os.path.isdir(folder):
        return []
    names = sorted(n for n in os.listdir(folder) if n.endswith(".parquet") and not is_temporary(n))
    return [os.path.join(folder, n) for n in names]
