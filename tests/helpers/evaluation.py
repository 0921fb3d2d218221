"""Helpers for the evaluation tests: images and image folders made on the fly, random-weight DenseNets."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import numpy as np
import torch


def smooth_images(num_images: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    """(N, 1, size, size) images in [0, 1]: random blobs smoothed by upsampling an 8×8 grid (X-ray-like contrast)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(num_images, 1, 8, 8, generator=generator)
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


def noise_images(num_images: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    """(N, 1, size, size) independent uniform noise in [0, 1]."""
    return torch.rand(num_images, 1, size, size, generator=torch.Generator().manual_seed(seed))


def write_png_folder(folder: Path, images: torch.Tensor, prefix: str = "img") -> Path:
    """Save (N, 1, H, W) images in [0, 1] as 8-bit PNGs ``<prefix>_0000.png``... in ``folder``."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(images):
        array = (image[0].clamp(0, 1).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(array).save(folder / f"{prefix}_{index:04d}.png")
    return folder


def random_densenet_file(path: Path, seed: int = 0) -> Path:
    """A random-weight torchxrayvision DenseNet-121 state dict saved at ``path`` (stands in for the release file)."""
    import torchxrayvision as xrv

    torch.manual_seed(seed)
    model = xrv.models.DenseNet(weights=None)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path


class InputRecorder:
    """Forward pre-hook on ``model.features`` keeping a copy of every tensor that reaches the network."""

    def __init__(self, model) -> None:
        self.inputs: list[torch.Tensor] = []
        self.handle = model.features.register_forward_pre_hook(
            lambda module, args: self.inputs.append(args[0].detach().clone())
        )

    def close(self) -> None:
        self.handle.remove()


def write_tiny_raddino(folder: Path, seed: int = 0) -> Path:
    """A RAD-DINO-shaped folder (a 2-layer DINOv2 and a BitImageProcessor at 56 px) with random weights, saved
    the way ``microsoft/rad-dino`` is, so the local-folder loading path runs offline and fast."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    from scripts.evaluation.extractors import RADDINO_PROCESSOR

    torch.manual_seed(seed)
    config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                          patch_size=14, image_size=56)  # fmt: skip
    Dinov2Model(config).save_pretrained(folder)
    processor = {**RADDINO_PROCESSOR, "size": {"shortest_edge": 56}, "crop_size": {"height": 56, "width": 56}}
    BitImageProcessor(**processor).save_pretrained(folder)
    return Path(folder)


def write_chexpert_labels(dataset_dir: Path, path: Path) -> Path:
    """A gzipped CheXpert-format label file of the prepared data's test split: the first test study an effusion,
    the others "No Finding"."""
    test = json.loads((Path(dataset_dir) / "datalist.json").read_text())["test"]
    with gzip.open(path, "wt", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["subject_id", "study_id", "Pleural Effusion", "No Finding"])
        for index, item in enumerate(test):
            writer.writerow(
                [item["subject_id"], item["study_id"], "1.0" if index == 0 else "", "" if index == 0 else "1.0"]
            )
    return path
