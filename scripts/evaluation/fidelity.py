"""Distances between two sets of image features that FID alone does not give: KID and PRDC.

- **KID** (Bińkowski et al. 2018, "Demystifying MMD GANs"): the unbiased estimate of the squared maximum
  mean discrepancy with the polynomial kernel k(x, y) = (xᵀy / d + 1)³, averaged over random subsets of
  both sets (``num_subsets`` draws of ``subset_size`` features each, without replacement within a draw);
  the spread over subsets is its standard deviation. Unlike FID it is unbiased at small set sizes.
- **PRDC** (Naeem et al. 2020, "Reliable Fidelity and Diversity Metrics for Generative Models"): with each
  real feature's radius the distance to its k-th nearest real neighbour (itself excluded),
  *precision* is the share of generated features inside at least one real ball, *recall* the share of
  real features inside at least one generated ball (radii from the generated set), *density* the mean
  number of real balls holding a generated feature divided by k, and *coverage* the share of real balls
  holding at least one generated feature. Precision and density measure fidelity (density can exceed
  1), recall and coverage diversity: a model that covers few modes well has high precision and low
  recall, one that covers every mode badly the reverse.

Distances are Euclidean, computed in float64 in blocks, so sets of tens of thousands fit in memory.
``fidelity_scores`` gives FID, KID and PRDC of two feature sets at once (the evaluation's fidelity metrics).
"""

from __future__ import annotations

import numpy as np
import torch

from scripts.evaluation import fid as fid_lib

#: k of PRDC used by CheXGenBench and the PRDC paper's recommendation
PRDC_NEAREST_K = 5
#: subsets and subset size of KID (as torchmetrics' KernelInceptionDistance defaults)
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
_BLOCK = 2048


def _as_matrix(features, name: str) -> torch.Tensor:
    matrix = torch.as_tensor(np.asarray(features), dtype=torch.float64)
    if matrix.ndim != 2 or len(matrix) == 0:
        raise ValueError(f"{name} features must be a non-empty (N, D) matrix, got shape {tuple(matrix.shape)}.")
    if not torch.isfinite(matrix).all():
        raise ValueError(f"{name} features hold NaN or inf values.")
    return matrix


def polynomial_kernel(a: torch.Tensor, b: torch.Tensor, degree: int = 3, coef: float = 1.0) -> torch.Tensor:
    """(len(a), len(b)) kernel matrix (aᵀb / d + coef)^degree of (N, d) and (M, d) features."""
    return (a @ b.T / a.shape[1] + coef) ** degree


def unbiased_mmd2(real: torch.Tensor, generated: torch.Tensor, degree: int = 3, coef: float = 1.0) -> float:
    """Unbiased MMD² of two (m, d) feature sets of equal size m >= 2 under ``polynomial_kernel``."""
    m = len(real)
    k_rr = polynomial_kernel(real, real, degree, coef)
    k_gg = polynomial_kernel(generated, generated, degree, coef)
    k_rg = polynomial_kernel(real, generated, degree, coef)
    within = (k_rr.sum() - k_rr.diagonal().sum() + k_gg.sum() - k_gg.diagonal().sum()) / (m * (m - 1))
    return float(within - 2.0 * k_rg.mean())


def kid(
    real_features,
    generated_features,
    num_subsets: int = KID_SUBSETS,
    subset_size: int = KID_SUBSET_SIZE,
    seed: int = 0,
    degree: int = 3,
    coef: float = 1.0,
) -> dict:
    """KID of two (N, D) / (M, D) feature sets.

    Returns ``{"kid_mean", "kid_std", "subset_size", "num_subsets"}``: the mean and the (population) standard
    deviation of the unbiased MMD² over ``num_subsets`` random subsets; ``subset_size`` is capped at the
    smaller set's size (at least 2 features per set are needed). Seeded: the same inputs give the same value.
    """
    real, generated = _as_matrix(real_features, "real"), _as_matrix(generated_features, "generated")
    if real.shape[1] != generated.shape[1]:
        raise ValueError(f"Feature widths differ: {real.shape[1]} and {generated.shape[1]}.")
    size = min(int(subset_size), len(real), len(generated))
    if size < 2:
        raise ValueError(f"KID needs at least 2 features per set, got {len(real)} and {len(generated)}.")
    generator = torch.Generator().manual_seed(int(seed))
    scores = []
    for _ in range(int(num_subsets)):
        r = real[torch.randperm(len(real), generator=generator)[:size]]
        g = generated[torch.randperm(len(generated), generator=generator)[:size]]
        scores.append(unbiased_mmd2(r, g, degree, coef))
    scores = np.asarray(scores)
    return {
        "kid_mean": float(scores.mean()),
        "kid_std": float(scores.std()),
        "subset_size": int(size),
        "num_subsets": int(num_subsets),
    }


