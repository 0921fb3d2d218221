"""Phased consistency (PCM) sampling behind MONAI's scheduler interface, and the phased parameterisation it
shares with distillation.

A student distilled with phases (Wang et al. 2024, "Phased Consistency Model"; ``scripts/training/distillation.py``
with ``distill_method`` "pcm") splits the teacher's probability-flow ODE at ``num_phases`` + 1 edges of the
skipping-step schedule (4 phases: timesteps 999 | 759 | 499 | 259 | clean). From a noisy latent x_t inside a phase
it predicts the latent at the phase's lower edge s in one pass, through the DDIM formula

    f(x_t, t → s) = √ᾱ_s · x̂0 + √(1−ᾱ_s) · ε̂,

where (x̂0, ε̂) is the UNet output converted to a clean-sample and noise estimate (``clean_and_noise``) and the
clean end has ᾱ = 1 (f = x̂0). f(x_s, s → s) = x_s: the boundary condition holds by construction.

Sampling is deterministic: n steps visit n timesteps of the skipping-step schedule (``sampling_timesteps``; the
phase edges when n is the number of phases) and move from each to the next with the same formula. No noise is
drawn, so an image depends only on its initial noise (its seed) at any batch size. The timesteps nest: those of
2 steps are among those of 4, and those of 4 among those of 8, so more steps only add points inside phases.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.networks.schedulers import Scheduler

# the skipping-step schedule (50 of 1000 timesteps) and the step counts (1-8) are those of LCM students
from scripts.networks.lcm import ORIGINAL_INFERENCE_STEPS, student_step_count

#: The student's own classifier-free guidance at sampling time, a factor on the guidance distilled into it:
#: 1 is the distilled scale in one UNet pass per step; 0 samples the unconditional ODE; other values run the
#: conditional and the unconditional (or negative-prompt) branch, two passes a step (docs/distillation.md).
GUIDANCE_RANGE = (0.0, 2.0)
#: A "timestep" below 0 stands for the clean end of the ODE: ᾱ = 1.
CLEAN = -1
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def clean_and_noise(
    output: torch.Tensor, sample: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, prediction_type: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x̂0, ε̂) implied by a UNet ``output`` at ``sample`` = alpha · x0 + sigma · ε (all (B, C, h, w), float32).

    ``alpha``/``sigma`` broadcast over the sample ((B, 1, 1, 1)). v = alpha · ε − sigma · x0, so for
    v-prediction x̂0 = alpha · x − sigma · v and ε̂ = sigma · x + alpha · v (alpha² + sigma² = 1).
    """
    output, sample = output.float(), sample.float()
    if prediction_type == "v_prediction":
        return alpha * sample - sigma * output, sigma * sample + alpha * output
    if prediction_type == "epsilon":
        return (sample - sigma * output) / alpha, output
    if prediction_type == "sample":
        return output, (sample - alpha * output) / sigma.clamp(min=1e-12)
    raise ValueError(f"prediction_type must be 'v_prediction', 'epsilon' or 'sample', got {prediction_type!r}.")


def noise_levels(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, like: torch.Tensor):
    """(√ᾱ, √(1−ᾱ)) at ``timesteps`` (B,), shaped (B, 1, ..., 1) like ``like``, float32; ``CLEAN`` (< 0) gives
    (1, 0)."""
    timesteps = timesteps.to(alphas_cumprod.device)
    alpha_bar = torch.where(timesteps < 0, 1.0, alphas_cumprod.double()[timesteps.clamp(min=0)])
    shape = (-1, *([1] * (like.dim() - 1)))
    alpha, sigma = alpha_bar.sqrt(), (1.0 - alpha_bar).clamp(min=0.0).sqrt()
    return alpha.reshape(shape).to(like.device, torch.float32), sigma.reshape(shape).to(like.device, torch.float32)


def ddim_move(
    output: torch.Tensor,
    sample: torch.Tensor,
    timesteps: torch.Tensor,
    targets: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    prediction_type: str,
) -> torch.Tensor:
    """√ᾱ_s · x̂0 + √(1−ᾱ_s) · ε̂ (B, C, h, w), float32: ``sample`` at ``timesteps`` (B,) moved to ``targets`` (B,;
    ``CLEAN`` for x̂0) along the UNet ``output``'s DDIM line. The teacher's DDIM step and the phased student's
    consistency function."""
    alpha, sigma = noise_levels(alphas_cumprod, timesteps, sample)
    clean, noise = clean_and_noise(output, sample, alpha, sigma, prediction_type)
    alpha_s, sigma_s = noise_levels(alphas_cumprod, targets, sample)
    return alpha_s * clean + sigma_s * noise


