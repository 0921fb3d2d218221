"""The data-set workflow end to end with tiny networks: the Parquet shards hold every planned image once with its
prompt, labels, settings, scores and verdicts; ``datasets`` loads them; the card's counts are the data's; a re-run
changes nothing, a changed threshold rescores without generating; bad input stops before any model loads."""

from __future__ import annotations

import csv
import io
import json
import math
import re

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from helpers.bundle import run_inference
from helpers.datasets import DATASET_CONFIG, dataset_overrides, write_classifier_weights
from scripts.common.errors import root_cause
from scripts.common.hashing import fingerprint
from scripts.data.layout import CHEXPERT_LABELS
from scripts.datasets import parquet
from scripts.datasets.filters import FilterError
from scripts.datasets.plan import DatasetPlanError

FILTER_COLUMNS = [
    "sanity_score", "sanity_pass", "sanity_saturated_fraction", "sanity_non_finite_pixels",
    "label_agreement_score", "label_agreement_pass", "label_agreement_disagreements", "label_agreement_probabilities",
    "memorisation_score", "memorisation_pass", "memorisation_nearest_training",
]  # fmt: skip


@pytest.fixture(scope="module")
def dataset_run(tiny_model_dir, prepared_synthetic_dir, tmp_path_factory):
    """One tiny data set of 6 images in 2 blocks, every filter on; returns (folder, run overrides)."""
    root = tmp_path_factory.mktemp("dataset")
    weights = write_classifier_weights(root / "classifier.pt")
    overrides = dataset_overrides(prepared_synthetic_dir, root / "set", weights, export_dicom=True)
    run_inference(tiny_model_dir, root / "set" / "images", DATASET_CONFIG, **overrides)
    return root / "set", overrides


def _rows(folder) -> list[dict]:
    return [row for path in parquet.shard_files(str(folder)) for row in pq.read_table(path).to_pylist()]


def _plan(folder) -> list[dict]:
    with open(folder / "plan.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_the_shards_hold_every_planned_image_once_with_its_columns(dataset_run, tiny_model_dir):
    folder, _ = dataset_run
    names = [path.rsplit("/", 1)[1] for path in parquet.shard_files(str(folder))]
    assert set(names) <= {f"{s}-{b:05d}-of-00002.parquet" for s in ("train", "rejected") for b in (0, 1)}
    table = pq.read_table(parquet.shard_files(str(folder))[0])
    assert table.column_names == ["image", *parquet.COLUMNS, *FILTER_COLUMNS]
    assert str(table.schema.field("Cardiomegaly").type) == "double" and str(table.schema.field("seed").type) == "int64"
    rows, plan = _rows(folder), _plan(folder)
    assert sorted(row["index"] for row in rows) == list(range(6)) == [int(r["index"]) for r in plan]
    with open(folder / "images" / "manifest.csv", newline="") as f:
        manifest = {row["file"]: row for row in csv.DictReader(f)}
    for row in rows:
        planned = plan[row["index"]]
        assert row["image"]["bytes"] == (folder / "images" / row["file"]).read_bytes()
        assert row["image"]["path"] == row["file"] and row["file"].startswith(f"{row['index']:05d}_")
        assert (row["prompt"], row["seed"], row["view"]) == (planned["prompt"], 42 + row["index"], "PA")
        for name in CHEXPERT_LABELS:
            assert row[name] == (float(planned[name]) if planned[name] else None)
        generation = manifest[row["file"]]
        assert json.loads(row["generation_settings"]) == generation
        assert (row["num_inference_steps"], row["scheduler"]) == (
            int(generation["num_inference_steps"]),
            "unipc_karras",
        )
        assert row["diffusion_weights"] == fingerprint(str(tiny_model_dir / "model.pt"))
        assert row["accepted"] == (row["sanity_pass"] and row["label_agreement_pass"] and row["memorisation_pass"])
    split = {row["file"]: path for path in parquet.shard_files(str(folder)) for row in pq.read_table(path).to_pylist()}
    assert all(("/train-" in split[r["file"]]) == r["accepted"] for r in rows)


def test_every_image_is_also_a_synthetic_dicom_with_the_same_pixels(dataset_run):
    import pydicom

    folder, _ = dataset_run
    rows = _rows(folder)
    assert sorted(p.stem for p in (folder / "dicom").glob("*.dcm")) == sorted(r["file"][:-4] for r in rows)
    series = set()
    for row in rows:
        dataset = pydicom.dcmread(folder / "dicom" / (row["file"][:-4] + ".dcm"))
        assert dataset.ConversionType == "SYN" and dataset.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
        png = np.asarray(Image.open(folder / "images" / row["file"])).astype(np.int64)
        assert np.array_equal(dataset.pixel_array.astype(np.int64), png * 257)
        series.add(dataset.SeriesInstanceUID)
    assert len(series) == 1


def test_datasets_loads_both_splits_and_decodes_the_images(dataset_run):
    import datasets

    folder, _ = dataset_run
    summary = json.loads((folder / "dataset_summary.json").read_text())
    for loaded in (
        datasets.load_dataset("parquet", data_dir=str(folder), cache_dir=str(folder.parent / "hf")),
        datasets.load_dataset(str(folder), cache_dir=str(folder.parent / "hf_card")),
    ):
        assert {name: len(split) for name, split in loaded.items()} == {
            name: count for name, count in summary["splits"].items() if count
        }
        first = next(iter(loaded.values()))[0]
        stored = np.asarray(Image.open(folder / "images" / first["file"]))
        assert np.array_equal(np.asarray(first["image"]), stored) and isinstance(
            first["Cardiomegaly"], (float, type(None))
        )


def _card_tables(text: str) -> list[list[list[str]]]:
    tables, current = [], []
    for line in text.splitlines():
        if line.startswith("| ---"):
            continue
        if line.startswith("|"):
            current.append([cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]])
        elif current:
            tables.append(current)
            current = []
    return tables + ([current] if current else [])


