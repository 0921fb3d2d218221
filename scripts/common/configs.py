"""The bundle's config files and a parser of them, for code that builds networks from the configs outside a
``monai.bundle run`` (benchmarks, the test suite).

Every workflow reads ``configs/model.json`` first: inference is model + inference (``INFERENCE_CONFIGS``),
training model + data + train + a stage (``training_configs``). ``configs/tiny/`` holds overlays, merged
last, that shrink every network and run to a few seconds on a CPU (autoencoder (8, 16, 16, 16), UNet (32, 64,
64), 64-pixel images): the parity model of the benchmarks, trial runs of the training stages, and the tests
use them through the same configs and code paths as full-size runs.
"""

from __future__ import annotations

from pathlib import Path

BUNDLE_ROOT = Path(__file__).resolve().parents[2]
CONFIGS = BUNDLE_ROOT / "configs"
TINY_CONFIGS = CONFIGS / "tiny"
MODEL_CONFIG = str(CONFIGS / "model.json")
INFERENCE_CONFIG = str(CONFIGS / "inference.json")
#: text-to-image: the model, then inference
INFERENCE_CONFIGS = (MODEL_CONFIG, INFERENCE_CONFIG)
#: tiny networks (after any chain), then tiny inference settings (float32, no progress bars)
TINY_OVERLAYS = (str(TINY_CONFIGS / "model.json"), str(TINY_CONFIGS / "inference.json"))
TOKENIZER_DIR = str(BUNDLE_ROOT / "tokenizer")


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
    """Config files of training ``stage`` ("autoencoder" or "diffusion") in merge order, then ``extra_files``."""
    names = ("model.json", "data.json", "train.json", f"train_{stage}.json")
    return [*(str(CONFIGS / name) for name in names), *extra_files]


def tiny_parser(*extra_files: str, **overrides):
    """ConfigParser of the inference chain + the tiny overlays (+ ``extra_files``), with ``overrides`` applied."""
    return load_parser([*INFERENCE_CONFIGS, *TINY_OVERLAYS, *extra_files], overrides)
