"""``python -m scripts.data.prepare``: MIMIC-CXR-JPG + reports (or data in that layout) -> training-ready data.

    python -m scripts.data.prepare --mimic_dir /data/mimic-cxr-jpg/2.0.0 \\
        --reports /data/mimic-cxr-reports.zip --output_dir data/prepared

For every image whose ``ViewPosition`` is one of ``view_positions`` (default PA) and whose study's report
has a FINDINGS or IMPRESSION section, it writes the image resized so that its short side is
``short_side`` (antialiased) as 8-bit grayscale to the same relative path under ``output_dir``, and lists
it with the report's sentences in ``output_dir/datalist.json`` under the official patient-level split
(``train``/``validate``/``test`` → ``training``/``validation``/``test``)::

    {"training": [{"image": "files/p10/p10000032/s50414267/02aa804e-....jpg",
                   "sentences": ["There is no focal consolidation ...", ...],
                   "subject_id": 10000032, "study_id": 50414267, "dicom_id": "02aa804e-..."}, ...],
     "validation": [...], "test": [...]}

Images already written by an earlier run (with the same settings) are kept, so an interrupted run is
resumed by running the same command again. Every file is written to a temporary name and renamed when
complete. A report without FINDINGS/IMPRESSION headers gives the sentences of its last paragraph, as
MIMIC-CXR's own section extractor does (counted as ``reports_from_last_paragraph``). Unreadable images,
missing reports and reports with no usable text are skipped and listed in ``output_dir/skipped.csv``;
``output_dir/summary.json`` holds the counts. The command fails (exit code 1) only when no usable image
was produced.
"""

from __future__ import annotations

import csv
import functools
import inspect
import json
import logging
import os
import signal
import sys
import time
import zipfile
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd

from scripts.common.errors import CxrLdmError
from scripts.common.files import atomic_path, atomic_write_text, remove_leftovers
from scripts.common.progress import progress as progress_bar
from scripts.data.dicom import DicomError
from scripts.data.images import load_grey, resize_short_side
from scripts.data.layout import image_path, subject_folder
from scripts.data.report_sections import report_sentences_with_fallback

logger = logging.getLogger(__name__)

METADATA_CSV = "mimic-cxr-2.0.0-metadata.csv"
SPLIT_CSV = "mimic-cxr-2.0.0-split.csv"
SPLIT_NAMES = {"train": "training", "validate": "validation", "test": "test"}
SETTINGS_FILE = "preparation.json"


class PreparationError(CxrLdmError, RuntimeError):
    """The inputs cannot be prepared (missing files, wrong columns, a subject in several splits, nothing usable)."""


def _find_table(root: Path, name: str, given: str | None) -> Path:
    """``given`` if set, else ``root/name.gz`` or ``root/name``."""
    if given:
        path = Path(given)
        if not path.is_file():
            raise PreparationError(f"'{path}' does not exist: check the path given for {name}.")
        return path
    for candidate in (root / (name + ".gz"), root / name):
        if candidate.is_file():
            return candidate
    raise PreparationError(
        f"Neither {name}.gz nor {name} found in '{root}': point --mimic_dir at the MIMIC-CXR-JPG folder that holds "
        f"'files/' and the CSV tables, or give the table's path explicitly."
    )


