"""CheXpert-format label files (``mimic-cxr-2.0.0-chexpert.csv[.gz]``) of real test images."""

from __future__ import annotations

import csv
import gzip
import math


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
