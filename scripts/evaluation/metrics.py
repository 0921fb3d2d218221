"""Reconstruction quality and pairwise MS-SSIM diversity; ``python -m scripts.evaluation.metrics diversity FOLDER``.

All images are (B, 1, H, W) float tensors with intensities in [0, 1]; every metric uses data range 1.

MS-SSIM is MONAI's ``MultiScaleSSIMMetric`` (the seed paper used its defaults: Gaussian kernel 11, σ 1.5,
5 scales with weights (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)). With S scales the image is halved S-1
times and each level must stay larger than the kernel: ``size // 2**(S-1) > kernel_size - 1``, i.e.
≥ 176 px for the defaults. Smaller images (the 64 px of the tests) need a smaller ``kernel_size``
(3 works from 48 px) or fewer ``weights``; numbers are then not comparable with the paper's.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence

import numpy as np
import torch

from scripts.common.files import atomic_path
from scripts.common.progress import progress as progress_bar

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
MS_SSIM_KERNEL_SIZE = 11


def check_ms_ssim_size(
    height: int, width: int, kernel_size: int = MS_SSIM_KERNEL_SIZE, weights: Sequence[float] = MS_SSIM_WEIGHTS
) -> None:
    """Raise a one-line ``ValueError`` when an image is too small for the MS-SSIM settings."""
    divisor = 2 ** (len(weights) - 1)
    if min(height, width) // divisor <= kernel_size - 1:
        smallest = (kernel_size - 1) * divisor + divisor
        raise ValueError(
            f"Images of {height}x{width} px are too small for MS-SSIM with kernel_size {kernel_size} and "
            f"{len(weights)} scales "
            f"(need at least {smallest} px): lower --msssim_kernel_size (e.g. 3) or pass fewer --msssim_weights."
        )


class MSSSIM:
    """Per-image MS-SSIM of two (B, 1, H, W) batches in [0, 1] → (B,) tensor, data range 1 (MONAI metric)."""

    def __init__(self, kernel_size: int = MS_SSIM_KERNEL_SIZE, weights: Sequence[float] = MS_SSIM_WEIGHTS) -> None:
        from monai.metrics import MultiScaleSSIMMetric

        self.kernel_size = int(kernel_size)
        self.weights = tuple(float(w) for w in weights)
        self.metric = MultiScaleSSIMMetric(
            spatial_dims=2, data_range=1.0, kernel_size=self.kernel_size, weights=self.weights
        )

    @torch.no_grad()
    def __call__(self, images_a: torch.Tensor, images_b: torch.Tensor) -> torch.Tensor:
        if images_a.shape != images_b.shape:
            raise ValueError(f"MS-SSIM needs equal shapes, got {tuple(images_a.shape)} and {tuple(images_b.shape)}.")
        check_ms_ssim_size(*images_a.shape[-2:], kernel_size=self.kernel_size, weights=self.weights)
        return self.metric(images_a.float(), images_b.float()).reshape(-1).cpu()


@torch.no_grad()
def reconstruct(autoencoder: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Autoencoder reconstruction from the mean latent (no sampling), clipped to [0, 1]; same shape as ``images``."""
    z_mu, _ = autoencoder.encode(images)
    return autoencoder.decode(z_mu).clamp(0.0, 1.0)


def reconstruction_scores(
    autoencoder: torch.nn.Module,
    batches: Iterable[tuple[list[dict], torch.Tensor]],
    device: str | torch.device = "cpu",
    kernel_size: int = MS_SSIM_KERNEL_SIZE,
    weights: Sequence[float] = MS_SSIM_WEIGHTS,
) -> list[dict]:
    """One row per image: ``name``, ``image`` path, ``ms_ssim``, ``ssim`` and ``psnr`` (dB) of its reconstruction.

    ``batches`` yields (items, (B, 1, H, W) images in [0, 1]) as ``scripts.data.images.iterate_images`` does.
    """
    from monai.metrics import PSNRMetric, SSIMMetric

    ms_ssim = MSSSIM(kernel_size, weights)
    ssim = SSIMMetric(spatial_dims=2, data_range=1.0)
    psnr = PSNRMetric(max_val=1.0)
    autoencoder = autoencoder.to(device).eval()
    rows = []
    for items, images in batches:
        images = images.to(device)
        recon = reconstruct(autoencoder, images)
        scores = zip(
            ms_ssim(recon, images), ssim(recon, images).reshape(-1).cpu(), psnr(recon, images).reshape(-1).cpu()
        )
        for item, (m, s, p) in zip(items, scores):
            rows.append(
                {
                    "name": item.get("name", ""),
                    "image": item["image"],
                    "ms_ssim": float(m),
                    "ssim": float(s),
                    "psnr": float(p),
                }
            )
    return rows


