"""Helpers for the fast-sampling tests: a diffusion problem with an exact answer, and the paper's solver.

``GaussianDenoiser`` is the ideal v-prediction "UNet" for Gaussian data x0 ~ N(mu, diag(s^2)), with the
mean read from the conditioning, so guided sampling has a closed-form answer too (``exact_ode_solution``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

#: The model's noise schedule (configs/inference.json ``noise_schedule``).
NOISE_SCHEDULE = {
    "num_train_timesteps": 1000,
    "schedule": "scaled_linear_beta",
    "beta_start": 0.0015,
    "beta_end": 0.0205,
    "prediction_type": "v_prediction",
}


class GaussianDenoiser(torch.nn.Module):
    """Exact v-prediction for data x0 ~ N(mu, diag(std^2)) under the VP schedule ``alphas_cumprod``.

    With a = sqrt(alphas_cumprod[t]) and sigma = sqrt(1 - alphas_cumprod[t]), x_t = a x0 + sigma eps, the
    posterior mean is E[x0 | x_t] = mu + a std^2 / (a^2 std^2 + sigma^2) (x_t - a mu), and the ideal
    v = (a x_t - E[x0 | x_t]) / sigma. The mean mu (B, C) is ``context[:, 0, :C]``, so the conditional
    and unconditional branches of guidance can have different data distributions.

    Args:
        alphas_cumprod: (T,) cumulative products of the schedule's alphas.
        std: (C,) per-channel data standard deviation.

    Called like MONAI's ``DiffusionModelUNet``: ``forward(x (B, C, H, W), timesteps (B,), context (B, L, D))``.
    """

    def __init__(self, alphas_cumprod: torch.Tensor, std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("alphas_cumprod", alphas_cumprod.double())
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float64))
        # A parameter, so that code asking a network for its device/dtype works.
        self.anchor = torch.nn.Parameter(torch.zeros(()))

    def posterior_mean(self, x: torch.Tensor, timesteps: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
        a_bar = self.alphas_cumprod[timesteps.long()].view(-1, 1, 1, 1)
        a, sigma2 = a_bar.sqrt(), 1.0 - a_bar
        var = self.std.view(1, -1, 1, 1) ** 2
        mu = mu.double().view(*mu.shape, 1, 1)
        return mu + a * var / (a_bar * var + sigma2) * (x.double() - a * mu)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        mu = context[:, 0, : x.shape[1]]
        a_bar = self.alphas_cumprod[timesteps.long()].view(-1, 1, 1, 1)
        x0 = self.posterior_mean(x, timesteps, mu)
        return ((a_bar.sqrt() * x.double() - x0) / (1.0 - a_bar).sqrt()).to(x.dtype)


def mean_context(mu: torch.Tensor, length: int = 77, width: int = 8) -> torch.Tensor:
    """Conditioning (B, length, width) that makes ``GaussianDenoiser`` use the means ``mu`` (B, C)."""
    context = torch.zeros(mu.shape[0], length, width)
    context[:, 0, : mu.shape[1]] = mu
    return context


def exact_ode_solution(
    x_start: torch.Tensor, t_start: int, alphas_cumprod: torch.Tensor, mu: torch.Tensor, std: torch.Tensor
) -> torch.Tensor:
    """Exact probability-flow ODE map from x_{t_start} (B, C, H, W) to x0 for Gaussian data N(mu, std^2).

    For Gaussian data the ODE keeps the standardised coordinate (x_t - a mu) / sqrt(a^2 std^2 + sigma^2)
    constant, so x0 = mu + std (x_t - a mu) / sqrt(a^2 std^2 + sigma^2).
    """
    a_bar = alphas_cumprod.double()[t_start]
    mu = mu.double().view(*mu.shape, 1, 1)
    std = std.double().view(1, -1, 1, 1)
    return mu + std * (x_start.double() - a_bar.sqrt() * mu) / (a_bar * std**2 + 1.0 - a_bar).sqrt()


def dpm_solver_pp_2m_reference(
    data_prediction, x: torch.Tensor, timesteps: Sequence[int], alphas_cumprod: torch.Tensor
) -> torch.Tensor:
    """DPM-Solver++(2M) as written in Lu et al. (2022), Algorithm 2, in float64.

    ``data_prediction(x, t)`` is x_theta, the model's clean-sample estimate at training timestep ``t``;
    ``timesteps`` are descending. After the last timestep the solver steps to noise level 0, where the
    update reduces to the first-order one, x = x_theta (the convention of the library under test).
    """
    a_bar = alphas_cumprod.double()
    alpha = a_bar.sqrt()
    sigma = (1.0 - a_bar).sqrt()
    lam = torch.log(alpha / sigma)
    x = x.double()
    previous_x0, previous_h = None, None
    for i, t in enumerate(timesteps):
        x0 = data_prediction(x, t).double()
        if i == len(timesteps) - 1:
            return x0
        s = timesteps[i + 1]
        h = (lam[s] - lam[t]).item()
        if previous_x0 is None:
            d = x0
        else:
            r = previous_h / h
            d = (1.0 + 1.0 / (2.0 * r)) * x0 - (1.0 / (2.0 * r)) * previous_x0
        x = (sigma[s] / sigma[t]) * x - alpha[s] * math.expm1(-h) * d
        previous_x0, previous_h = x0, h
    return x
