"""Prompts-file mode under torchrun: disjoint shares, one merged manifest, resume."""

from __future__ import annotations

import csv
import subprocess

import numpy as np

from helpers.bundle import (
    BUNDLE_ROOT,
    INFERENCE_CONFIGS,
    TINY_OVERLAYS,
    bundle_run_command,
    cli_env,
    read_png,
    run_inference,
    tiny_run_settings,
)
from scripts.common.files import is_temporary

MULTI_GPU_OVERLAY = str(BUNDLE_ROOT / "configs" / "multi_gpu_inference.json")


def test_two_cpu_ranks_complete_a_prompts_file_without_gaps_or_duplicates(tiny_model_dir, tmp_path):
    prompts_file = tmp_path / "prompts.csv"
    with open(prompts_file, "w", newline="") as f:
        csv.writer(f).writerows(
            [["prompt", "num_samples"], ["Cardiomegaly", 3], ["Left pleural effusion", 2], ["No finding", 2]]
        )
    out = tmp_path / "out"
    # A single-process run first; then some images and the manifest are lost, and a rank's stale shard remains.
    reference = run_inference(tiny_model_dir, out, prompts_file=str(prompts_file), batch_size=4)
    assert len(reference) == 7
    lost = [reference[i] for i in (0, 1, 2, 5)]
    kept = {p.name: p.stat().st_mtime_ns for p in reference if p not in lost}
    for path in lost:
        path.unlink()
    (out / "manifest.csv").unlink()
    (out / "manifest.rank1.csv").write_text("file,prompt\nno-such-image.png,torn line")

    overrides = tiny_run_settings(tiny_model_dir, out, prompts_file=prompts_file, batch_size=4)
    command = bundle_run_command([*INFERENCE_CONFIGS, *TINY_OVERLAYS, MULTI_GPU_OVERLAY], overrides, torchrun_procs=2)
    result = subprocess.run(command, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]

    images = sorted(p for p in out.iterdir() if p.suffix == ".png")
    assert [p.name for p in images] == [p.name for p in reference]
    for path in images:
        if path.name in kept:
            assert path.stat().st_mtime_ns == kept[path.name], f"{path.name} was generated again"
    with open(out / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["file"] for r in rows) == [p.name for p in images]
    assert not list(out.glob("manifest.rank*.csv")) and not [p for p in out.iterdir() if is_temporary(p)]


def test_two_cpu_ranks_sample_in_bfloat16_and_record_it(tiny_model_dir, tmp_path):
    """bfloat16 autocast under torchrun: every rank samples in bf16, the merged manifest says so, and the images
    match a single-process bf16 run of the same prompts (same names: the precision is part of the identity)."""
    prompts_file = tmp_path / "prompts.txt"
    prompts_file.write_text("Cardiomegaly\nLeft pleural effusion\nNo finding\n")
    single = run_inference(
        tiny_model_dir, tmp_path / "single", prompts_file=str(prompts_file), autocast_dtype="bfloat16"
    )
    out = tmp_path / "ranks"
    overrides = tiny_run_settings(tiny_model_dir, out, prompts_file=prompts_file, autocast_dtype="bfloat16")
    command = bundle_run_command([*INFERENCE_CONFIGS, *TINY_OVERLAYS, MULTI_GPU_OVERLAY], overrides, torchrun_procs=2)
    result = subprocess.run(command, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(out / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["file"] for r in rows) == [p.name for p in single] and len(rows) == 3
    assert {r["autocast_dtype"] for r in rows} == {"bfloat16"}
    float32 = run_inference(tiny_model_dir, tmp_path / "float32", prompts_file=str(prompts_file))
    assert not {p.name for p in float32} & {r["file"] for r in rows}
    # the ranks' pixels are the single-process bf16 ones, and bf16 visibly differs from float32 on these nets
    for bf16, fp32 in zip(single, float32):
        ranks = read_png(out / bf16.name).astype(int)
        assert np.abs(ranks - read_png(bf16).astype(int)).max() <= 1
        assert np.abs(ranks - read_png(fp32).astype(int)).max() > 1
