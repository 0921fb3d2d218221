"""A data set made by two ``torchrun`` ranks, killed mid-run and run again, is the one-process data set: the same
images, and the same Parquet shards byte for byte."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import torch

from helpers.bundle import (
    BUNDLE_ROOT,
    INFERENCE_CONFIGS,
    TINY_OVERLAYS,
    bundle_run_command,
    cli_env,
    run_inference,
    tiny_run_settings,
)
from helpers.datasets import DATASET_CONFIG, dataset_overrides, write_classifier_weights
from scripts.datasets import parquet

MULTI_GPU_OVERLAY = str(BUNDLE_ROOT / "configs" / "multi_gpu_inference.json")
PLAN = {"plan_size": 8, "rows_per_shard": 3, "filters": ["sanity", "label_agreement"]}


def _images(folder):
    return sorted(p for p in (folder / "images").glob("*.png")) if (folder / "images").is_dir() else []


def _kill_after_images(command, cwd, folder, count: int, timeout: float = 300) -> int:
    """Start ``command`` in its own process group and kill the group (SIGKILL) once ``count`` images exist."""
    process = subprocess.Popen(
        command, cwd=cwd, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + timeout
    try:
        while process.poll() is None and len(_images(folder)) < count and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    return len(_images(folder))


def test_a_killed_two_rank_run_resumes_to_the_one_process_data_set(tiny_model_dir, prepared_synthetic_dir, tmp_path):
    weights = write_classifier_weights(tmp_path / "classifier.pt")
    one, two = tmp_path / "one", tmp_path / "two"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the ranks' thread count (one each), so floats round alike
    try:
        run_inference(
            tiny_model_dir,
            one / "images",
            DATASET_CONFIG,
            **dataset_overrides(prepared_synthetic_dir, one, weights, **PLAN),
        )
    finally:
        torch.set_num_threads(threads)

    overrides = tiny_run_settings(
        tiny_model_dir, two / "images", **dataset_overrides(prepared_synthetic_dir, two, weights, **PLAN)
    )
    command = bundle_run_command([*INFERENCE_CONFIGS, *TINY_OVERLAYS, DATASET_CONFIG, MULTI_GPU_OVERLAY], overrides, 2)
    written = _kill_after_images(command, tmp_path, two, count=3)
    assert 3 <= written < 8 and not (two / "README.md").exists(), "the kill came mid-generation"
    result = subprocess.run(command, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]

    assert [p.name for p in _images(two)] == [p.name for p in _images(one)]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(_images(one), _images(two)))
    shards = [os.path.relpath(p, one) for p in parquet.shard_files(str(one))]
    assert shards and shards == [os.path.relpath(p, two) for p in parquet.shard_files(str(two))]
    for name in shards:
        assert (one / name).read_bytes() == (two / name).read_bytes(), name
    assert sum(json.loads((two / "dataset_summary.json").read_text())["splits"].values()) == 8
    assert (one / "plan.csv").read_bytes() == (two / "plan.csv").read_bytes()
    assert not list((two / "images").glob("manifest.rank*.csv")) and not list(two.rglob("*.partial*"))