def pair_indices(num_images: int, max_pairs: int | None = None, seed: int = 0) -> np.ndarray:
    """(P, 2) indices i < j of image pairs: all N(N-1)/2 pairs, or ``max_pairs`` distinct ones drawn with ``seed``."""
    if num_images < 2:
        raise ValueError(f"Diversity needs at least 2 images, got {num_images}.")
    total = num_images * (num_images - 1) // 2
    if max_pairs is None or max_pairs >= total:
        i, j = np.triu_indices(num_images, k=1)
        return np.stack([i, j], axis=1)
    if max_pairs < 1:
        raise ValueError(f"max_pairs must be a positive integer or None (all pairs), got {max_pairs}.")
    linear = np.sort(np.random.default_rng(seed).choice(total, size=int(max_pairs), replace=False))
    # map a linear index over the upper triangle (row-major) back to (i, j)
    row_start = np.arange(num_images) * (2 * num_images - np.arange(num_images) - 1) // 2
    i = np.searchsorted(row_start, linear, side="right") - 1
    j = linear - row_start[i] + i + 1
    return np.stack([i, j], axis=1)


def pairwise_diversity(
    images: torch.Tensor,
    max_pairs: int | None = None,
    seed: int = 0,
    batch_size: int = 32,
    kernel_size: int = MS_SSIM_KERNEL_SIZE,
    weights: Sequence[float] = MS_SSIM_WEIGHTS,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> dict:
    """Mean MS-SSIM over pairs of distinct images of a set (lower = more diverse).

    Args:
        images: (N, 1, H, W) in [0, 1].
        max_pairs: ``None`` for all N(N-1)/2 pairs (the seed paper's protocol), else a seeded random subset.

    Returns:
        ``{"ms_ssim_mean", "ms_ssim_std", "num_pairs", "num_images", "all_pairs"}``.
    """

    pairs = pair_indices(len(images), max_pairs, seed)
    metric = MSSSIM(kernel_size, weights)
    values = []
    for start in progress_bar(range(0, len(pairs), batch_size), description="diversity pairs", enabled=progress):
        chunk = torch.from_numpy(pairs[start : start + batch_size])
        values.append(metric(images[chunk[:, 0]].to(device), images[chunk[:, 1]].to(device)))
    values = torch.cat(values).double()
    total = len(images) * (len(images) - 1) // 2
    return {
        "ms_ssim_mean": float(values.mean()),
        "ms_ssim_std": float(values.std()) if len(values) > 1 else 0.0,
        "num_pairs": int(len(values)),
        "num_images": int(len(images)),
        "all_pairs": bool(len(values) == total),
    }


def summarise(rows: Sequence[dict], keys: Sequence[str] = ("ms_ssim", "ssim", "psnr")) -> dict:
    """Mean and standard deviation of each metric column of ``rows``, plus ``num_images``."""
    summary = {"num_images": len(rows)}
    for key in keys:
        values = np.array([row[key] for row in rows if math.isfinite(row[key])], dtype=np.float64)
        summary[f"{key}_mean"] = float(values.mean()) if len(values) else float("nan")
        summary[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return summary


def write_csv(rows: Sequence[dict], path: str) -> str:
    """Write ``rows`` to ``path`` through a temporary file renamed when complete."""
    if not rows:
        raise ValueError(f"No rows to write to '{path}'.")
    with atomic_path(path) as temporary, open(temporary, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def diversity_cli(
    folder: str,
    max_pairs: int | None = 10_000,
    seed: int = 0,
    limit: int | None = None,
    kernel_size: int = MS_SSIM_KERNEL_SIZE,
    batch_size: int = 32,
    device: str | None = None,
) -> None:
    """Print the pairwise MS-SSIM diversity (JSON) of the first ``limit`` images of a folder.

    All pairs are used when ``max_pairs`` is None.
    """
    import json

    from scripts.data.images import folder_items, iterate_images

    images = torch.cat([batch for _, batch in iterate_images(folder_items(folder, limit), batch_size=batch_size)])
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    result = pairwise_diversity(images, max_pairs, seed, batch_size, kernel_size, device=device, progress=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    import fire

    fire.Fire({"diversity": diversity_cli})
