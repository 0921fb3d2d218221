"""``python -m scripts.data.synthetic``: a synthetic stand-in for MIMIC-CXR-JPG + reports, in its layout and formats.

    python -m scripts.data.synthetic --output_dir data/synthetic_mimic --num_subjects 100 --seed 0

writes::

    output_dir/
      files/p10/p10000032/s50414267/<dicom_id>.jpg   8-bit grayscale radiographs (PA, some LATERAL / AP)
      files/p10/p10000032/s50414267.txt              the study's free-text report
      mimic-cxr-2.0.0-metadata.csv.gz                dicom_id, subject_id, study_id, ..., ViewPosition, Rows, ...
      mimic-cxr-2.0.0-split.csv.gz                   dicom_id, study_id, subject_id, split (per subject)
      mimic-cxr-2.0.0-chexpert.csv.gz                subject_id, study_id, 14 CheXpert labels (1.0 or empty)
      synthetic-findings.csv.gz                      per study: drawn findings and the report's sentences (JSON)
      mimic-cxr-reports.zip                          (with --reports zip/both) the reports as MIMIC ships them

Images are drawn procedurally so that what the report states is visible where it says: a wide heart
shadow for cardiomegaly, a basal opacity with a meniscus for a pleural effusion, a dark rim without lung
markings and a pleural line for a pneumothorax. Views are PA radiographs in radiological convention:
the patient's RIGHT is on the image's LEFT. Everything is deterministic given ``seed`` (each subject has
its own random stream, so the first N subjects are the same whatever ``num_subjects`` is).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import textwrap
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from scripts.common.files import atomic_path
from scripts.data.layout import CHEXPERT_LABELS, subject_folder

METADATA_CSV = "mimic-cxr-2.0.0-metadata.csv.gz"
SPLIT_CSV = "mimic-cxr-2.0.0-split.csv.gz"
CHEXPERT_CSV = "mimic-cxr-2.0.0-chexpert.csv.gz"
FINDINGS_CSV = "synthetic-findings.csv.gz"
REPORTS_ZIP = "mimic-cxr-reports.zip"

METADATA_COLUMNS = [
    "dicom_id",
    "subject_id",
    "study_id",
    "PerformedProcedureStepDescription",
    "ViewPosition",
    "Rows",
    "Columns",
    "StudyDate",
    "StudyTime",
    "ProcedureCodeSequence_CodeMeaning",
    "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
]
DRAW_WIDTH = 320
VIEW_MEANINGS = {"PA": "postero-anterior", "AP": "antero-posterior", "LATERAL": "lateral"}


@dataclass
class StudyFindings:
    """What a synthetic study shows. Sides are the patient's ("right" is drawn on the image's left)."""

    cardiomegaly: bool = False
    effusion_side: str = ""  # "", "left", "right" or "bilateral"
    effusion_size: str = ""  # "small" or "large"
    pneumothorax_side: str = ""  # "", "left" or "right"
    sentences: list[str] = field(default_factory=list)

    @property
    def no_finding(self) -> bool:
        return not (self.cardiomegaly or self.effusion_side or self.pneumothorax_side)


def draw_findings(rng: np.random.Generator) -> StudyFindings:
    """Random findings of one study: about a third normal, the rest a mix of the three conditions."""
    findings = StudyFindings()
    if rng.random() < 0.3:
        return findings
    findings.cardiomegaly = bool(rng.random() < 0.45)
    if rng.random() < 0.55:
        findings.effusion_side = str(rng.choice(["left", "right", "bilateral"], p=[0.4, 0.4, 0.2]))
        findings.effusion_size = str(rng.choice(["small", "large"]))
    if rng.random() < 0.25:
        findings.pneumothorax_side = str(rng.choice(["left", "right"]))
    if findings.no_finding:
        findings.cardiomegaly = True
    return findings


# ---------------------------------------------------------------------------------------------------
# Report text


def _findings_sentences(findings: StudyFindings, rng: np.random.Generator) -> list[str]:
    pick = lambda options: str(rng.choice(options))  # noqa: E731
    sentences = [
        pick(
            [
                "Lung volumes are normal.",
                "The lungs are well expanded.",
                "PA and lateral views of the chest were obtained.",
            ]
        )
    ]
    if findings.cardiomegaly:
        sentences.append(
            pick(
                [
                    "The heart is moderately enlarged.",
                    "There is moderate cardiomegaly.",
                    "The cardiac silhouette is enlarged.",
                ]
            )
        )
    else:
        sentences.append(
            pick(
                ["The cardiomediastinal silhouette is normal.", "Heart size is normal.", "The heart is normal in size."]
            )
        )
    side, size = findings.effusion_side, findings.effusion_size
    if side == "bilateral":
        sentences.append(f"There are {size} bilateral pleural effusions.")
    elif side:
        sentences.append(
            pick([f"There is a {size} {side} pleural effusion.", f"A {size} {side}-sided pleural effusion is present."])
        )
    if findings.pneumothorax_side:
        sentences.append(
            pick(
                [
                    f"There is a {findings.pneumothorax_side} apical pneumothorax.",
                    f"A {findings.pneumothorax_side}-sided pneumothorax is seen.",
                ]
            )
        )
    if not side and not findings.pneumothorax_side:
        sentences.append(
            pick(["There is no pleural effusion or pneumothorax.", "No pleural effusion or pneumothorax is seen."])
        )
    elif not side:
        sentences.append("No pleural effusion is seen.")
    elif not findings.pneumothorax_side:
        sentences.append("There is no pneumothorax.")
    if not side:
        sentences.append(pick(["The lungs are clear.", "There is no focal consolidation."]))
    sentences.append(pick(["The osseous structures are unremarkable.", "No acute osseous abnormality is detected."]))
    return sentences


def _impression_sentences(findings: StudyFindings) -> list[str]:
    if findings.no_finding:
        return ["No acute cardiopulmonary process."]
    sentences = []
    if findings.effusion_side == "bilateral":
        sentences.append(f"{findings.effusion_size.capitalize()} bilateral pleural effusions.")
    elif findings.effusion_side:
        sentences.append(f"{findings.effusion_size.capitalize()} {findings.effusion_side} pleural effusion.")
    if findings.pneumothorax_side:
        sentences.append(f"{findings.pneumothorax_side.capitalize()} pneumothorax.")
    if findings.cardiomegaly:
        sentences.append("Moderate cardiomegaly.")
    return sentences


def _wrap(sentences: list[str]) -> str:
    """Sentences wrapped at 76 columns with a leading space, two spaces between sentences, as in MIMIC."""
    return "\n".join(" " + line for line in textwrap.wrap("  ".join(sentences), 76))


def write_report(findings: StudyFindings, view_names: str, rng: np.random.Generator) -> tuple[str, list[str]]:
    """Report text of a study and the sentences a correct parser extracts from it (findings, then impression).

    Header styles vary as in real reports: upper case on their own line, title case with text on the same
    line, ``FINDINGS AND IMPRESSION:``, misspellings, impression only, numbered impressions, and sometimes a
    NOTIFICATION section after the impression whose text is not part of findings or impression.
    """
    findings_sentences = _findings_sentences(findings, rng)
    impression_sentences = _impression_sentences(findings)
    preamble = (
        "                                 FINAL REPORT\n"
        f" EXAMINATION:  CHEST ({view_names})\n \n"
        f" INDICATION:  ___{rng.choice(['F', 'M'])} with "
        f"{rng.choice(['cough', 'shortness of breath', 'chest pain', 'fever'])}"
        f"  // {rng.choice(['eval for pneumonia', 'eval for effusion', 'r/o acute process'])}\n \n"
        f" TECHNIQUE:  Chest {view_names.lower()}\n \n"
        f" COMPARISON:  {rng.choice(['None.', '___.', 'Chest radiograph from ___.'])}\n \n"
    )
    style = rng.choice(
        ["upper", "title_inline", "combined", "impression_only", "numbered", "misspelled"],
        p=[0.45, 0.15, 0.1, 0.1, 0.1, 0.1],
    )
    if style == "combined":
        body = f" FINDINGS AND IMPRESSION:\n{_wrap(findings_sentences + impression_sentences)}\n"
    elif style == "impression_only":
        findings_sentences = []
        body = f" IMPRESSION: \n \n{_wrap(impression_sentences)}\n"
    elif style == "title_inline":
        body = (
            f" Findings: {_wrap(findings_sentences).strip()}\n \n Impression: {_wrap(impression_sentences).strip()}\n"
        )
    elif style == "numbered" and len(impression_sentences) > 1:
        numbered = "\n".join(f" {i}. {sentence}" for i, sentence in enumerate(impression_sentences, 1))
        body = f" FINDINGS: \n \n{_wrap(findings_sentences)}\n \n IMPRESSION: \n \n{numbered}\n"
    else:
        findings_header, impression_header = (
            ("FINDNGS", "IMPRESSON") if style == "misspelled" else ("FINDINGS", "IMPRESSION")
        )
        findings_text, impression_text = _wrap(findings_sentences), _wrap(impression_sentences)
        body = f" {findings_header}: \n \n{findings_text}\n \n {impression_header}: \n \n{impression_text}\n"
    if rng.random() < 0.2 and not findings.no_finding:
        body += " \n NOTIFICATION:  The findings were discussed with Dr. ___ by telephone at 10:15 on ___.\n"
    return preamble + body, findings_sentences + impression_sentences


# ---------------------------------------------------------------------------------------------------
# Images


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Smooth random field in [0, 1] of shape (height, width): bicubic upsampling of a coarse grid."""
    coarse = rng.random((cells, max(2, round(cells * width / height)))).astype(np.float32)
    return np.asarray(Image.fromarray(coarse, mode="F").resize((width, height), Image.Resampling.BICUBIC)).clip(0, 1)


