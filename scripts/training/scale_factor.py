"""The latent scale factor: 1 / std of the first-stage latents of training images.

Latent diffusion trains on ``scale_factor × z`` so that the latents have about unit variance, like the
noise they are mixed with. After training a new autoencoder, estimate it with
``configs/scale_factor.json`` and pass the value as ``--scale_factor`` to diffusion training and to
inference (the released model uses 0.3).
"""

from __future__ import annotations

import logging

import torch
from torch.utils.data import DataLoader, Subset

from scripts.common.files import atomic_write_json

logger = logging.getLogger(__name__)


@torch.no_grad()
def latent_std(autoencoder: torch.nn.Module, images: DataLoader, device: str | torch.device = "cpu") -> float:
    """Standard deviation of all values of the latents ``encode_stage_2_inputs(image)`` of ``images``.

    Args:
        autoencoder: ``AutoencoderKL`` (used in eval mode).
        images: batches ``{"image": (B, 1, H, W) in [0, 1]}``.
        device: where to encode.
    """
    autoencoder = autoencoder.to(device).eval()
    count, total, total_sq = 0, 0.0, 0.0
    for batch in images:
        # the same sampled latents that diffusion training sees (LatentVPredictionPrepareBatch)
        z = autoencoder.encode_stage_2_inputs(batch["image"].to(device).float()).double()
        count += z.numel()
        total += z.sum().item()
        total_sq += z.pow(2).sum().item()
    if count == 0:
        raise ValueError("No images to estimate the latent scale factor from: the data set is empty.")
    mean = total / count
    return max(total_sq / count - mean * mean, 0.0) ** 0.5


def estimate_scale_factor(
    autoencoder: torch.nn.Module,
    dataset,
    num_images: int = 512,
    batch_size: int = 32,
    seed: int = 0,
    device: str | torch.device = "cpu",
    output_file: str | None = None,
) -> float:
    """1 / std of the latents of ``num_images`` images drawn at random (``seed``) from ``dataset``.

    Logs the value with the command-line override to use, and writes ``{"scale_factor", "latent_std",
    "num_images"}`` to ``output_file`` when given.
    """
    if int(num_images) < 1:
        raise ValueError(f"scale#num_images must be >= 1, got {num_images}.")
    generator = torch.Generator().manual_seed(int(seed))
    indices = torch.randperm(len(dataset), generator=generator)[: int(num_images)].tolist()
    loader = DataLoader(Subset(dataset, indices), batch_size=int(batch_size), shuffle=False)
    std = latent_std(autoencoder, loader, device)
    if std == 0.0:
        raise ValueError("The latents have zero variance: check the autoencoder weights.")
    scale_factor = 1.0 / std
    message = (
        f"Latent std over {len(indices)} images: {std:.4f} -> scale_factor = {scale_factor:.4f}. "
        f"Train the diffusion model and sample with --scale_factor {scale_factor:.4f}."
    )
    logger.info(message)
    print(message)
    if output_file:
        atomic_write_json(output_file, {"scale_factor": scale_factor, "latent_std": std, "num_images": len(indices)})
    return scale_factor
