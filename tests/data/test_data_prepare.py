"""MIMIC-CXR preparation on generated synthetic trees: datalists, splits, sizes, sentences, resume, bad input."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from monai.data import load_decathlon_datalist
from PIL import Image

import scripts.data.prepare as prepare_module
from helpers.bundle import BUNDLE_ROOT
from helpers.data import load_datalist, make_synthetic_mimic
from scripts.common.files import is_temporary, temporary_path
from scripts.data.prepare import PreparationError, prepare
from scripts.data.synthetic import FINDINGS_CSV, METADATA_CSV, SPLIT_CSV

SHORT_SIDE = 64


@pytest.fixture(scope="module")
def raw_root(tmp_path_factory) -> Path:
    """20 synthetic subjects, 80 px wide images, reports both as a tree and as the zip (read-only for tests)."""
    return make_synthetic_mimic(tmp_path_factory.mktemp("raw"), num_subjects=20, image_size=80, seed=3, reports="both")


@pytest.fixture(scope="module")
def prepared(raw_root, tmp_path_factory) -> tuple[Path, dict]:
    output = tmp_path_factory.mktemp("prepared")
    summary = prepare(str(raw_root), str(output), short_side=SHORT_SIDE, num_workers=0, progress=False)
    return output, summary


def _copy(raw_root: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "raw"
    shutil.copytree(raw_root, copy)
    return copy


def _all_items(datalist: dict) -> list[dict]:
    return [item for entries in datalist.values() for item in entries]


def test_datalist_has_disjoint_patient_splits_of_pa_images_only(raw_root, prepared):
    output, summary = prepared
    datalist = load_datalist(output)
    assert set(datalist) == {"training", "validation", "test"}
    assert all(len(entries) > 0 for entries in datalist.values())
    subjects = {name: {item["subject_id"] for item in entries} for name, entries in datalist.items()}
    assert not subjects["training"] & subjects["validation"]
    assert not subjects["training"] & subjects["test"]
    assert not subjects["validation"] & subjects["test"]

    metadata = pd.read_csv(raw_root / METADATA_CSV, dtype={"dicom_id": str})
    views = dict(zip(metadata["dicom_id"], metadata["ViewPosition"]))
    assert {views[item["dicom_id"]] for item in _all_items(datalist)} == {"PA"}
    assert set(metadata["ViewPosition"]) > {"PA"}  # the input really had other views to leave out
    assert len(_all_items(datalist)) == (metadata["ViewPosition"] == "PA").sum() == summary["images_written"]

    official = pd.read_csv(raw_root / SPLIT_CSV, dtype={"dicom_id": str})
    official_split = dict(zip(official["dicom_id"], official["split"]))
    names = {"training": "train", "validation": "validate", "test": "test"}
    assert all(
        official_split[item["dicom_id"]] == names[name] for name, entries in datalist.items() for item in entries
    )


def test_images_are_8_bit_grayscale_with_the_requested_short_side(raw_root, prepared):
    output, _ = prepared
    metadata = pd.read_csv(raw_root / METADATA_CSV, dtype={"dicom_id": str}).set_index("dicom_id")
    for item in _all_items(load_datalist(output)):
        with Image.open(output / item["image"]) as image:
            assert image.mode == "L"
            width, height = image.size
        assert min(width, height) == SHORT_SIDE
        original = metadata.loc[item["dicom_id"]]
        assert abs(height / width - original["Rows"] / original["Columns"]) < 2 / SHORT_SIDE  # aspect kept
        assert (
            item["image"]
            == f"files/p{str(item['subject_id'])[:2]}/p{item['subject_id']}/s{item['study_id']}/{item['dicom_id']}.jpg"
        )


def test_sentences_match_the_report_texts(raw_root, prepared):
    output, _ = prepared
    truth = pd.read_csv(raw_root / FINDINGS_CSV, keep_default_na=False)
    expected = {row.study_id: json.loads(row.sentences) for row in truth.itertuples()}
    items = _all_items(load_datalist(output))
    assert all(item["sentences"] == expected[item["study_id"]] for item in items)
    assert all(len(item["sentences"]) >= 1 for item in items)
    # the datalist loads with MONAI and points at existing files
    training = load_decathlon_datalist(str(output / "datalist.json"), data_list_key="training", base_dir=str(output))
    assert all(Path(item["image"]).is_file() for item in training)


def test_reports_zip_and_uncompressed_tables_give_the_same_datalist(raw_root, prepared, tmp_path):
    copy = _copy(raw_root, tmp_path)
    for name in (METADATA_CSV, SPLIT_CSV):
        (copy / name.removesuffix(".gz")).write_bytes(gzip.decompress((copy / name).read_bytes()))
        (copy / name).unlink()
    for report in (copy / "files").rglob("s*.txt"):
        report.unlink()  # only the zip is left
    output = tmp_path / "prepared"
    prepare(
        str(copy),
        str(output),
        reports=str(copy / "mimic-cxr-reports.zip"),
        short_side=SHORT_SIDE,
        num_workers=0,
        progress=False,
    )
    assert load_datalist(output) == load_datalist(prepared[0])


def test_interrupted_run_resumes_without_redoing_finished_images(raw_root, prepared, tmp_path, monkeypatch):
    output = tmp_path / "prepared"
    real_resize = prepare_module.resize_image
    calls = []

    def resize_then_interrupt(*args):
        if len(calls) == 5:
            # a crash in the middle of writing the 6th image leaves a partial file behind
            Path(temporary_path(args[1])).parent.mkdir(parents=True, exist_ok=True)
            Path(temporary_path(args[1])).write_bytes(b"\xff\xd8 half a jpeg")
            raise KeyboardInterrupt
        calls.append(args[1])
        return real_resize(*args)

    monkeypatch.setattr(prepare_module, "resize_image", resize_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        prepare(str(raw_root), str(output), short_side=SHORT_SIDE, num_workers=0, progress=False)
    monkeypatch.undo()
    assert not (output / "datalist.json").exists()  # no half datalist that a trainer could pick up
    finished = {path: Path(path).stat().st_mtime_ns for path in calls}
    assert len(finished) == 5 and all(Image.open(path).size for path in finished)

    summary = prepare(str(raw_root), str(output), short_side=SHORT_SIDE, num_workers=0, progress=False)
    assert summary["images_already_done"] == 5
    assert summary["images_written"] == prepared[1]["images_written"] - 5
    assert {path: Path(path).stat().st_mtime_ns for path in finished} == finished  # not rewritten
    assert not [path for path in output.rglob("*") if is_temporary(path)]
    assert load_datalist(output) == load_datalist(prepared[0])

    again = prepare(str(raw_root), str(output), short_side=SHORT_SIDE, num_workers=0, progress=False)
    assert again["images_written"] == 0 and again["images_already_done"] == summary["images_written"] + 5


def test_corrupt_image_and_bad_reports_are_skipped_and_counted(raw_root, tmp_path):
    copy = _copy(raw_root, tmp_path)
    metadata = pd.read_csv(copy / METADATA_CSV, dtype={"dicom_id": str})
    pa = metadata[metadata["ViewPosition"] == "PA"].drop_duplicates("study_id").reset_index(drop=True)
    path_of = lambda row, name: copy / "files" / f"p{str(row.subject_id)[:2]}" / f"p{row.subject_id}" / name  # noqa: E731
    corrupt, sectionless, missing, headerless = pa.iloc[0], pa.iloc[1], pa.iloc[2], pa.iloc[3]
    image = path_of(corrupt, f"s{corrupt.study_id}/{corrupt.dicom_id}.jpg")
    image.write_bytes(image.read_bytes()[:200])  # truncated JPEG
    path_of(sectionless, f"s{sectionless.study_id}.txt").write_text(
        " EXAMINATION: CHEST\n\n INDICATION: ___\n\n COMPARISON: None.\n"
    )
    # no FINDINGS/IMPRESSION header: the last paragraph is the report's text, as in MIMIC-CXR's extractor
    path_of(headerless, f"s{headerless.study_id}.txt").write_text(
        "                                 FINAL REPORT\n EXAMINATION: CHEST (PA AND LAT)\n\n"
        " Heart size is normal.\n\n Small left pleural effusion. No pneumothorax.\n"
    )
    path_of(missing, f"s{missing.study_id}.txt").unlink()

    output = tmp_path / "prepared"
    summary = prepare(str(copy), str(output), short_side=SHORT_SIDE, num_workers=0, progress=False)
    assert summary["images_unreadable"] == 1
    assert summary["reports_without_sections"] == 1
    assert summary["reports_missing"] == 1
    assert summary["reports_from_last_paragraph"] == 1
    pa_count = (metadata["ViewPosition"] == "PA").sum()
    skipped_pa = metadata[
        (metadata["ViewPosition"] == "PA") & metadata["study_id"].isin([sectionless.study_id, missing.study_id])
    ]
    assert summary["images_skipped"] == 1 + len(skipped_pa)
    kept = {item["dicom_id"] for item in _all_items(load_datalist(output))}
    assert len(kept) == pa_count - summary["images_skipped"]
    skipped = pd.read_csv(output / "skipped.csv", dtype={"dicom_id": str})
    reasons = dict(zip(skipped["dicom_id"], skipped["reason"]))
    assert reasons[corrupt.dicom_id].startswith("unreadable image")
    assert reasons[sectionless.dicom_id] == "report has no FINDINGS/IMPRESSION and no usable last paragraph"
    assert reasons[missing.dicom_id] == "no report"
    assert not set(reasons) & kept
    fallback = next(item for item in _all_items(load_datalist(output)) if item["dicom_id"] == headerless.dicom_id)
    assert fallback["sentences"] == ["Small left pleural effusion.", "No pneumothorax."]
    assert json.loads((output / "summary.json").read_text()) == summary


def test_nothing_usable_exits_non_zero_with_a_message(raw_root, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        prepare_module.main(str(raw_root), str(tmp_path / "out"), view_positions="NONE", num_workers=0, progress=False)
    assert exit_info.value.code == 1
    assert "no usable image" in capsys.readouterr().err


def test_bad_inputs_give_one_line_errors(raw_root, prepared, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        prepare_module.main(str(tmp_path / "missing"), str(tmp_path / "out"), progress=False)
    assert exit_info.value.code == 2
    assert "is not a folder" in capsys.readouterr().err
    with pytest.raises(PreparationError, match="prepared with"):  # mixing image sizes in one folder
        prepare(str(raw_root), str(prepared[0]), short_side=SHORT_SIDE // 2, num_workers=0, progress=False)
    copy = _copy(raw_root, tmp_path)
    splits = pd.read_csv(copy / SPLIT_CSV, dtype={"dicom_id": str})
    subject = splits["subject_id"].value_counts().index[0]  # a subject with several images
    first = splits.index[splits["subject_id"] == subject][0]
    splits.loc[first, "split"] = "test" if splits.loc[first, "split"] != "test" else "train"
    splits.to_csv(copy / SPLIT_CSV, index=False)
    with pytest.raises(PreparationError, match="several splits"):
        prepare(str(copy), str(tmp_path / "out2"), short_side=SHORT_SIDE, num_workers=0, progress=False)


def test_command_line_generates_and_prepares_in_parallel(tmp_path):
    raw, output = tmp_path / "raw", tmp_path / "prepared"
    commands = [
        [
            sys.executable,
            "-m",
            "scripts.data.synthetic",
            "--output_dir",
            str(raw),
            "--num_subjects",
            "6",
            "--seed",
            "1",
            "--image_size",
            "72",
        ],
        [
            sys.executable,
            "-m",
            "scripts.data.prepare",
            "--mimic_dir",
            str(raw),
            "--output_dir",
            str(output),
            "--short_side",
            "48",
            "--view_positions",
            "PA,AP",
            "--num_workers",
            "2",
            "--progress",
            "False",
        ],
    ]
    for command in commands:
        result = subprocess.run(command, cwd=BUNDLE_ROOT, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
    metadata = pd.read_csv(raw / METADATA_CSV)
    items = _all_items(load_datalist(output))
    assert len(items) == metadata["ViewPosition"].isin(["PA", "AP"]).sum()
    assert "Prepared" in result.stdout
    assert all(min(Image.open(output / item["image"]).size) == 48 for item in items)


def test_own_data_with_16_bit_png_images_is_stretched_to_8_bits(tmp_path):
    root = tmp_path / "own"
    study = root / "files" / "p12" / "p12345678" / "s55555555"
    study.mkdir(parents=True)
    pixels = (np.linspace(100, 3000, 120 * 90).reshape(120, 90)).astype(np.uint16)  # 12-bit values in 16 bits
    pixels[:10, :10] = 4000  # bright top-left corner
    Image.fromarray(pixels).save(study / "image1.png")
    (study.parent / "s55555555.txt").write_text("FINDINGS: Big heart.\nIMPRESSION: Cardiomegaly.\n")
    pd.DataFrame(
        {"dicom_id": ["image1"], "subject_id": [12345678], "study_id": [55555555], "ViewPosition": ["PA"]}
    ).to_csv(root / "meta.csv", index=False)
    pd.DataFrame({"dicom_id": ["image1"], "split": ["train"]}).to_csv(root / "split.csv", index=False)
    output = tmp_path / "prepared"
    prepare(
        str(root),
        str(output),
        metadata_csv=str(root / "meta.csv"),
        split_csv=str(root / "split.csv"),
        short_side=45,
        image_format="png",
        num_workers=0,
        progress=False,
    )
    (item,) = load_datalist(output)["training"]
    assert item["sentences"] == ["Big heart.", "Cardiomegaly."] and item["image"].endswith("image1.png")
    written = np.asarray(Image.open(output / item["image"]))
    assert written.dtype == np.uint8 and written.shape == (60, 45)
    assert written.min() <= 2 and written.max() == 255 and written[0, 0] == 255  # full range, orientation kept


def _children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_killing_preparation_ends_its_workers(raw_root, tmp_path):
    """SIGKILL of the main process: its image workers stop too instead of writing on for minutes."""
    # Each image takes 1 s in the workers, so without the fix a worker would go on through its chunk.
    code = (
        "import sys, time\n"
        "import scripts.data.prepare as prepare_module\n"
        "resize = prepare_module.resize_image\n"
        "def slow(*task):\n"
        "    time.sleep(1.0)\n"
        "    return resize(*task)\n"
        "prepare_module.resize_image = slow\n"
        "prepare_module.main(sys.argv[1], sys.argv[2], short_side=32, num_workers=2, progress=False)\n"
    )
    output = tmp_path / "prepared"
    env = {**os.environ, "PYTHONPATH": str(BUNDLE_ROOT)}
    main = subprocess.Popen(
        [sys.executable, "-c", code, str(raw_root), str(output)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 60
        workers: list[int] = []
        while time.time() < deadline and len(workers) < 2 and main.poll() is None:
            time.sleep(0.2)
            workers = _children(main.pid)
        assert len(workers) >= 2, "the pool did not start"
        time.sleep(1.5)  # workers are inside their chunks now
    finally:
        main.send_signal(signal.SIGKILL)
        main.wait()
    time.sleep(2.0)
    survivors = [pid for pid in workers if _alive(pid)]
    for pid in survivors:  # do not leave them running whatever the outcome
        os.kill(pid, signal.SIGKILL)
    assert survivors == [], "workers kept running after the main process was killed"


def test_two_images_with_one_output_name_stop_before_anything_is_written(raw_root, tmp_path):
    """Image ids that differ only in case share an output file on case-insensitive file systems: an error that
    names both, never one image silently replacing the other."""
    copy = _copy(raw_root, tmp_path)
    metadata = pd.read_csv(copy / METADATA_CSV, dtype={"dicom_id": str})
    splits = pd.read_csv(copy / SPLIT_CSV, dtype={"dicom_id": str})
    row = metadata[metadata["ViewPosition"] == "PA"].iloc[0]
    twin = row.copy()
    twin["dicom_id"] = row["dicom_id"].upper()
    metadata = pd.concat([metadata, twin.to_frame().T], ignore_index=True)
    split_row = splits[splits["dicom_id"] == row["dicom_id"]].iloc[0].copy()
    split_row["dicom_id"] = twin["dicom_id"]
    splits = pd.concat([splits, split_row.to_frame().T], ignore_index=True)
    metadata.to_csv(copy / METADATA_CSV, index=False)
    splits.to_csv(copy / SPLIT_CSV, index=False)
    source = next(copy.rglob(f"{row['dicom_id']}.jpg"))
    shutil.copy(source, source.with_name(f"{twin['dicom_id']}.jpg"))

    output = tmp_path / "out"
    with pytest.raises(PreparationError, match="would both be written to") as raised:
        prepare(str(copy), str(output), short_side=SHORT_SIDE, num_workers=0, progress=False)
    assert row["dicom_id"] in str(raised.value) and twin["dicom_id"] in str(raised.value)
    assert not any(output.rglob("*.jpg")) and not (output / "datalist.json").exists()


def test_an_image_listed_twice_is_prepared_once(raw_root, tmp_path):
    copy = _copy(raw_root, tmp_path)
    metadata = pd.read_csv(copy / METADATA_CSV, dtype={"dicom_id": str})
    pa = metadata[metadata["ViewPosition"] == "PA"]
    pd.concat([metadata, pa.iloc[:1]], ignore_index=True).to_csv(copy / METADATA_CSV, index=False)
    summary = prepare(str(copy), str(tmp_path / "out"), short_side=SHORT_SIDE, num_workers=0, progress=False)
    items = _all_items(load_datalist(tmp_path / "out"))
    assert len(items) == len({item["image"] for item in items}) == summary["images_written"] == len(pa)