def draw_radiograph(
    findings: StudyFindings, height: int, width: int, rng: np.random.Generator, view: str = "PA"
) -> np.ndarray:
    """A chest-radiograph-like uint8 image (height, width) showing ``findings``; row 0 is the top (head).

    Frontal views (PA/AP) follow the radiological convention (patient's right on the image's left).
    Lateral views show a side silhouette and no findings. The anatomy is drawn at most ``DRAW_WIDTH``
    pixels wide and upsampled (it is smooth), then fine noise is added at full size: ~10 ms per image.
    """
    full_height, full_width = height, width
    width = min(full_width, DRAW_WIDTH)
    height = max(1, round(full_height * width / full_width))
    y, x = np.ogrid[0:height, 0:width]
    y = (y + 0.5) / height
    x = (x + 0.5) / width
    jitter = lambda scale: float(rng.normal(0.0, scale))  # noqa: E731 - small anatomical variation
    ellipse = lambda cx, cy, rx, ry: ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2  # noqa: E731
    image = np.full((height, width), 0.06, dtype=np.float32)
    if view == "LATERAL":
        image = np.where(ellipse(0.5 + jitter(0.01), 0.55, 0.36, 0.55) < 1, 0.5, image)
        image = np.where(ellipse(0.47, 0.45, 0.22, 0.3) < 1, 0.25, image)
        image = np.where(ellipse(0.40, 0.65, 0.14, 0.12) < 1, 0.6, image)
        image = np.where((x > 0.78) & (x < 0.86) & (y > 0.1), 0.75, image)  # spine at the back
    else:
        image = np.where(ellipse(0.5, 0.58, 0.47 + jitter(0.01), 0.58) < 1, 0.52, image)  # soft tissue
        markings = _smooth_noise(rng, height, width, 24)
        lungs = {}  # patient side -> (centre x, centre y, radius x, radius y)
        lungs["right"] = (0.31 + jitter(0.008), 0.44, 0.15 + jitter(0.006), 0.30 + jitter(0.01))
        lungs["left"] = (0.69 + jitter(0.008), 0.46, 0.14 + jitter(0.006), 0.28 + jitter(0.01))
        ribs = 0.05 * (np.sin(2 * np.pi * 9 * (y + 0.35 * (x - 0.5) ** 2)) > 0.55)
        for side, (cx, cy, rx, ry) in lungs.items():
            inside = ellipse(cx, cy, rx, ry) < 1
            lung = 0.16 + 0.10 * markings + ribs
            if findings.pneumothorax_side == side:
                # collapsed lung: markings only inside a smaller ellipse towards the hilum, a dark rim outside
                collapsed = ellipse(cx + (0.3 if side == "right" else -0.3) * rx, cy + 0.15 * ry, 0.62 * rx, 0.72 * ry)
                lung = np.where(collapsed < 1, lung, 0.07 + ribs)
                lung = np.where(np.abs(collapsed - 1) < 0.06, 0.42, lung)  # visceral pleural line
            if findings.effusion_side in (side, "bilateral"):
                fraction = 0.28 if findings.effusion_size == "small" else 0.6
                lateral = np.abs(x - cx) / rx  # meniscus: the fluid climbs higher at the chest wall
                level = cy + ry - 2 * ry * fraction - 0.08 * lateral**2
                lung = np.where(y > level, 0.58 + 0.03 * markings, lung)
            image = np.where(inside, lung, image)
        image = np.where((np.abs(x - 0.5) < 0.035) & (y > 0.08), 0.68, image)  # spine / mediastinum
        for sign in (-1, 1):  # clavicles, from the sternum out to the shoulders
            along = np.abs(x - 0.5)
            clavicle = np.abs(y - (0.2 - 0.22 * along + 0.2 * along**2)) < 0.013  # rises towards the shoulder
            image = np.where((along > 0.04) & (along < 0.34) & clavicle & (sign * (x - 0.5) > 0), 0.6, image)
        heart_rx = (0.20 if findings.cardiomegaly else 0.12) + jitter(0.005)
        heart_cx = 0.5 + 0.45 * heart_rx  # most of the heart lies on the patient's left (image right)
        image = np.where(ellipse(heart_cx, 0.66, heart_rx, 0.13 + jitter(0.005)) < 1, 0.64, image)
        image = np.where(ellipse(0.5, 0.96, 0.5, 0.12) < 1, 0.66, image)  # abdomen below the diaphragm
    picture = Image.fromarray((image.clip(0, 1) * 255).round().astype(np.uint8), mode="L")
    picture = picture.filter(ImageFilter.GaussianBlur(max(0.6, width / 256)))
    if (width, height) != (full_width, full_height):
        picture = picture.resize((full_width, full_height), Image.Resampling.BICUBIC)
    image = (
        np.asarray(picture, dtype=np.float32) + rng.standard_normal((full_height, full_width), dtype=np.float32) * 3.0
    )
    return image.clip(0, 255).round().astype(np.uint8)


