"""configs/benchmark.json: a CheXGenBench benchmark set that its metric scripts' readers accept."""

from __future__ import annotations

import ast
import csv
import os
import subprocess

import pandas as pd
import pytest
from PIL import Image

from helpers.bundle import (
    BUNDLE_ROOT,
    INFERENCE_CONFIGS,
    TINY_OVERLAYS,
    bundle_run_command,
    cli_env,
    run_inference,
    tiny_run_settings,
)
from scripts.evaluation.benchmark import BenchmarkError, read_benchmark_prompts

BENCHMARK_CONFIG = str(BUNDLE_ROOT / "configs" / "benchmark.json")
MULTI_GPU = str(BUNDLE_ROOT / "configs" / "multi_gpu_inference.json")
PROMPTS = [
    "Large left pleural effusion.",
    " Moderate cardiomegaly, no effusion.",  # a leading space and a comma: kept as written
    'Tube "in place"; no pneumothorax.',
    "Large left pleural effusion.",  # a repeat: CheXGenBench drops it
    "No acute cardiopulmonary process.",
]
LABELS = [
    {"Pleural Effusion": 1.0, "Cardiomegaly": 0.0},
    {"Pleural Effusion": 0.0, "Cardiomegaly": 1.0},
    {"Support Devices": 1.0},
    {"Pleural Effusion": 1.0, "Cardiomegaly": 0.0},
    {"No Finding": 1.0},
]


def _benchmark_csv(path) -> str:
    """A CSV shaped like LLAVARAD_ANNOTATIONS_TEST.csv: id, path, annotated_prompt, chexpert_labels (a dict)."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "path", "annotated_prompt", "chexpert_labels"])
        for index, (prompt, labels) in enumerate(zip(PROMPTS, LABELS)):
            writer.writerow([index, f"files/p10/p1000{index}/s5000{index}/img{index}.jpg", prompt, repr(labels)])
    return str(path)


def _read_like_chexgenbench(benchmark_dir, real_csv, prompt_column: str = "prompt") -> pd.DataFrame:
    """What CheXGenBench's metric scripts do with the set: read the CSV with pandas, join ``img_savename`` to
    the image folder, open every image as RGB, and (conditional analysis) keep the rows whose prompt is one of
    the real rows of a pathology."""
    synthetic = pd.read_csv(os.path.join(benchmark_dir, "prompt_INFO.csv"))
    paths = synthetic["img_savename"].apply(lambda name: os.path.join(benchmark_dir, "synthetic_images", name))
    for path in paths:
        with Image.open(path) as image:
            assert image.convert("RGB").size == (64, 64)
    real = pd.read_csv(real_csv).drop_duplicates(subset=["annotated_prompt"]).reset_index(drop=True)
    real["effusion"] = real["chexpert_labels"].apply(lambda text: ast.literal_eval(text).get("Pleural Effusion"))
    effusion_prompts = real[real["effusion"] == 1]["annotated_prompt"].to_list()
    synthetic["conditional"] = synthetic[prompt_column].isin(effusion_prompts)
    return synthetic


def test_benchmark_set_matches_the_chexgenbench_readers_and_resumes_on_two_ranks(tiny_model_dir, tmp_path):
    real_csv = _benchmark_csv(tmp_path / "LLAVARAD_ANNOTATIONS_TEST.csv")
    benchmark_dir = tmp_path / "chexgenbench"
    settings = {"benchmark_prompts_csv": real_csv, "benchmark_dir": str(benchmark_dir), "batch_size": 2}
    images_dir = benchmark_dir / "synthetic_images"
    run_inference(tiny_model_dir, images_dir, BENCHMARK_CONFIG, **settings)

    synthetic = _read_like_chexgenbench(benchmark_dir, real_csv)
    distinct = list(dict.fromkeys(PROMPTS))
    assert synthetic["prompt"].to_list() == distinct  # one row per distinct prompt, text unchanged
    assert synthetic["annotated_prompt"].to_list() == distinct  # the scripts' default prompt column
    assert synthetic["img_savename"].is_unique and len(synthetic) == 4
    assert synthetic["conditional"].to_list() == [True, False, False, False]
    assert synthetic["chexpert_labels"].apply(ast.literal_eval).to_list() == LABELS[:3] + LABELS[4:]
    assert sorted(p.name for p in images_dir.glob("*.png")) == sorted(synthetic["img_savename"])

    # resume under torchrun: only the lost image is generated again, the CSV is rewritten once by rank 0
    lost = images_dir / synthetic["img_savename"][2]
    lost.unlink()
    kept = {p.name: p.stat().st_mtime_ns for p in images_dir.glob("*.png")}
    overrides = tiny_run_settings(tiny_model_dir, images_dir, **settings)
    command = bundle_run_command([*INFERENCE_CONFIGS, *TINY_OVERLAYS, BENCHMARK_CONFIG, MULTI_GPU], overrides, 2)
    result = subprocess.run(command, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert lost.is_file() and all(images_dir.joinpath(n).stat().st_mtime_ns == t for n, t in kept.items())
    again = _read_like_chexgenbench(benchmark_dir, real_csv)
    assert again["img_savename"].to_list() == synthetic["img_savename"].to_list()


def test_benchmark_prompts_file_errors_and_limit(tmp_path):
    real_csv = _benchmark_csv(tmp_path / "test.csv")
    assert [r["prompt"] for r in read_benchmark_prompts(real_csv, limit=2)] == PROMPTS[:2]
    with pytest.raises(BenchmarkError, match="has no column 'report'"):
        read_benchmark_prompts(real_csv, prompt_column="report")
    with pytest.raises(BenchmarkError, match="LLAVARAD_ANNOTATIONS_TEST.csv"):
        read_benchmark_prompts(str(tmp_path / "missing.csv"))
