"""The bundle's configs and command line: config files, parsers with overlays, in-process and CLI runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from scripts.common.configs import (  # noqa: F401  (re-exported for the tests)
    BUNDLE_ROOT,
    CONFIGS,
    INFERENCE_CONFIG,
    INFERENCE_CONFIGS,
    STAGES,
    TINY_CONFIGS,
    TINY_OVERLAYS,
    TOKENIZER_DIR,
    load_parser,
    tiny_parser,
    tiny_training_overlay,
    training_configs,
)

TEST_CONFIGS = BUNDLE_ROOT / "tests" / "configs"


def tiny_run_settings(model_dir: Path, output_dir: Path, **overrides) -> dict:
    """Overrides that point the inference config at tiny weights in ``model_dir`` (new layout, with their
    ``text_encoder/``) and write to ``output_dir``, plus ``overrides``."""
    return {
        "bundle_root": str(BUNDLE_ROOT),
        "model_dir": str(model_dir),
        "output_dir": str(output_dir),
        "load_old": False,
        "text_encoder_source": str(Path(model_dir) / "text_encoder"),
        **overrides,
    }


def run_config(files: list[str], overrides: dict) -> None:
    """Run a bundle workflow in this process, as ``python -m monai.bundle run --config_file <files> --key value``
    does (paths given as ``Path`` become text), with the bundle's metadata and logging files."""
    from monai.bundle.scripts import run

    settings = {key: str(value) if isinstance(value, Path) else value for key, value in overrides.items()}
    run(
        config_file=[str(f) for f in files],
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        **{"bundle_root": str(BUNDLE_ROOT), **settings},
    )


def run_inference(model_dir: Path, output_dir: Path, *extra_files: str, **overrides):
    """Run the inference workflow in-process exactly as ``python -m monai.bundle run`` does.

    Uses the inference chain + the tiny overlays (+ ``extra_files``) with the tiny weights of ``model_dir``;
    ``overrides`` are the command-line overrides. Returns the sorted image paths in ``output_dir``.
    """
    run_config(
        [*INFERENCE_CONFIGS, *TINY_OVERLAYS, *extra_files], tiny_run_settings(model_dir, output_dir, **overrides)
    )
    return sorted(p for p in Path(output_dir).iterdir() if p.suffix in (".png", ".jpg", ".pt", ".dcm"))


def read_png(path):
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(path))


def stage_configs(stage: str, multi_gpu: bool = False, extra: tuple[str, ...] = ()) -> list[str]:
    """Config files of a tiny training ``stage`` ("autoencoder" or "diffusion") run, in merge order: the stage's
    config, its tiny overlay (then multi_gpu_train.json, then ``extra``)."""
    files = [*training_configs(stage), tiny_training_overlay(stage)]
    if multi_gpu:
        files.append(str(CONFIGS / "multi_gpu_train.json"))
    return files + [str(f) for f in extra]


def stage_parser(stage: str, **overrides):
    """ConfigParser of a tiny training ``stage`` run (``stage_configs``), with ``overrides`` applied."""
    return load_parser(stage_configs(stage), overrides)


def distill_configs(multi_gpu: bool = False, extra: tuple[str, ...] = ()) -> list[str]:
    """Config files of a tiny distillation run: train_diffusion.json, distill.json, the tiny distillation overlay
    (then multi_gpu_train.json, then ``extra``)."""
    files = training_configs("diffusion", str(CONFIGS / "distill.json"), str(TINY_CONFIGS / "distill.json"))
    if multi_gpu:
        files.append(str(CONFIGS / "multi_gpu_train.json"))
    return files + [str(f) for f in extra]


def config_file_arg(files: list[str]) -> str:
    """``--config_file`` value of a list of files."""
    return "[" + ",".join(f"'{f}'" for f in files) + "]"


def cli_env(bundle_on_path: bool = True, one_thread: bool = True) -> dict:
    """Environment of a CLI run: offline and unbuffered; the bundle on PYTHONPATH unless not wanted; one
    OpenMP thread unless not wanted (the tests' own process uses two: float results then match it exactly)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.pop("PYTHONPATH", None)
    if one_thread:
        env["OMP_NUM_THREADS"] = "1"
    if bundle_on_path:
        env["PYTHONPATH"] = str(BUNDLE_ROOT)
    return env


def bundle_run_command(
    files: list[str], overrides: dict, torchrun_procs: int = 0, master_port: int | None = None
) -> list[str]:
    """The ``python -m monai.bundle run`` command with ``--key value`` overrides.

    With ``torchrun_procs``, the same under ``torchrun`` with that many processes (on ``master_port``, or
    a free port of its own choosing when None).
    """
    args = ["-m", "monai.bundle", "run", "--config_file", config_file_arg(files)]
    for key, value in overrides.items():
        args += [f"--{key}", str(value)]
    if not torchrun_procs:
        return [sys.executable, *args]
    rendezvous = ["--standalone"] if master_port is None else [f"--master_port={master_port}"]
    return [sys.executable, "-m", "torch.distributed.run", *rendezvous, f"--nproc_per_node={torchrun_procs}", *args]


def run_bundle(files: list[str], overrides: dict, timeout: int = 240, **kwargs) -> subprocess.CompletedProcess:
    """Run a bundle command to completion; fail with its output tail when it exits non-zero."""
    result = subprocess.run(
        bundle_run_command(files, overrides, **kwargs),
        cwd=BUNDLE_ROOT,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise AssertionError(f"bundle run failed ({result.returncode}):\n{(result.stdout + result.stderr)[-4000:]}")
    return result
