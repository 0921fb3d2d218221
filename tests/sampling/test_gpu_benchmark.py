"""benchmarks/gpu.py, the prepared GPU run, on tiny networks on the CPU: every field of its JSON is there."""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import torch

from helpers.bundle import BUNDLE_ROOT


def test_gpu_script_writes_every_field_on_tiny_networks(tmp_path, monkeypatch):
    from benchmarks import gpu

    compiled = []
    # compiling the tiny UNet takes minutes on 2 cores: the plumbing around it is what this checks
    monkeypatch.setattr(torch, "compile", lambda network, **options: compiled.append(options) or network)
    report = gpu.main(
        output_dir=str(tmp_path),
        device="cpu",
        tiny=True,
        batch_sizes=[1, 2],
        repeats=1,
        compile_modes=["default", "reduce-overhead"],
        train_iterations=4,
        train_batch_size=2,
    )
    assert json.loads((tmp_path / "gpu_benchmark.json").read_text()) == json.loads(json.dumps(report, default=str))
    assert (tmp_path / "sampling_benchmark.json").is_file()
    for part in ("sampling", "compile", "training"):
        assert "error" not in report[part], report[part].get("traceback")
    environment = report["environment"]
    assert environment["torch"] == torch.__version__ and "cuda" in environment and "device" in environment

    sampling = report["sampling"]
    reference = sampling["reference"]
    assert reference["settings"]["scheduler_name"] == "ddim" and reference["batch_size"] == 1
    assert [row["batch_size"] for row in sampling["default"]] == [1, 2]
    for row in [reference, *sampling["default"]]:
        assert set(gpu.SAMPLING_FIELDS) <= set(row) and row["images_per_s"] > 0 and row["peak_memory_gib"] > 0
        assert row["bound_fraction"] == row["images_per_s"] / sampling["bound_images_per_s"]
    default = sampling["default"][0]["settings"]
    assert default["batched_guidance"] and default["channels_last"] and default["use_flash_attention"]
    assert sampling["bound_images_per_s"] == gpu.H100_BF16_TFLOPS * 1e12 / sampling["flops_per_image"]
    assert set(sampling["speed_up_over_reference"]) == {"1", "2"}

    modes = report["compile"]["modes"]
    assert [row["mode"] for row in modes] == ["default", "reduce-overhead"]
    assert compiled == [{"mode": None, "dynamic": False}, {"mode": "reduce-overhead", "dynamic": False}]
    for row in modes:
        assert set(gpu.COMPILE_FIELDS) <= set(row) and row["batch_size"] == 2 and row["compile_s"] >= 0
    assert report["compile"]["best"]["mode"] in {"default", "reduce-overhead", "eager"}

    stages = report["training"]["stages"]
    assert [stage["stage"] for stage in stages] == ["autoencoder", "diffusion"]
    for stage in stages:
        assert set(gpu.TRAINING_FIELDS) <= set(stage)
        assert stage["iterations"] == 4 and stage["loss_finite"] and math.isfinite(stage["loss_last"])
        assert stage["images_per_s"] > 0


def test_gpu_shell_entry_reports_a_part_that_fails_and_still_writes_the_json(tmp_path):
    """The shell entry (no wheels to install here) runs the Python entry and writes its JSON and log under
    $OUT; a part that cannot run records its error instead of losing the run."""
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": "python"}
    result = subprocess.run(
        [
            "bash",
            str(BUNDLE_ROOT / "benchmarks" / "gpu.sh"),
            "--device",
            "cpu",
            "--tiny",
            "True",
            "--parts",
            "compile",
            "--compile_modes",
            "['no-such-mode']",
            "--repeats",
            "1",
        ],  # fmt: skip
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((Path(tmp_path) / "gpu_benchmark.json").read_text())
    assert report["compile"]["modes"][0]["mode"] == "no-such-mode" and "error" in report["compile"]["modes"][0]
    assert "torch" in (Path(tmp_path) / "environment.txt").read_text()
    assert "gpu_benchmark.json" in (Path(tmp_path) / "gpu_benchmark.log").read_text()