# ---------------------------------------------------------------------------------------------------
# Files


def _write_gzip_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    """CSV compressed with a fixed gzip timestamp, so the same seed gives byte-identical files."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    with atomic_path(path) as temporary, open(temporary, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as compressed:
            compressed.write(text.getvalue().encode())


def _dicom_id(rng: np.random.Generator) -> str:
    return "-".join(f"{int(value):08x}" for value in rng.integers(0, 2**32, size=5))


def _split_of(index: int, num_subjects: int) -> str:
    """Patient-level split: ~80/10/10, and each split has a subject as soon as there are 3 subjects."""
    if num_subjects < 10:
        return (
            {num_subjects - 1: "test", num_subjects - 2: "validate"}.get(index, "train")
            if num_subjects >= 3
            else "train"
        )
    return {8: "validate", 9: "test"}.get(index % 10, "train")


@dataclass
class SyntheticTables:
    """The data set's table rows and report texts, filled study by study in the order they are drawn."""

    metadata: list[dict] = field(default_factory=list)  # per image, METADATA_COLUMNS
    splits: list[dict] = field(default_factory=list)  # per image: dicom_id, study_id, subject_id, split
    chexpert: list[dict] = field(default_factory=list)  # per study: subject_id, study_id, CHEXPERT_LABELS
    findings: list[dict] = field(default_factory=list)  # per study: the drawn findings and the report's sentences
    reports: dict[str, str] = field(default_factory=dict)  # files/pXX/pSUBJECT/sSTUDY.txt -> report text


