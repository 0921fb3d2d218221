"""CheXpert-format label files (``mimic-cxr-2.0.0-chexpert.csv[.gz]``): per study, the 14 findings as 1 (positive),
0 (negative), -1 (uncertain) or blank (not mentioned, read as NaN)."""

from __future__ import annotations

import csv
import gzip
import math
import os


def label_value(text) -> float:
    """A label cell as a number: ``"1.0"`` -> 1.0, ``"-1"`` -> -1.0, blank -> NaN.

    Raises:
        ValueError: the cell is neither blank nor a number.
    """
    text = str(text if text is not None else "").strip()
    return float(text) if text else math.nan


def read_label_table(path: str) -> tuple[list[str], list[dict]]:
    """(column names, rows) of a CheXpert-format CSV (``.csv`` or ``.csv.gz``); cells are the file's text."""
    path = os.fspath(path)
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        rows = [{k.strip(): v for k, v in row.items() if k is not None} for row in reader]
    return columns, rows


def read_chexpert_labels(path: str) -> dict[str, dict[str, float]]:
    """CheXpert labels per study id (``mimic-cxr-2.0.0-chexpert.csv[.gz]``): label name → 1, 0, -1 or nan."""
    _, rows = read_label_table(path)
    labels = {}
    for row in rows:
        study = str(row.pop("study_id")).lstrip("s")
        row.pop("subject_id", None)
        labels[study] = {k: label_value(v) for k, v in row.items()}
    return labels