def read_image_table(metadata_csv: Path, split_csv: Path, view_positions: tuple[str, ...]) -> pd.DataFrame:
    """Rows (dicom_id, subject_id, study_id, split) of the images with a wanted view, checked to be patient-level."""
    metadata = pd.read_csv(
        metadata_csv,
        dtype={"dicom_id": str},
        usecols=lambda c: c in {"dicom_id", "subject_id", "study_id", "ViewPosition"},
    )
    splits = pd.read_csv(split_csv, dtype={"dicom_id": str, "split": str})
    for table, path, columns in (
        (metadata, metadata_csv, ("dicom_id", "subject_id", "study_id", "ViewPosition")),
        (splits, split_csv, ("dicom_id", "split")),
    ):
        missing = [column for column in columns if column not in table.columns]
        if missing:
            raise PreparationError(f"'{path}' has no column(s) {missing}: is it the MIMIC-CXR-JPG table?")
    wanted = {view.upper() for view in view_positions}
    images = metadata[metadata["ViewPosition"].fillna("").str.upper().isin(wanted)]
    images = images.merge(splits[["dicom_id", "split"]], on="dicom_id", how="inner")
    unknown = set(images["split"]) - set(SPLIT_NAMES)
    if unknown:
        raise PreparationError(f"'{split_csv}' has split names {sorted(unknown)}; expected {sorted(SPLIT_NAMES)}.")
    per_subject = images.groupby("subject_id")["split"].nunique()
    shared = per_subject[per_subject > 1]
    if len(shared):
        raise PreparationError(
            f"{len(shared)} subject(s) (e.g. {shared.index[0]}) have images in several splits in '{split_csv}': "
            "the split must be per patient, so that no patient is in both training and test."
        )
    return images.sort_values(["subject_id", "study_id", "dicom_id"]).reset_index(drop=True)


