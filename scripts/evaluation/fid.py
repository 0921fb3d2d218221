"""``python -m scripts.evaluation.fid``: FID, the Fréchet distance of two image sets in torchxrayvision features.

Features are the 1024-d pooled features of ``densenet121-res224-all`` (``scripts.evaluation.xrv``) under an input
protocol: ``"xrv"`` (correct, default) or ``"reference"`` (the seed paper's, to reproduce its 9.02; see
``scripts.evaluation.xrv``). Each set's features are cached in a ``.npz`` named after the set and a key hashing the
file list (paths, sizes, modification times), the protocol, the role and the weights, so changing any of
them recomputes (``scripts.evaluation.extractors.set_features``). The distance itself is MONAI's ``FIDMetric``.

With fewer images than feature dimensions (1024) the covariance estimates are singular and FID is
biased upwards: compare only numbers computed from equal set sizes (the paper used 1,000 vs 1,000).

CLI (folders, or ``datalist.json#section`` with ``--dataset_dir``)::

    python -m scripts.evaluation.fid output/samples_a output/samples_b \\
        --xrv_weights models/xrv/densenet121-res224-all.pt
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence

import numpy as np
import torch

from scripts.common.files import atomic_write_json
from scripts.data.images import datalist_items, folder_items
from scripts.evaluation import extractors, xrv

logger = logging.getLogger(__name__)


def frechet_distance(features_a: np.ndarray | torch.Tensor, features_b: np.ndarray | torch.Tensor) -> float:
    """FID of two (N, D) feature matrices, in float64.

    MONAI's ``FIDMetric`` when both sets have more rows than dimensions; otherwise the covariances are
    singular, MONAI's matrix square root fails ("Imaginary component too high"), and the trace term is
    taken from the eigenvalues of the symmetric PSD matrix √Σa Σb √Σa instead (the same quantity).
    """
    from monai.metrics import FIDMetric

    a, b = (torch.as_tensor(np.asarray(f), dtype=torch.float64) for f in (features_a, features_b))
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"Feature matrices must be (N, D) with equal D, got {tuple(a.shape)} and {tuple(b.shape)}.")
    if min(len(a), len(b)) < 2:
        raise ValueError(f"FID needs at least 2 images per set, got {len(a)} and {len(b)}.")
    if min(len(a), len(b)) > a.shape[1]:
        return float(FIDMetric()(a, b))
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    eigenvalues, eigenvectors = torch.linalg.eigh(cov_a)
    root_a = eigenvectors @ torch.diag(_drop_round_off(eigenvalues).sqrt()) @ eigenvectors.T
    trace_root = _drop_round_off(torch.linalg.eigvalsh(root_a @ cov_b @ root_a)).sqrt().sum()
    mean_term = ((a.mean(0) - b.mean(0)) ** 2).sum()
    return float(mean_term + torch.trace(cov_a) + torch.trace(cov_b) - 2 * trace_root)


def _drop_round_off(eigenvalues: torch.Tensor) -> torch.Tensor:
    """Eigenvalues with round-off-sized ones set to 0: a rank-deficient matrix has hundreds of them, and their
    square roots would otherwise add up to a visible error."""
    tolerance = eigenvalues.abs().max() * len(eigenvalues) * torch.finfo(eigenvalues.dtype).eps
    return torch.where(eigenvalues > tolerance, eigenvalues, torch.zeros_like(eigenvalues))


def small_set_warning(num_a: int, num_b: int, feature_dim: int = xrv.FEATURE_DIM) -> str | None:
    """A warning text when a set has fewer images than feature dimensions (singular covariance), else None."""
    if min(num_a, num_b) < feature_dim:
        return (
            f"FID from {num_a} vs {num_b} images, fewer than the {feature_dim} feature dimensions: the covariance is "
            "rank-deficient and FID is biased upwards; compare only with FIDs from the same set sizes."
        )
    return None


def set_features(
    model,
    items: Sequence[dict],
    set_name: str,
    protocol: str = "xrv",
    role: str = xrv.REAL,
    transform: Callable[[dict], dict] | None = None,
    cache_dir: str | None = None,
    batch_size: int = 16,
    progress: bool = False,
) -> np.ndarray:
    """(N, 1024) float32 torchxrayvision features of a set, read from / written to ``cache_dir`` when given.

    Args:
        model: torchxrayvision DenseNet (``scripts.evaluation.xrv.load_densenet``).
        items: dicts with an ``"image"`` path; ``transform`` loads one (default: the file as (1, H, W) in [0, 1]).
        set_name: readable prefix of the cache file.
        protocol, role: see ``scripts.evaluation.xrv.to_network_input``.
    """
    extractor = extractors.XrvExtractor(model, protocol, role)
    return extractors.set_features(extractor, items, set_name, transform, cache_dir, batch_size, progress)


def fid_summary(features_a: np.ndarray, features_b: np.ndarray, protocol: str, weights_source: str) -> dict:
    """``{"fid", "num_images_a", "num_images_b", "protocol", "weights", "warning"}`` (warning may be None)."""
    warning = small_set_warning(len(features_a), len(features_b), features_a.shape[1])
    if warning:
        logger.warning(warning)
    return {
        "fid": frechet_distance(features_a, features_b),
        "num_images_a": int(len(features_a)),
        "num_images_b": int(len(features_b)),
        "protocol": protocol,
        "weights": weights_source,
        "warning": warning,
    }


def items_for(spec: str, dataset_dir: str | None = None, limit: int | None = None) -> list[dict]:
    """Items of a set given as a folder or as ``datalist.json#section`` (paths relative to ``dataset_dir``)."""
    spec = os.fspath(spec)
    if "#" in spec and spec.split("#", 1)[0].endswith(".json"):
        datalist, section = spec.split("#", 1)
        return datalist_items(datalist, section, dataset_dir or os.path.dirname(os.path.abspath(datalist)), limit)
    return folder_items(spec, limit)


def main(
    set_a: str,
    set_b: str,
    xrv_weights: str | None = "models/xrv/densenet121-res224-all.pt",
    protocol: str = "xrv",
    role_a: str = xrv.REAL,
    role_b: str = xrv.GENERATED,
    dataset_dir: str | None = None,
    limit: int | None = None,
    cache_dir: str | None = None,
    batch_size: int = 16,
    device: str | None = None,
    output_json: str | None = None,
) -> dict:
    """FID between two image sets; prints and returns the summary (and writes ``output_json`` if given).

    Args:
        set_a, set_b: folders of PNG/JPEG/.pt images in [0, 1] (8-bit), or ``datalist.json#section``.
        xrv_weights: local ``densenet121-res224-all`` file (``python -m scripts.distribution.download``); the string
            ``"random"`` uses random weights (for trying the command only: the number is meaningless).
        protocol: ``"xrv"`` (correct) or ``"reference"`` (the seed paper's, uses ``role_a``/``role_b``).
        limit: use the first ``limit`` images of each set (sorted by name).
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    xrv.get_protocol(protocol)
    model = xrv.load_densenet(xrv_weights, device=device)
    features = [
        set_features(
            model,
            items_for(spec, dataset_dir, limit),
            os.path.basename(os.path.normpath(spec.split("#")[0])),
            protocol,
            role,
            cache_dir=cache_dir,
            batch_size=batch_size,
            progress=True,
        )
        for spec, role in ((set_a, role_a), (set_b, role_b))
    ]
    summary = fid_summary(*features, protocol=protocol, weights_source=model.weights_source)
    if output_json:
        atomic_write_json(output_json, summary)
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    import fire

    fire.Fire(main, serialize=lambda summary: None)
