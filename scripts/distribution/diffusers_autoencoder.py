"""The autoencoder of an exported diffusers folder: diffusers' ``AutoencoderKL`` as this model's autoencoder.

This file is copied as it is into the exported folder (``vae/cxr_autoencoder.py``), where
``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`` loads it, so it imports nothing but
torch and diffusers. MONAI's autoencoder differs from diffusers' in two ways that weights cannot express:

- no SiLU between the last group norm and ``conv_out``, in the encoder and in the decoder;
- images in [0, 1], one channel, where diffusers' image processor hands the encoder [-1, 1] and maps the
  decoder's output back from [-1, 1]. The two affine maps are applied here, around the unchanged
  convolutions: folded into ``conv_in``'s weights, the zero padding at the image border would pad with
  mid-grey instead of black.

Everything else (no middle block, two decoder residual blocks per level, separate mean and log-variance
convolutions) is expressed by the weights: zero residual branches and stacked convolutions.

A pipeline holding this VAE and saved again (after fine-tuning, ``pipe.save_pretrained(new_folder)``) stays
loadable: the class names its module as the file it is inside a folder, so ``model_index.json`` names it
so, and its ``save_pretrained`` writes this file beside the weights.
"""

from __future__ import annotations

import inspect
import os
import shutil

import torch
from diffusers import AutoencoderKL
from torch import nn

#: This file's name inside an exported folder (``vae/cxr_autoencoder.py``).
MODULE_NAME = "cxr_autoencoder"


class UnitRangeInputConv(nn.Conv2d):
    """``conv_in`` of the encoder: takes images (B, 1, H, W) in [-1, 1] and convolves them mapped to [0, 1]."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return super().forward((images + 1.0) * 0.5)


class SignedRangeOutputConv(nn.Conv2d):
    """``conv_out`` of the decoder: its [0, 1] output mapped to the [-1, 1] range diffusers expects."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return super().forward(features) * 2.0 - 1.0


def _replace_conv(conv: nn.Conv2d, new_class: type[nn.Conv2d]) -> nn.Conv2d:
    return new_class(
        conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding
    ).to(dtype=conv.weight.dtype, device=conv.weight.device)


class CxrAutoencoderKL(AutoencoderKL):
    """``AutoencoderKL`` with MONAI's output layers: no SiLU before ``conv_out``; images in [0, 1] inside.

    Same configuration, weights names and methods as ``AutoencoderKL``; ``encode`` takes (B, 1, H, W) in
    [-1, 1] and ``decode`` gives (B, 1, H, W) in [-1, 1], as every diffusers pipeline expects.
    """

    __module__ = MODULE_NAME  # the file's name in a pipeline folder: what model_index.json must name

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.encoder.conv_act = nn.Identity()
        self.decoder.conv_act = nn.Identity()
        self.encoder.conv_in = _replace_conv(self.encoder.conv_in, UnitRangeInputConv)
        self.decoder.conv_out = _replace_conv(self.decoder.conv_out, SignedRangeOutputConv)

    # diffusers reads a model's configuration keys from its __init__ signature: keep AutoencoderKL's.
    __init__.__signature__ = inspect.signature(AutoencoderKL.__init__)

    def save_pretrained(self, save_directory, *args, **kwargs) -> None:
        """``AutoencoderKL.save_pretrained``, plus this file as ``<save_directory>/cxr_autoencoder.py``."""
        super().save_pretrained(save_directory, *args, **kwargs)
        shutil.copyfile(__file__, os.path.join(save_directory, f"{MODULE_NAME}.py"))
