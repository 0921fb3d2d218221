"""The bundle's config files and a parser of them, for code that builds networks from the configs outside a
``monai.bundle run`` (benchmarks, the test suite).

Each workflow is one config that runs alone plus at most two overlays: ``inference.json`` (text-to-image;
editing, the app, evaluation, benchmark and data sets are its overlays), ``train_autoencoder.json`` and
``train_diffusion.json`` (the scale factor and distillation are the second's overlays), and multi-GPU overlays of
each. ``configs/tiny/`` holds overlays, merged last, that shrink every network and run to a few seconds on a CPU
(autoencoder (8, 16, 16, 16), UNet (32, 64, 64), 64-pixel images): the parity model of the benchmarks, trial runs
of the training stages, and the tests use them through the same configs and code paths as full-size runs.
"""

from __future__ import annotations

from pathlib import Path

BUNDLE_ROOT = Path(__file__).resolve().parents[2]
CONFIGS = BUNDLE_ROOT / "configs"
TINY_CONFIGS = CONFIGS / "tiny"
INFERENCE_CONFIG = str(CONFIGS / "inference.json")
#: text-to-image: the one config
INFERENCE_CONFIGS = (INFERENCE_CONFIG,)
#: tiny networks, float32 and no progress bars, after the inference config and its overlays
TINY_OVERLAYS = (str(TINY_CONFIGS / "inference.json"),)
TOKENIZER_DIR = str(BUNDLE_ROOT / "tokenizer")
#: training stages, each a config of its own
STAGES = ("autoencoder", "diffusion")


def load_parser(config_files, overrides: dict | None = None):
    """ConfigParser of ``config_files`` (merged in order) with ``bundle_root`` and ``overrides`` set."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(f) for f in (config_files if isinstance(config_files, (list, tuple)) else [config_files])])
    parser["bundle_root"] = str(BUNDLE_ROOT)
    for key, value in (overrides or {}).items():
        parser[key] = value
    return parser


def training_configs(stage: str, *extra_files: str) -> list[str]:
    """The config of training ``stage`` ("autoencoder" or "diffusion"), then ``extra_files``."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}.")
    return [str(CONFIGS / f"train_{stage}.json"), *extra_files]


def tiny_training_overlay(stage: str) -> str:
    """The tiny overlay of training ``stage``, merged after its config (and scale_factor.json)."""
    return str(TINY_CONFIGS / f"train_{stage}.json")


def tiny_parser(*extra_files: str, **overrides):
    """ConfigParser of the inference config + the tiny overlay + ``extra_files`` (overlays of inference, which
    change none of the tiny keys), with ``overrides`` applied."""
    return load_parser([*INFERENCE_CONFIGS, *TINY_OVERLAYS, *extra_files], overrides)
