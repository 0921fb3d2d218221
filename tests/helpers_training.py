"""Test helpers for the training configs: config file lists, CLI runs, and reading what a run logged.

The training tests run the real configs with the tiny overlays on synthetic data made by
``helpers_data.make_prepared_synthetic``; nothing is downloaded (LPIPS uses a random backbone, the text
encoder is the tiny one of ``conftest.write_tiny_weights``).
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
from pathlib import Path

from conftest import BUNDLE_ROOT

CONFIGS = BUNDLE_ROOT / "configs"
TEST_CONFIGS = BUNDLE_ROOT / "tests" / "configs"


def stage_configs(stage: str, multi_gpu: bool = False, extra: tuple[str, ...] = ()) -> list[str]:
    """Config files of a tiny ``stage`` ("autoencoder" or "diffusion") run, in merge order."""
    files = [
        CONFIGS / "inference.json",
        CONFIGS / "data.json",
        CONFIGS / "train.json",
        CONFIGS / f"train_{stage}.json",
        TEST_CONFIGS / "tiny_inference.json",
        TEST_CONFIGS / "tiny_train.json",
        TEST_CONFIGS / f"tiny_train_{stage}.json",
    ]
    if multi_gpu:
        files.append(CONFIGS / "multi_gpu_train.json")
    files.extend(Path(f) for f in extra)
    return [str(f) for f in files]


def config_file_arg(files: list[str]) -> str:
    return "[" + ",".join(f"'{f}'" for f in files) + "]"


def cli_env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(BUNDLE_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def bundle_run_command(files: list[str], overrides: dict, torchrun_procs: int = 0, master_port: int = 29555) -> list[str]:
    """``python -m monai.bundle run`` (or ``torchrun`` with ``torchrun_procs`` processes) with ``--key value`` overrides."""
    args = ["-m", "monai.bundle", "run", "--config_file", config_file_arg(files)]
    for key, value in overrides.items():
        args += [f"--{key}", str(value)]
    if torchrun_procs:
        return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={torchrun_procs}",
                f"--master_port={master_port}", *args]
    return [sys.executable, *args]


def run_bundle(files: list[str], overrides: dict, timeout: int = 240, **kwargs) -> subprocess.CompletedProcess:
    """Run a bundle command to completion; fail with its output tail when it exits non-zero."""
    result = subprocess.run(
        bundle_run_command(files, overrides, **kwargs), cwd=BUNDLE_ROOT, env=cli_env(),
        capture_output=True, text=True, timeout=timeout,
    )
    if result.returncode != 0:
        raise AssertionError(f"bundle run failed ({result.returncode}):\n{(result.stdout + result.stderr)[-4000:]}")
    return result


def scalar_series(log_dir, tag: str) -> list[tuple[int, float]]:
    """(step, value) of TensorBoard scalar ``tag`` over all event files in ``log_dir``, sorted by step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values = []
    for path in glob.glob(os.path.join(str(log_dir), "events.out.tfevents.*")):
        accumulator = EventAccumulator(path, size_guidance={"scalars": 0, "images": 0})
        accumulator.Reload()
        if tag in accumulator.Tags()["scalars"]:
            values += [(event.step, event.value) for event in accumulator.Scalars(tag)]
    return sorted(values)


def image_tags(log_dir) -> set[str]:
    """TensorBoard image tags written in ``log_dir``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for path in glob.glob(os.path.join(str(log_dir), "events.out.tfevents.*")):
        accumulator = EventAccumulator(path, size_guidance={"images": 0})
        accumulator.Reload()
        tags.update(accumulator.Tags()["images"])
    return tags
