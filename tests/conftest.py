"""Shared fixtures: tiny networks, a tiny local text encoder and the bundle's own tokenizer.

Nothing here downloads: the tiny networks are built from the bundle's configs with the overlay
``tests/configs/tiny_inference.json`` and random weights, and the text encoder is a 2-layer
``CLIPTextModel`` with the real 49,408-token vocabulary, saved to a temporary folder.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

BUNDLE_ROOT = Path(__file__).resolve().parents[1]
if str(BUNDLE_ROOT) not in sys.path:
    sys.path.insert(0, str(BUNDLE_ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

INFERENCE_CONFIG = str(BUNDLE_ROOT / "configs" / "inference.json")
TINY_OVERLAY = str(BUNDLE_ROOT / "tests" / "configs" / "tiny_inference.json")
TOKENIZER_DIR = str(BUNDLE_ROOT / "tokenizer")
TINY_TEXT_HIDDEN = 32


def make_tiny_text_encoder(hidden: int = TINY_TEXT_HIDDEN, layers: int = 2, seed: int = 0):
    """A 2-layer CLIPTextModel with the CLIP vocabulary and 77 positions (random weights)."""
    from scripts.networks.tiny_text_encoder import make_tiny_text_encoder as make

    return make(hidden_size=hidden, num_layers=layers, seed=seed)


def tiny_parser(*extra_files: str, **overrides):
    """ConfigParser of inference.json + the tiny overlay (+ ``extra_files``), with ``overrides`` applied."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([INFERENCE_CONFIG, TINY_OVERLAY, *extra_files])
    parser["bundle_root"] = str(BUNDLE_ROOT)
    for key, value in overrides.items():
        parser[key] = value
    return parser


def randomize_zero_layers(network: torch.nn.Module, std: float = 0.05) -> torch.nn.Module:
    """Give zero-initialised layers (MONAI's UNet output and attention projections) random weights.

    A freshly built DiffusionModelUNet outputs exactly 0, so prompts and guidance would have no effect.
    """
    with torch.no_grad():
        for parameter in network.parameters():
            if parameter.abs().max() == 0:
                parameter.normal_(0.0, std)
    return network


def write_tiny_weights(model_dir: Path, seed: int = 0) -> Path:
    """Random tiny autoencoder / UNet weights (new MONAI layout) and a tiny text encoder in ``model_dir``."""
    model_dir.mkdir(parents=True, exist_ok=True)
    parser = tiny_parser()
    torch.manual_seed(seed)
    autoencoder = parser.get_parsed_content("autoencoder_def")
    unet = parser.get_parsed_content("network_def")
    randomize_zero_layers(unet)
    torch.save(autoencoder.state_dict(), model_dir / "autoencoder.pt")
    torch.save(unet.state_dict(), model_dir / "model.pt")
    make_tiny_text_encoder(seed=seed).save_pretrained(model_dir / "text_encoder")
    return model_dir


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """Folder with tiny ``autoencoder.pt``, ``model.pt`` (new layout) and ``text_encoder/``."""
    return write_tiny_weights(tmp_path_factory.mktemp("tiny_models"))


@pytest.fixture(scope="session")
def tokenizer():
    from scripts.networks.text import load_tokenizer

    return load_tokenizer(TOKENIZER_DIR)


def run_inference(model_dir: Path, output_dir: Path, *extra_files: str, **overrides):
    """Run the inference workflow in-process exactly as ``python -m monai.bundle run`` does.

    Uses inference.json + the tiny overlay (+ ``extra_files``) with the tiny weights of ``model_dir``;
    ``overrides`` are the command-line overrides. Returns the sorted image paths in ``output_dir``.
    """
    from monai.bundle.scripts import run

    settings = {
        "bundle_root": str(BUNDLE_ROOT),
        "model_dir": str(model_dir),
        "output_dir": str(output_dir),
        "load_old": False,
        "text_encoder_source": str(Path(model_dir) / "text_encoder"),
    }
    settings.update(overrides)
    run(
        config_file=[INFERENCE_CONFIG, TINY_OVERLAY, *extra_files],
        meta_file=str(BUNDLE_ROOT / "configs" / "metadata.json"),
        logging_file=str(BUNDLE_ROOT / "configs" / "logging.conf"),
        **settings,
    )
    return sorted(p for p in Path(output_dir).iterdir() if p.suffix in (".png", ".jpg", ".pt"))


def read_png(path):
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(path))