def _distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(len(a), len(b)) Euclidean distances, computed in blocks of rows."""
    return torch.cat([torch.cdist(a[i : i + _BLOCK], b) for i in range(0, len(a), _BLOCK)])


def nearest_neighbour_radii(features: torch.Tensor, k: int) -> torch.Tensor:
    """(N,) distance of each feature to its k-th nearest neighbour in the same set (itself excluded)."""
    if len(features) <= k:
        raise ValueError(f"PRDC with k = {k} needs more than {k} features per set, got {len(features)}.")
    radii = [
        torch.kthvalue(torch.cdist(features[i : i + _BLOCK], features), k + 1, dim=1).values  # k + 1: itself is 0
        for i in range(0, len(features), _BLOCK)
    ]
    return torch.cat(radii)


def prdc(real_features, generated_features, nearest_k: int = PRDC_NEAREST_K) -> dict:
    """Precision, recall, density and coverage (Naeem et al. 2020) of two (N, D) / (M, D) feature sets.

    Returns ``{"precision", "recall", "density", "coverage", "nearest_k"}``; all in [0, 1] except density
    (>= 0, 1 on average for two samples of one distribution).
    """
    real, generated = _as_matrix(real_features, "real"), _as_matrix(generated_features, "generated")
    if real.shape[1] != generated.shape[1]:
        raise ValueError(f"Feature widths differ: {real.shape[1]} and {generated.shape[1]}.")
    k = int(nearest_k)
    real_radii = nearest_neighbour_radii(real, k)
    generated_radii = nearest_neighbour_radii(generated, k)
    distances = _distances(real, generated)  # (N real, M generated)
    inside_real_balls = distances <= real_radii[:, None]
    return {
        "precision": float(inside_real_balls.any(dim=0).double().mean()),
        "recall": float((distances <= generated_radii[None, :]).any(dim=1).double().mean()),
        "density": float(inside_real_balls.double().sum(dim=0).mean() / k),
        "coverage": float((distances.min(dim=1).values <= real_radii).double().mean()),
        "nearest_k": k,
    }


def fidelity_scores(
    generated_features,
    real_features,
    kid_num_subsets: int = KID_SUBSETS,
    kid_subset_size: int = KID_SUBSET_SIZE,
    prdc_nearest_k: int = PRDC_NEAREST_K,
    seed: int = 0,
) -> dict:
    """FID, KID (mean, std) and PRDC of (M, D) generated vs (N, D) real features; a metric the set sizes cannot
    give is None and ``notes`` says why."""
    result = {"num_generated": int(len(generated_features)), "num_real": int(len(real_features)), "notes": []}
    result["fid"] = fid_lib.frechet_distance(generated_features, real_features)
    warning = fid_lib.small_set_warning(len(generated_features), len(real_features), real_features.shape[1])
    if warning:
        result["notes"].append(warning)
    result.update(kid(real_features, generated_features, kid_num_subsets, kid_subset_size, seed))
    if min(len(generated_features), len(real_features)) > prdc_nearest_k:
        result.update(prdc(real_features, generated_features, prdc_nearest_k))
    else:
        result.update(precision=None, recall=None, density=None, coverage=None, nearest_k=prdc_nearest_k)
        result["notes"].append(f"PRDC needs more than k = {prdc_nearest_k} images per set.")
    return result