def _check_arguments(num_subjects: int, image_size: int, reports: str) -> None:
    """Raise ``ValueError`` for no subjects, images under 32 px or an unknown ``reports`` form."""
    if int(num_subjects) < 1:
        raise ValueError(f"num_subjects must be at least 1, got {num_subjects}.")
    if int(image_size) < 32:
        raise ValueError(f"image_size must be at least 32 pixels, got {image_size}.")
    if reports not in ("tree", "zip", "both"):
        raise ValueError(f"reports must be 'tree', 'zip' or 'both', got {reports!r}.")


def _write_radiograph(
    study_dir: Path, findings: StudyFindings, view: str, image_size: int, rng: np.random.Generator
) -> tuple[str, tuple[int, int]]:
    """Draw one view of a study and save it as ``study_dir/<dicom_id>.jpg`` (8-bit grey, JPEG quality 95).

    Returns ``(dicom_id, (height, width))``: the width is ``image_size``, the height 1.0-1.25× that.
    """
    dicom_id = _dicom_id(rng)
    width = int(image_size)
    height = int(round(width * rng.uniform(1.0, 1.25)))
    pixels = draw_radiograph(findings, height, width, rng, view=view)
    image_path = study_dir / f"{dicom_id}.jpg"
    image_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode="L").save(image_path, quality=95)
    return dicom_id, (height, width)