def sampling_timesteps(
    num_steps: int, original_steps: int = ORIGINAL_INFERENCE_STEPS, num_train_timesteps: int = 1000
) -> list[int]:
    """``num_steps`` descending timesteps of the skipping-step schedule (k·j − 1, j = 1..``original_steps``),
    evenly spaced in its index from the noisiest: 4 of 50 are [999, 759, 499, 259] (the spacing of the LCM and
    TCD samplers). With ``num_steps`` = the number of phases they are the phases' upper edges."""
    if not 1 <= int(num_steps) <= int(original_steps):
        raise ValueError(f"num_steps must be in [1, {original_steps}], got {num_steps}.")
    skip = int(num_train_timesteps) // int(original_steps)
    grid = (np.arange(1, int(original_steps) + 1) * skip - 1)[::-1]
    indices = np.floor(np.linspace(0, int(original_steps), num=int(num_steps), endpoint=False)).astype(np.int64)
    return [int(t) for t in grid[indices]]


def phase_edges(num_phases: int, original_steps: int = ORIGINAL_INFERENCE_STEPS, num_train_timesteps: int = 1000):
    """Ascending lower phase edges: ``CLEAN`` and the upper edges of all phases but the top one (4 phases:
    [-1, 259, 499, 759]); a timestep t of the schedule belongs to the phase of the largest edge below it."""
    uppers = sampling_timesteps(num_phases, original_steps, num_train_timesteps)
    return [CLEAN, *sorted(uppers)[:-1]]


def lower_edges(timesteps: torch.Tensor, edges) -> torch.Tensor:
    """The lower phase edge (B,) of each timestep (B,): the largest of ``edges`` strictly below it."""
    edges = torch.as_tensor(list(edges), dtype=torch.long, device=timesteps.device)
    below = (edges[None, :] < timesteps[:, None]).long()
    return edges[below.sum(dim=1).clamp(min=1) - 1]


class PhasedConsistencyScheduler(Scheduler):
    """Deterministic phased consistency sampling over a MONAI noise schedule.

    Args:
        num_train_timesteps: diffusion steps of the teacher (1000 here).
        schedule: MONAI noise schedule name (``"scaled_linear_beta"``).
        prediction_type: what the UNet predicts (the student keeps the teacher's parameterisation).
        original_inference_steps: timesteps of the skipping-step schedule the student was distilled on (50).
        schedule_args: ``beta_start``, ``beta_end`` and other arguments of the MONAI schedule function.

    After ``set_timesteps(n)`` (1 <= n <= ``MAX_STEPS``), ``timesteps`` is the descending LongTensor of
    ``sampling_timesteps(n)``; ``step`` moves a sample from one of them to the next (to x̂0 after the last).
    """

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        schedule: str = "scaled_linear_beta",
        prediction_type: str = "v_prediction",
        original_inference_steps: int = ORIGINAL_INFERENCE_STEPS,
        **schedule_args,
    ) -> None:
        super().__init__(num_train_timesteps, schedule, **schedule_args)
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}.")
        if int(num_train_timesteps) % int(original_inference_steps):
            raise ValueError(
                f"original_inference_steps must divide num_train_timesteps {num_train_timesteps}, "
                f"got {original_inference_steps}."
            )
        self.prediction_type = prediction_type
        self.original_inference_steps = int(original_inference_steps)
        self.init_noise_sigma = 1.0
        self.num_inference_steps = 0
        self.timesteps = torch.arange(num_train_timesteps - 1, -1, -1, dtype=torch.long)

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Choose ``num_inference_steps`` (1 .. ``MAX_STEPS``) timesteps of the skipping-step schedule."""
        self.num_inference_steps = student_step_count(num_inference_steps, "PCM")
        steps = sampling_timesteps(self.num_inference_steps, self.original_inference_steps, self.num_train_timesteps)
        self.timesteps = torch.tensor(steps, dtype=torch.long, device=device)

    def next_timestep(self, timestep: int) -> int:
        """The timestep after ``timestep`` in ``timesteps`` (``CLEAN`` after the last)."""
        steps = self.timesteps.tolist()
        if int(timestep) not in steps:
            raise ValueError(f"timestep {int(timestep)} is not one of this schedule's {steps}.")
        index = steps.index(int(timestep))
        return steps[index + 1] if index + 1 < len(steps) else CLEAN

    def step(
        self, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor, generator=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One deterministic step from ``sample`` (B, C, ...) at ``timestep`` (an entry of ``timesteps``).

        Returns:
            (sample at the next timestep, x̂0 of this step), both like ``sample``.
        """
        batch = sample.shape[0]
        here = torch.full((batch,), int(timestep), dtype=torch.long)
        there = torch.full((batch,), self.next_timestep(int(timestep)), dtype=torch.long)
        moved = ddim_move(model_output, sample, here, there, self.alphas_cumprod, self.prediction_type)
        clean = ddim_move(
            model_output, sample, here, torch.full_like(here, CLEAN), self.alphas_cumprod, self.prediction_type
        )
        return moved.to(sample.dtype), clean.to(sample.dtype)