class ReportSource:
    """Report texts by (subject_id, study_id) from a ``files/pXX/pSUBJECT/sSTUDY.txt`` tree or the reports zip."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.archive = None
        if self.path.is_file() and zipfile.is_zipfile(self.path):
            self.archive = zipfile.ZipFile(self.path)
            # the official zip has a top folder ("files/..." or "mimic-cxr-reports/files/..."): index by file name
            self.members = {Path(name).name: name for name in self.archive.namelist() if name.endswith(".txt")}
        elif not self.path.is_dir():
            raise PreparationError(
                f"Reports '{self.path}' is neither a folder nor a zip file: give --reports the reports tree or "
                "mimic-cxr-reports.zip."
            )
        else:
            self.tree = self.path / "files" if (self.path / "files").is_dir() else self.path

    def read(self, subject_id: int, study_id: int) -> str | None:
        """The report text, or ``None`` when there is none."""
        name = f"s{study_id}.txt"
        if self.archive is not None:
            member = self.members.get(name)
            return None if member is None else self.archive.read(member).decode("utf-8", errors="replace")
        path = self.tree / subject_folder(subject_id) / name
        return path.read_text(errors="replace") if path.is_file() else None


def resize_image(
    source: str, destination: str, short_side: int, quality: int, view_positions: tuple[str, ...] | None = None
) -> tuple[str, str]:
    """Write ``source`` as 8-bit grayscale with its short side resized to ``short_side`` to ``destination``.

    Returns ``(destination, "")`` on success or ``(destination, reason)`` when the image cannot be used.
    The image is written to a temporary name and renamed, so ``destination`` is complete whenever it exists.
    """
    try:
        image = resize_short_side(load_grey(source, view_positions), short_side)
        with atomic_path(destination) as temporary:
            image.save(temporary, format="PNG" if destination.endswith(".png") else "JPEG", quality=quality)
    except DicomError as error:
        return destination, str(error).replace(f"'{source}' ", "", 1)
    except (OSError, ValueError, SyntaxError) as error:  # PIL raises these for truncated / corrupt files
        detail = str(error).splitlines()[0] if str(error) else ""
        return destination, f"unreadable image ({type(error).__name__}: {detail})"
    return destination, ""


def run_image_tasks(tasks: list[tuple], num_workers: int | None, progress: bool) -> list[tuple[str, str]]:
    """``resize_image(*task)`` for every task, in ``num_workers`` processes (None: all CPUs; 0: here)."""
    workers = (os.cpu_count() or 1) if num_workers is None else int(num_workers)
    if workers > 0 and len(tasks) > 1:
        with ProcessPoolExecutor(
            max_workers=min(workers, len(tasks)), initializer=die_with_parent, initargs=(os.getpid(),)
        ) as pool:
            results = pool.map(_resize_in_worker, tasks, chunksize=max(1, min(64, len(tasks) // (4 * workers))))
            return list(progress_bar(results, len(tasks), "images", enabled=progress, unit="img"))
    return [resize_image(*task) for task in progress_bar(tasks, len(tasks), "images", enabled=progress, unit="img")]


def die_with_parent(parent_pid: int) -> None:
    """Pool-worker initializer: end this worker when the preparing process dies (killed, crashed).

    On Linux the kernel sends SIGKILL to the worker when its parent exits (``PR_SET_PDEATHSIG``);
    ``_resize_in_worker`` also checks the parent before each image, for other systems.
    """
    global _PARENT_PID
    _PARENT_PID = parent_pid
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(1)


_PARENT_PID: int | None = None


def _resize_in_worker(task: tuple) -> tuple[str, str]:
    if _PARENT_PID is not None and os.getppid() != _PARENT_PID:
        os._exit(1)  # orphaned: nobody will use what this worker writes
    return resize_image(*task)


def open_output(output: Path, settings: dict) -> None:
    """Create ``output``, or check that it was prepared with the same ``settings`` (then a run resumes);
    remove the temporary files an interrupted run left."""
    output.mkdir(parents=True, exist_ok=True)
    settings_path = output / SETTINGS_FILE
    if settings_path.is_file():
        previous = json.loads(settings_path.read_text())
        if previous != settings:
            raise PreparationError(
                f"'{output}' was prepared with {previous}, not {settings}: use another --output_dir, or the same "
                "settings to resume."
            )
    else:
        atomic_write_text(settings_path, json.dumps(settings, indent=2) + "\n")
    remove_leftovers(output)


def claim_output(claimed: dict[str, str], relative: str, source: str) -> None:
    """Record that ``source`` is written to ``relative``; two sources for one output are an error, not an
    overwrite. Names are compared case-insensitively, as some file systems do.

    Raises:
        PreparationError: another source already claimed ``relative``.
    """
    key = relative.casefold()
    if key in claimed and claimed[key] != source:
        raise PreparationError(
            f"{claimed[key]} and {source} would both be written to '{relative}': nothing was written; "
            "rename or remove one of them (or its table row) and run again."
        )
    claimed[key] = source


def write_results(
    output: Path, items: dict, results: list[tuple[str, str]], skipped: list[tuple[str, str]], counts: Counter
) -> dict:
    """Count the image results, list failures in ``skipped``, and write ``datalist.json`` and ``skipped.csv``.

    Args:
        items: relative image path -> datalist item (with its ``_split``) for every image attempted.
        results: ``(destination, reason)`` of ``resize_image`` per image ("" when written).
        skipped: ``(id, reason)`` rows so far; the failed images are added.
    Returns the datalist (split name -> items).
    """
    failed = set()
    for destination, reason in results:
        relative = Path(destination).relative_to(output).as_posix()
        if reason:
            failed.add(relative)
            skipped.append((items[relative]["dicom_id"], reason))
        else:
            counts["images_written"] += 1
    counts["images_unreadable"] = len(failed)
    datalist = {name: [] for name in SPLIT_NAMES.values()}
    for relative, item in items.items():
        if relative not in failed:
            datalist[item.pop("_split")].append(item)
    atomic_write_text(output / "datalist.json", json.dumps(datalist, indent=1) + "\n")
    with atomic_path(output / "skipped.csv") as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["dicom_id", "reason"])
        writer.writerows(skipped)
    return datalist


def write_summary(output: Path, head: dict, datalist: dict, counts: Counter, skipped: list, started: float) -> dict:
    """Write and return ``summary.json``: ``head``, the images per split, and the counts of a preparation."""
    summary = {
        **head,
        **{f"{name}_images": len(entries) for name, entries in datalist.items()},
        **{key: counts[key] for key in ("images_written", "images_already_done", "images_unreadable")},
        **{key: counts[key] for key in ("reports_missing", "reports_without_sections", "reports_from_last_paragraph")},
        "images_skipped": len(skipped),
        "seconds": round(time.time() - started, 1),
    }
    atomic_write_text(output / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def parse_view_positions(view_positions: str | tuple[str, ...]) -> tuple[str, ...]:
    """``"PA,AP"`` or ``("PA", "AP")`` -> ``("PA", "AP")`` (blank names of the string form dropped)."""
    if isinstance(view_positions, str):
        view_positions = tuple(view.strip() for view in view_positions.split(",") if view.strip())
    return tuple(str(view) for view in view_positions)


def check_arguments(root: Path, image_format: str, short_side: int) -> None:
    """Raise ``PreparationError`` for an unknown image format, a short side under 8 px or a missing input folder."""
    if image_format not in ("jpg", "png"):
        raise PreparationError(f"image_format must be 'jpg' or 'png', got {image_format!r}.")
    if int(short_side) < 8:
        raise PreparationError(f"short_side must be at least 8 pixels, got {short_side}.")
    if not root.is_dir():
        raise PreparationError(f"mimic_dir '{root}' is not a folder: give the MIMIC-CXR-JPG root (it holds 'files/').")


def read_study_report(source: ReportSource, subject_id: int, study_id: int, counts: Counter) -> tuple[list[str], str]:
    """A study's report sentences and why its images are skipped ("" when they are not).

    Counts the report in ``counts`` as missing, without sections or read from its last paragraph.
    """
    text = source.read(subject_id, study_id)
    sentences, from_last_paragraph = ([], False) if text is None else report_sentences_with_fallback(text)
    counts["reports_from_last_paragraph"] += int(from_last_paragraph)
    if text is None:
        counts["reports_missing"] += 1
        return sentences, "no report"
    if not sentences:
        counts["reports_without_sections"] += 1
        return sentences, "report has no FINDINGS/IMPRESSION and no usable last paragraph"
    return sentences, ""


def source_image(root: Path, subject_id: int, study_id: int, dicom_id: str) -> Path:
    """The original image of a table row: the MIMIC-CXR-JPG ``.jpg``, or a ``.png`` of that name (own data)."""
    original = root / image_path(subject_id, study_id, dicom_id)
    if not original.is_file() and original.with_suffix(".png").is_file():
        original = original.with_suffix(".png")
    return original


def plan_images(
    images: pd.DataFrame,
    source: ReportSource,
    root: Path,
    output: Path,
    image_format: str,
    short_side: int,
    jpeg_quality: int,
    skipped: list[tuple[str, str]],
    counts: Counter,
) -> tuple[list[tuple], dict]:
    """The resize tasks and the datalist items of the images of ``images`` whose study has a usable report.

    Images of studies without one are added to ``skipped``; images an earlier run wrote are counted as
    ``images_already_done`` and get no task.

    Returns:
        ``(tasks, items)``: ``resize_image`` arguments per image still to write, and relative output path ->
        datalist item (with its ``_split``) per image, in table order.
    """
    sentences_of: dict[int, list[str]] = {}
    problem_of: dict[int, str] = {}  # study_id -> why its images are skipped
    tasks, items, claimed = [], {}, {}
    for row in images.itertuples(index=False):
        if row.study_id not in sentences_of:  # one report per study, read once
            sentences_of[row.study_id], problem = read_study_report(source, row.subject_id, row.study_id, counts)
            if problem:
                problem_of[row.study_id] = problem
        if row.study_id in problem_of:
            skipped.append((row.dicom_id, problem_of[row.study_id]))
            continue
        relative = image_path(row.subject_id, row.study_id, row.dicom_id, image_format)
        claim_output(claimed, relative, f"image {row.dicom_id!r} of subject {row.subject_id}, study {row.study_id}")
        if relative in items:  # the same image listed twice by the tables: prepared once
            continue
        items[relative] = {
            "image": relative,
            "sentences": sentences_of[row.study_id],
            "subject_id": int(row.subject_id),
            "study_id": int(row.study_id),
            "dicom_id": str(row.dicom_id),
            "_split": SPLIT_NAMES[row.split],
        }
        if (output / relative).is_file():
            counts["images_already_done"] += 1
        else:
            original = source_image(root, row.subject_id, row.study_id, row.dicom_id)
            tasks.append((str(original), str(output / relative), int(short_side), int(jpeg_quality)))
    return tasks, items


def prepare(
    mimic_dir: str,
    output_dir: str,
    reports: str | None = None,
    metadata_csv: str | None = None,
    split_csv: str | None = None,
    view_positions: str | tuple[str, ...] = ("PA",),
    short_side: int = 512,
    image_format: str = "jpg",
    jpeg_quality: int = 95,
    num_workers: int | None = None,
    limit: int | None = None,
    progress: bool = True,
) -> dict:
    """Prepare MIMIC-CXR(-JPG-format) data; returns the summary counts (see the module docstring).

    Args:
        mimic_dir: MIMIC-CXR-JPG root: ``files/`` tree and, unless given explicitly, the metadata / split
            tables (``.csv.gz`` or ``.csv``).
        output_dir: where the images, ``datalist.json``, ``summary.json`` and ``skipped.csv`` go.
        reports: the MIMIC-CXR reports: ``mimic-cxr-reports.zip``, or a folder holding
            ``files/pXX/pSUBJECT/sSTUDY.txt`` (default: ``mimic_dir``).
        metadata_csv, split_csv: paths of the tables when they are not in ``mimic_dir``.
        view_positions: views to keep (``ViewPosition`` values), e.g. ``PA`` or ``"PA,AP"``.
        short_side: the short side of the written images in pixels (512 for the released model).
        image_format: ``jpg`` (quality ``jpeg_quality``) or ``png`` (lossless, ~5× larger).
        num_workers: parallel processes for the images (default: all CPUs; 0 runs in this process).
        limit: prepare only the first ``limit`` wanted images (sorted by subject, study, image), for a trial run.
        progress: show a progress bar.
    """
    started = time.time()
    root, output = Path(mimic_dir), Path(output_dir)
    view_positions = parse_view_positions(view_positions)
    check_arguments(root, image_format, short_side)
    images = read_image_table(
        _find_table(root, METADATA_CSV, metadata_csv), _find_table(root, SPLIT_CSV, split_csv), view_positions
    )
    if limit is not None:
        images = images.head(int(limit))
    source = ReportSource(Path(reports) if reports else root)

    open_output(
        output, {"short_side": int(short_side), "image_format": image_format, "jpeg_quality": int(jpeg_quality)}
    )

    skipped: list[tuple[str, str]] = []
    counts: Counter = Counter()
    tasks, items = plan_images(images, source, root, output, image_format, short_side, jpeg_quality, skipped, counts)
    datalist = write_results(output, items, run_image_tasks(tasks, num_workers, progress), skipped, counts)
    studies = len({item["study_id"] for entries in datalist.values() for item in entries})
    head = {"images_selected": len(images), "view_positions": list(view_positions), "studies": studies}
    return write_summary(output, head, datalist, counts, skipped, started)


@functools.wraps(prepare, assigned=("__module__", "__annotations__"))  # fire shows prepare's arguments
def main(*args, **kwargs) -> None:
    output_dir = inspect.signature(prepare).bind(*args, **kwargs).arguments["output_dir"]
    try:
        summary = prepare(*args, **kwargs)
    except PreparationError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    print(json.dumps(summary, indent=2))
    usable = summary["training_images"] + summary["validation_images"] + summary["test_images"]
    if usable == 0:
        print(f"error: no usable image was produced (see {Path(output_dir) / 'skipped.csv'}).", file=sys.stderr)
        raise SystemExit(1)
    print(f"Prepared {usable} images in {output_dir} ({summary['images_skipped']} skipped, in skipped.csv).")


main.__doc__ = (
    "Prepare MIMIC-CXR-JPG-format data for training; prints the summary.\n" + prepare.__doc__.split("\n", 1)[1]
)


if __name__ == "__main__":
    import fire

    fire.Fire(main)