def _metadata_row(
    dicom_id: str,
    subject_id: int,
    study_id: int,
    view: str,
    view_names: str,
    size: tuple[int, int],
    date: str,
    rng: np.random.Generator,
) -> dict:
    """The metadata-table row (``METADATA_COLUMNS``) of one image of ``size`` (height, width); draws its
    acquisition time from ``rng``."""
    height, width = size
    return {
        "dicom_id": dicom_id,
        "subject_id": subject_id,
        "study_id": study_id,
        "PerformedProcedureStepDescription": f"CHEST ({view_names})",
        "ViewPosition": view,
        "Rows": height,
        "Columns": width,
        "StudyDate": date,
        "StudyTime": f"{int(rng.integers(0, 235959)):06d}.000",
        "ProcedureCodeSequence_CodeMeaning": f"CHEST ({view_names})",
        "ViewCodeSequence_CodeMeaning": VIEW_MEANINGS[view],
        "PatientOrientationCodeSequence_CodeMeaning": "Erect",
    }


def _chexpert_row(subject_id: int, study_id: int, findings: StudyFindings) -> dict:
    """The CheXpert-table row of a study: "1.0" for each label its findings show, "" for the others."""
    labels = {
        "Cardiomegaly": findings.cardiomegaly,
        "Pleural Effusion": bool(findings.effusion_side),
        "Pneumothorax": bool(findings.pneumothorax_side),
        "No Finding": findings.no_finding,
    }
    return {
        "subject_id": subject_id,
        "study_id": study_id,
        **{name: "1.0" if labels.get(name) else "" for name in CHEXPERT_LABELS},
    }


def _findings_row(subject_id: int, study_id: int, findings: StudyFindings) -> dict:
    """The ``FINDINGS_CSV`` row of a study: its drawn findings and its report's sentences (a JSON list)."""
    return {
        "subject_id": subject_id,
        "study_id": study_id,
        "cardiomegaly": int(findings.cardiomegaly),
        "effusion_side": findings.effusion_side,
        "effusion_size": findings.effusion_size,
        "pneumothorax_side": findings.pneumothorax_side,
        "sentences": json.dumps(findings.sentences),
    }


def _add_study(
    tables: SyntheticTables,
    root: Path,
    subject_id: int,
    study_id: int,
    split: str,
    image_size: int,
    rng: np.random.Generator,
) -> None:
    """Draw one study (findings, views, report, date, images), write its images and add its rows to ``tables``.

    Draws from ``rng`` in a fixed order (findings, views, report, date, then per image its id, height,
    pixels and time): the same seed gives the same files.
    """
    findings = draw_findings(rng)
    views = ["AP"] if rng.random() < 0.1 else ["PA"] + (["LATERAL"] if rng.random() < 0.6 else [])
    view_names = " AND ".join("LAT" if view == "LATERAL" else view for view in views)
    report, findings.sentences = write_report(findings, view_names, rng)
    subject_dir = f"files/{subject_folder(subject_id)}"
    tables.reports[f"{subject_dir}/s{study_id}.txt"] = report
    date = f"21{int(rng.integers(10, 90)):02d}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}"
    study_dir = root / subject_dir / f"s{study_id}"
    for view in views:
        dicom_id, size = _write_radiograph(study_dir, findings, view, image_size, rng)
        tables.metadata.append(_metadata_row(dicom_id, subject_id, study_id, view, view_names, size, date, rng))
        tables.splits.append({"dicom_id": dicom_id, "study_id": study_id, "subject_id": subject_id, "split": split})
    tables.chexpert.append(_chexpert_row(subject_id, study_id, findings))
    tables.findings.append(_findings_row(subject_id, study_id, findings))


