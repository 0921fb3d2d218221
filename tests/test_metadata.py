"""configs/metadata.json tells the truth about the configs it ships with."""

from __future__ import annotations

import json

from monai.bundle import ConfigParser

from conftest import BUNDLE_ROOT, INFERENCE_CONFIG

REQUIRED = ("version", "changelog", "monai_version", "pytorch_version", "numpy_version", "required_packages_version",
            "name", "task", "description", "authors", "copyright", "network_data_format")  # fmt: skip


def test_metadata_matches_the_inference_config():
    meta = json.loads((BUNDLE_ROOT / "configs" / "metadata.json").read_text())
    assert not [key for key in REQUIRED if key not in meta]
    assert meta["version"] in meta["changelog"]
    parser = ConfigParser()
    parser.read_config(INFERENCE_CONFIG)
    inputs, outputs = meta["network_data_format"]["inputs"], meta["network_data_format"]["outputs"]
    latent_channels, *latent_size = parser["latent_shape"]
    assert inputs["latent"]["num_channels"] == latent_channels == parser["network_def"]["in_channels"]
    assert inputs["latent"]["spatial_shape"] == latent_size
    assert inputs["context"]["spatial_shape"] == [77, parser["network_def"]["cross_attention_dim"]]
    assert outputs["image"]["spatial_shape"] == [parser["image_size"]] * 2
    assert outputs["image"]["value_range"] == [0, 1] and outputs["image"]["num_channels"] == 1
    # 8x downsampling of the autoencoder (three halvings for four channel levels)
    assert parser["image_size"] // 2 ** (len(parser["autoencoder_def"]["channels"]) - 1) == latent_size[0]
    import monai
    import torch

    assert meta["monai_version"] == monai.__version__
    assert meta["pytorch_version"] == torch.__version__.split("+")[0]
