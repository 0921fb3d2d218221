"""``python -m scripts.data.prepare_dicom``: own DICOM radiographs + a reports table -> a prepared data set.

``python -m scripts.data.prepare_dicom --dicom_dir D --reports_table T --output_dir O`` writes ``O/images/...``
(8-bit, short side ``short_side``), ``datalist.json``, ``summary.json`` and ``skipped.csv``, exactly like
``scripts.data.prepare``, so training and evaluation configs take it with ``--dataset_dir O``.

The reports table (CSV) has one row per image and these columns:

- ``file`` (path relative to ``dicom_dir``) or ``sop_instance_uid`` (the image's SOP Instance UID): which
  image the row describes;
- ``report``: the report text (FINDINGS / IMPRESSION sections are used when present, otherwise the last
  paragraph, as for MIMIC-CXR);
- ``split`` (optional): ``train``/``training``, ``validate``/``validation`` or ``test``;
- ``subject_id`` (optional): the patient. Without a ``split`` column, patients are assigned to training /
  validation / test (90 / 5 / 5 %) by a hash of ``subject_id`` (of the file when it is absent), so one
  patient's images never fall into two splits.

Every file under ``dicom_dir`` is tried. Images are read through their Modality and VOI LUTs, MONOCHROME1
inverted, orientation kept as stored (``scripts.data.dicom``). Files that are not one frontal radiograph
(another View Position, no pixel data, multi-frame, another modality, unreadable, compressed without a
decoder) and images without a table row or usable report are skipped, counted and listed with the reason.

Each file is written to ``images/<its path under dicom_dir>.<jpg|png>``, a ``.dcm``/``.dicom`` extension
replaced: ``p1/a.dcm`` -> ``images/p1/a.jpg``, and a PACS export named by SOP Instance UID keeps its whole
name (``1.2.3.17`` -> ``images/1.2.3.17.jpg``). Two files that would still share an output name (``a`` and
``a.dcm``, or names differing only in case) stop the preparation before anything is written.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import inspect
import json
import os
import time
from collections import Counter
from pathlib import Path

from scripts.common.files import is_temporary
from scripts.data.dicom import DicomError, read_dataset
from scripts.data.prepare import (
    PreparationError,
    claim_output,
    open_output,
    run_image_tasks,
    write_results,
    write_summary,
)
from scripts.data.report_sections import report_sentences_with_fallback

SPLITS = {"train": "training", "training": "training", "validate": "validation", "validation": "validation"}
SPLITS["test"] = "test"
TABLE_KEYS = ("file", "sop_instance_uid")
#: Source extensions replaced by the image format's; any other name keeps its full name (``<uid>.17`` ->
#: ``<uid>.17.jpg``: the last component of a UID-named file is not an extension).
DICOM_EXTENSIONS = (".dcm", ".dicom")


def prepared_image_path(relative_source: str, image_format: str) -> str:
    """``images/<source path>.<image_format>`` for a DICOM file at ``relative_source`` (POSIX, under the
    DICOM folder), with a ``.dcm`` / ``.dicom`` extension replaced rather than kept."""
    stem = relative_source
    if stem.lower().endswith(DICOM_EXTENSIONS):
        stem = stem[: stem.rindex(".")]
    return f"images/{stem}.{image_format}"


def read_reports_table(path: str) -> tuple[str, dict[str, dict]]:
    """(key column, rows by key) of the reports table; the key column is ``file`` or ``sop_instance_uid``."""
    if not os.path.isfile(path):
        raise PreparationError(f"Reports table '{path}' not found: give --reports_table a CSV file.")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in reader.fieldnames or []]
        key = next((c for c in TABLE_KEYS if c in columns), None)
        if key is None or "report" not in columns:
            raise PreparationError(
                f"Reports table '{path}' needs a 'report' column and a 'file' or 'sop_instance_uid' column "
                f"(it has {columns})."
            )
        rows = {}
        for line, row in enumerate(reader, start=2):
            row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
            split = row.get("split", "").lower()
            if split and split not in SPLITS:
                raise PreparationError(
                    f"Reports table '{path}' line {line}: split {split!r} is not one of {sorted(SPLITS)}."
                )
            rows[row[key].replace("\\", "/")] = row
    return key, rows


def _split_of(row: dict, fallback_key: str) -> str:
    if row.get("split"):
        return SPLITS[row["split"].lower()]
    fraction = int(hashlib.sha256((row.get("subject_id") or fallback_key).encode()).hexdigest()[:8], 16) / 16**8
    return "training" if fraction < 0.9 else "validation" if fraction < 0.95 else "test"


def prepare_dicom(
    dicom_dir: str,
    reports_table: str,
    output_dir: str,
    view_positions: str | tuple[str, ...] = ("PA", "AP"),
    short_side: int = 512,
    image_format: str = "jpg",
    jpeg_quality: int = 95,
    num_workers: int | None = None,
    progress: bool = True,
) -> dict:
    """Prepare a folder of DICOM radiographs with a reports table; returns the summary counts.

    Args:
        dicom_dir: folder searched recursively for DICOM files.
        reports_table: CSV described in the module docstring.
        output_dir: where the images, ``datalist.json``, ``summary.json`` and ``skipped.csv`` go.
        view_positions: View Position values kept (``"PA,AP"``: frontal); files without the tag are kept.
        short_side / image_format / jpeg_quality / num_workers / progress: as for ``scripts.data.prepare``.
    """
    started = time.time()
    root, output = Path(dicom_dir), Path(output_dir)
    if isinstance(view_positions, str):
        view_positions = tuple(view.strip() for view in view_positions.split(",") if view.strip())
    if image_format not in ("jpg", "png"):
        raise PreparationError(f"image_format must be 'jpg' or 'png', got {image_format!r}.")
    if not root.is_dir():
        raise PreparationError(f"dicom_dir '{root}' is not a folder.")
    key, table = read_reports_table(reports_table)
    open_output(
        output, {"short_side": int(short_side), "image_format": image_format, "jpeg_quality": int(jpeg_quality)}
    )

    skipped: list[tuple[str, str]] = []
    counts: Counter = Counter()
    items, tasks, claimed = {}, [], {}
    files = sorted(p for p in root.rglob("*") if p.is_file() and not is_temporary(p))
    for path in files:
        relative_source = path.relative_to(root).as_posix()
        try:
            header = read_dataset(str(path), header_only=True)
        except DicomError:
            skipped.append((relative_source, "not a readable DICOM file"))
            continue
        uid = str(header.get("SOPInstanceUID", ""))
        row = table.get(relative_source if key == "file" else uid)
        if row is None:
            skipped.append((relative_source, f"no row in the reports table (by {key})"))
            counts["reports_missing"] += 1
            continue
        sentences, from_last_paragraph = report_sentences_with_fallback(row["report"])
        counts["reports_from_last_paragraph"] += int(from_last_paragraph)
        if not sentences:
            skipped.append((relative_source, "report has no usable text"))
            counts["reports_without_sections"] += 1
            continue
        relative = prepared_image_path(relative_source, image_format)
        claim_output(claimed, relative, f"'{relative_source}'")
        items[relative] = {
            "image": relative,
            "sentences": sentences,
            "subject_id": row.get("subject_id") or str(header.get("PatientID", "")),
            "study_id": str(header.get("StudyInstanceUID", "")),
            "dicom_id": uid or relative_source,
            "_split": _split_of(row, relative_source),
        }
        if (output / relative).is_file():
            counts["images_already_done"] += 1
        else:
            tasks.append((str(path), str(output / relative), int(short_side), int(jpeg_quality), view_positions))

    datalist = write_results(output, items, run_image_tasks(tasks, num_workers, progress), skipped, counts)
    head = {"files_found": len(files), "view_positions": list(view_positions)}
    return write_summary(output, head, datalist, counts, skipped, started)


@functools.wraps(prepare_dicom, assigned=("__module__", "__annotations__", "__doc__"))  # fire shows its arguments
def main(*args, **kwargs) -> None:
    output_dir = inspect.signature(prepare_dicom).bind(*args, **kwargs).arguments["output_dir"]
    summary = prepare_dicom(*args, **kwargs)
    print(json.dumps(summary, indent=2))
    usable = summary["training_images"] + summary["validation_images"] + summary["test_images"]
    if usable == 0:
        raise PreparationError(f"No usable image was produced: see {Path(output_dir) / 'skipped.csv'}.")
    print(f"Prepared {usable} images in {output_dir} ({summary['images_skipped']} files skipped, in skipped.csv).")


if __name__ == "__main__":
    import fire

    fire.Fire(main, serialize=lambda summary: None)