def _write_reports(root: Path, texts: dict[str, str], reports: str) -> None:
    """Write the report texts as a ``files/`` tree (``reports`` "tree"), as ``REPORTS_ZIP`` ("zip") or both."""
    if reports in ("tree", "both"):
        for name, text in texts.items():
            (root / name).write_text(text)
    if reports in ("zip", "both"):
        with atomic_path(root / REPORTS_ZIP) as temporary:
            with zipfile.ZipFile(temporary, "w", compression=zipfile.ZIP_DEFLATED) as archive:
                for name, text in texts.items():
                    # a fixed date, so the same seed gives a byte-identical zip
                    archive.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), text)


def _write_tables(root: Path, tables: SyntheticTables) -> None:
    """Write the metadata, split, CheXpert and findings tables (gzipped CSV) to ``root``."""
    _write_gzip_csv(root / METADATA_CSV, METADATA_COLUMNS, tables.metadata)
    _write_gzip_csv(root / SPLIT_CSV, ["dicom_id", "study_id", "subject_id", "split"], tables.splits)
    _write_gzip_csv(root / CHEXPERT_CSV, ["subject_id", "study_id", *CHEXPERT_LABELS], tables.chexpert)
    _write_gzip_csv(root / FINDINGS_CSV, list(tables.findings[0]), tables.findings)


def generate(
    output_dir: str,
    num_subjects: int = 100,
    seed: int = 0,
    image_size: int = 768,
    reports: str = "tree",
    max_studies_per_subject: int = 2,
) -> dict:
    """Write a synthetic MIMIC-CXR-JPG-format data set; returns counts {subjects, studies, images, pa_images}.

    Args:
        output_dir: folder to create (existing files of the same names are replaced).
        num_subjects: number of patients; each has 1..``max_studies_per_subject`` studies.
        seed: random seed; the same seed gives the same files.
        image_size: the short side (width) of the images in pixels; heights are 1.0-1.25× that,
            like the mostly portrait MIMIC images. Use 64-96 for tests, ≥ 512 for training.
        reports: ``"tree"`` (``files/pXX/pSUBJECT/sSTUDY.txt``), ``"zip"`` (``mimic-cxr-reports.zip``) or ``"both"``.
    """
    _check_arguments(num_subjects, image_size, reports)
    root = Path(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    tables = SyntheticTables()
    for index in range(int(num_subjects)):
        rng = np.random.default_rng([int(seed), index])
        subject_id = 10_000_000 + 9_973 * index + int(rng.integers(0, 9_000))
        for study_index in range(int(rng.integers(1, int(max_studies_per_subject) + 1))):
            study_id = (
                50_000_000 + 4_001 * (index * int(max_studies_per_subject) + study_index) + int(rng.integers(0, 4_000))
            )
            _add_study(tables, root, subject_id, study_id, _split_of(index, int(num_subjects)), int(image_size), rng)
    _write_reports(root, tables.reports, reports)
    _write_tables(root, tables)
    return {
        "subjects": int(num_subjects),
        "studies": len(tables.findings),
        "images": len(tables.metadata),
        "pa_images": sum(row["ViewPosition"] == "PA" for row in tables.metadata),
    }


def main(output_dir: str, num_subjects: int = 100, seed: int = 0, image_size: int = 768, reports: str = "tree") -> None:
    """Write a synthetic MIMIC-CXR-JPG-format data set to ``output_dir`` (see ``generate``)."""
    counts = generate(output_dir, num_subjects=num_subjects, seed=seed, image_size=image_size, reports=reports)
    print(
        f"Wrote {counts['images']} images ({counts['pa_images']} PA) of {counts['studies']} studies of "
        f"{counts['subjects']} subjects to {output_dir}"
    )


if __name__ == "__main__":
    import fire

    fire.Fire(main)
