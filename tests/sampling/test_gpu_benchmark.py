"""benchmarks/gpu.py, the prepared GPU run, on tiny networks on the CPU: every part runs, every field of its JSON
is there, the CUDA-only levers say why they did not run, and a part that fails is recorded without losing the
others (the lever table's logic on fake measurements: test_gpu_levers.py)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import torch

from helpers.bundle import BUNDLE_ROOT


def test_gpu_script_runs_every_part_on_tiny_networks_and_writes_every_field(tmp_path, monkeypatch):
    from benchmarks import gpu

    compiled = []
    # inductor builds C++ kernels for minutes on 2 cores: the plumbing around the compiled row is what this checks
    monkeypatch.setattr(torch, "compile", lambda network, **options: compiled.append(options) or network)
    report = gpu.main(
        output_dir=str(tmp_path),
        device="cpu",
        tiny=True,
        batch_sizes=[1, 2],
        lever_batch_size=2,
        repeats=1,
        parity_images=2,
        dataset_images=4,
        dataset_subjects=20,
        train_iterations=2,
        train_batch_size=2,
        budget_s=None,
    )
    assert json.loads((tmp_path / "gpu_benchmark.json").read_text()) == json.loads(json.dumps(report, default=str))
    for part in gpu.PARTS:
        assert "error" not in report[part] and "skipped" not in report[part], (part, report[part])
    assert report["environment"]["torch"] == torch.__version__

    sampling = report["sampling"]
    assert sampling["reference"]["settings"]["scheduler_name"] == "ddim"
    assert [row["batch_size"] for row in sampling["default"]] == [1, 2]
    for row in [sampling["reference"], *sampling["default"]]:
        assert set(gpu.SAMPLING_FIELDS) <= set(row) and row["images_per_s"] > 0
        assert row["bound_fraction"] == row["images_per_s"] / sampling["bound_images_per_s"]
    assert sampling["bound_images_per_s"] == gpu.H100_BF16_TFLOPS * 1e12 / sampling["flops_per_image"]

    # each lever alone: those a CPU can run are measured with their parity, the CUDA-only ones say so
    levers = report["levers"]
    assert list(levers["rows"]) == list(gpu.DEFAULT_LEVERS)
    measured = {name for name, row in levers["rows"].items() if "skipped" not in row}
    assert measured == {"bf16_weights", "decode_bf16", "double_batch", "compile"}
    for name, row in levers["rows"].items():
        if name in measured:
            assert set(gpu.LEVER_FIELDS) <= set(row) and row["images_per_s"] > 0, (name, row)
            assert set(gpu.PARITY_FIELDS) <= set(row["parity"]) and row["parity"]["num_images"] == 2
        else:
            assert row["skipped"] == "skipped: needs CUDA"
    # the compile row compiled the UNet, and so did each later row whose recipe took the lever (a combination
    # picks it when it measured faster, which with this stand-in for compiling is down to noise)
    recipes = [row["recipe"] for row in [*levers["combination"]["rows"], *report["student"]["rows"]]]
    compiling = 1 + sum("compile" in recipe.split("+") for recipe in recipes)
    assert compiled == [{"mode": None, "dynamic": False}] * compiling
    assert levers["rows"]["double_batch"]["batch_size"] == 4
    candidates = [levers["default"], *levers["rows"].values(), *levers["combination"]["rows"]]
    assert levers["best"]["images_per_s"] == max(row["images_per_s"] for row in candidates if row.get("at_parity"))
    summary = report["summary"]
    assert summary["best"]["recipe"] == levers["best"]["recipe"] and summary["target_met"] is False

    student = report["student"]
    assert student["settings"] == {"scheduler_name": "pcm", "num_inference_steps": 4, "guidance_scale": 1}
    assert student["rows"][0]["steps"] == 4 and student["rows"][0]["images_per_s"] > 0
    assert report["editing"]["edits"] == 2 and report["editing"]["images_per_s"] > 0
    dataset = report["dataset"]
    assert dataset["num_images"] == 4 and sum(dataset["splits"].values()) == 4
    app = report["app"]
    assert app["images_written"] and 0 < app["first_image_s"] < app["time_to_first_image_s"]
    assert report["autotune"]["rows"]["max_autotune"]["skipped"] == "skipped: needs CUDA"
    stages = report["training"]["stages"]
    assert [stage["stage"] for stage in stages] == ["autoencoder", "diffusion"]
    for stage in stages:
        assert set(gpu.TRAINING_FIELDS) <= set(stage) and stage["iterations"] == 2 and stage["loss_finite"]


def test_gpu_shell_entry_records_a_part_that_fails_and_still_writes_the_json(tmp_path):
    """The shell entry (no wheels to install here) runs the Python entry and writes its JSON and log under $OUT;
    a part that cannot run (a student weights file that is not there) records its error, the next part still
    runs, and the command succeeds."""
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": "python"}
    command = ["bash", str(BUNDLE_ROOT / "benchmarks" / "gpu.sh"), "--device", "cpu", "--tiny", "True",
               "--parts", "['student','editing']", "--lever_batch_size", "2", "--repeats", "1",
               "--parity_images", "2", "--student_weights", str(tmp_path / "missing.pt")]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((Path(tmp_path) / "gpu_benchmark.json").read_text())
    assert "missing.pt" in report["student"]["error"] and "Traceback" in report["student"]["traceback"]
    assert "error" not in report["editing"] and report["editing"]["images_per_s"] > 0
    assert "torch" in (Path(tmp_path) / "environment.txt").read_text()
    assert "gpu_benchmark.json" in (Path(tmp_path) / "gpu_benchmark.log").read_text()