def test_the_cards_counts_are_the_datas(dataset_run):
    folder, _ = dataset_run
    text = (folder / "README.md").read_text()
    front = yaml.safe_load(text.split("---\n")[1])
    rows = _rows(folder)
    assert front["license"] == "other" and "image-classification" in front["task_categories"]
    assert front["size_categories"] == ["n<1K"]
    splits = {entry["split"] for entry in front["configs"][0]["data_files"]}
    assert splits == {"train" if row["accepted"] else "rejected" for row in rows}
    filters, findings = _card_tables(text)
    assert [cells[:2] for cells in filters[1:]] == [
        [name, str(sum(not row[f"{name}_pass"] for row in rows))]
        for name in ("sanity", "label_agreement", "memorisation")
    ]
    assert findings[0] == ["finding", "all images", "after sanity", "after label_agreement", "after memorisation",
                           "accepted (train)"]  # fmt: skip
    for cells in findings[1:]:
        positive = [row for row in rows if row[cells[0]] == 1.0]
        kept = [
            len([r for r in positive if all(r[f"{f}_pass"] for f in names)])
            for names in ([], ["sanity"], ["sanity", "label_agreement"], ["sanity", "label_agreement", "memorisation"])
        ]
        assert [int(c) for c in cells[1:]] == [*kept, sum(r["accepted"] for r in positive)], cells[0]
    assert f"{len(rows)} synthetic frontal chest X-rays" in text and "not for diagnosis" in text
    assert "--plan_size 6" in text and "PhysioNet Credentialed Health Data License" in text


def test_a_rerun_changes_nothing_and_a_new_threshold_rescores_without_generating(dataset_run, tiny_model_dir):
    folder, overrides = dataset_run
    files = sorted(p for p in folder.rglob("*") if p.is_file() and "hf" not in p.parts[len(folder.parts) - 1 :])
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files if p.suffix in (".png", ".parquet")}
    run_inference(tiny_model_dir, folder / "images", DATASET_CONFIG, **overrides)
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in before} == before
    scores = sorted(row["sanity_score"] for row in _rows(folder))
    middle = (scores[2] + scores[3]) / 2  # three images below, three above
    run_inference(tiny_model_dir, folder / "images", DATASET_CONFIG, **{**overrides, "sanity_min_std": middle})
    assert {p: p.stat().st_mtime_ns for p in before if p.suffix == ".png"} == {
        p: t for p, (t, _) in before.items() if p.suffix == ".png"
    }, "no image was generated again"
    rows = _rows(folder)
    assert sorted(row["sanity_pass"] for row in rows) == [False] * 3 + [True] * 3
    assert not any(row["accepted"] for row in rows if not row["sanity_pass"])
    records = [json.loads(p.read_text()) for p in sorted((folder / "blocks").glob("*.json"))]
    assert sorted(f"{folder}/{name}" for r in records for name in r["files"]) == parquet.shard_files(str(folder))
    summary = json.loads((folder / "dataset_summary.json").read_text())
    assert summary["filters"][0]["rejected"] == 3 and summary["settings"]["plan_size"] == 6


@pytest.mark.parametrize(
    "overrides, error, message",
    [
        ({"plan_findings": ["Effusion"]}, DatasetPlanError, r"Unknown finding\(s\) \['Effusion'\]"),
        ({"plan_size": 0}, DatasetPlanError, "The plan is empty"),
        ({"plan_size": 10_000}, DatasetPlanError, "asks for 10000 images but its .* prompts serve at most"),
        ({"chexpert_labels_file": "TABLE"}, DatasetPlanError, r"lacks the columns \['Atelectasis'"),
        ({"dataset_dir": "MISSING"}, FilterError, "Memorisation filter: training datalist .* not found"),
    ],
)
def test_bad_input_stops_before_any_model_loads(tmp_path, prepared_synthetic_dir, overrides, error, message):
    table = tmp_path / "table.csv"
    table.write_text("study_id,Cardiomegaly\n1,1\n", encoding="utf-8")
    values = {"TABLE": str(table), "MISSING": str(tmp_path / "missing")}
    settings = dataset_overrides(prepared_synthetic_dir, tmp_path / "set", tmp_path / "no_classifier.pt")
    settings.update(
        {key: values.get(value, value) if isinstance(value, str) else value for key, value in overrides.items()}
    )
    # no weights at all: reaching any model would fail with another error
    with pytest.raises(Exception) as raised:
        run_inference(tmp_path / "no_models", tmp_path / "set" / "images", DATASET_CONFIG, **settings)
    cause = root_cause(raised.value)
    assert isinstance(cause, error) and re.search(message, str(cause)) and "\n" not in str(cause), str(cause)
    assert not (tmp_path / "set" / "images").exists()


def test_png_bytes_of_16_bit_images_round_trip(tmp_path):
    """``png16`` images keep 16-bit pixels in the shards (``datasets`` decodes them as uint16)."""
    import torch

    from scripts.sampling.writer import write_image

    image = torch.linspace(0, 1, 64 * 64).reshape(1, 64, 64)
    path = write_image(image, str(tmp_path / "a.png"), "png16")
    with Image.open(io.BytesIO(open(path, "rb").read())) as picture:
        pixels = np.asarray(picture)
    assert pixels.dtype == np.uint16 and np.abs(pixels / 65535.0 - image[0].numpy()).max() < 1e-5
    assert len(np.unique(pixels)) > 256 and not math.isnan(pixels.mean())
