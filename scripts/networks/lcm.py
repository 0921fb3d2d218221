"""Latent consistency model (LCM) sampling behind MONAI's scheduler interface, and the consistency
parameterisation it shares with distillation.

A UNet distilled by latent consistency distillation (Luo et al. 2023, "Latent Consistency Models";
``scripts/training/distillation.py``) is a consistency function: from a noisy latent x_t at any timestep
of its skipping-step schedule it predicts the clean latent in one pass,

    f(x_t, t) = c_skip(t) · x_t + c_out(t) · x̂0(x_t, t),

where x̂0 is the UNet output converted to a clean-sample estimate (v-prediction: x̂0 = √ᾱ_t · x_t − √(1−ᾱ_t) · v)
and c_skip(0) = 1, c_out(0) = 0 make f the identity on clean data (the boundary condition). Sampling with n
steps evaluates f at n timesteps of the schedule, re-noising its prediction to the next timestep between
evaluations (multistep consistency sampling). The sampler is diffusers' ``LCMScheduler``; this module hands
it the exact betas of MONAI's noise schedule and makes its ``step`` depend only on its arguments, so the
bundle's sampler can step each image of a batch with its own generator.
"""

from __future__ import annotations

import torch
from monai.networks.schedulers import Scheduler

#: Boundary-condition constants of the LCM paper (and of diffusers' ``LCMScheduler``).
SIGMA_DATA = 0.5
TIMESTEP_SCALING = 10.0
#: Timesteps of the skipping-step (DDIM) schedule the student is distilled on: 50 of 1000 (skip k = 20).
ORIGINAL_INFERENCE_STEPS = 50
#: Step counts the sampler accepts: a consistency student is made for few steps (docs/distillation.md).
MAX_STEPS = 8


def student_step_count(num_inference_steps, method: str) -> int:
    """``num_inference_steps`` as an int, checked to be in 1 .. ``MAX_STEPS`` (a ValueError naming ``method``)."""
    if not 1 <= int(num_inference_steps) <= MAX_STEPS:
        raise ValueError(f"num_inference_steps must be in [1, {MAX_STEPS}] for {method}, got {num_inference_steps}.")
    return int(num_inference_steps)


PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def boundary_scalings(
    timesteps: torch.Tensor, sigma_data: float = SIGMA_DATA, timestep_scaling: float = TIMESTEP_SCALING
) -> tuple[torch.Tensor, torch.Tensor]:
    """(c_skip, c_out) of the consistency parameterisation at integer ``timesteps`` (any shape), float64.

    c_skip = σ_d² / ((s·t)² + σ_d²) and c_out = s·t / √((s·t)² + σ_d²), with σ_d = ``sigma_data`` and
    s = ``timestep_scaling``: c_skip(0) = 1 and c_out(0) = 0 (f(x, 0) = x); at t ≥ 19 c_skip < 2e-6.
    """
    scaled = timesteps.to(torch.float64) * float(timestep_scaling)
    c_skip = sigma_data**2 / (scaled**2 + sigma_data**2)
    c_out = scaled / (scaled**2 + sigma_data**2).sqrt()
    return c_skip, c_out


class LCMSamplingScheduler(Scheduler):
    """Multistep consistency sampling (diffusers' ``LCMScheduler``) over a MONAI noise schedule.

    Args:
        num_train_timesteps: diffusion steps of the teacher (1000 here).
        schedule: MONAI noise schedule name (``"scaled_linear_beta"``); its betas go to the sampler.
        prediction_type: what the UNet predicts (``"v_prediction"`` for this model; the student keeps the
            teacher's parameterisation).
        original_inference_steps: timesteps of the skipping-step schedule the student was distilled on
            (50: t = 19, 39, ..., 999); the sampling timesteps are a subset of them.
        timestep_scaling: s of the boundary condition (10, as in distillation).
        schedule_args: ``beta_start``, ``beta_end`` and other arguments of the MONAI schedule function.

    After ``set_timesteps(n)`` (1 <= n <= ``MAX_STEPS``), ``timesteps`` is a descending LongTensor of n
    training timesteps (n = 1: [999]; n = 4: [999, 759, 499, 259]); ``step`` returns the consistency
    prediction re-noised to the next timestep with fresh noise (the prediction itself after the last).
    """

    #: ``step`` draws noise: the bundle's sampler gives every image its own generator.
    stochastic = True

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        schedule: str = "scaled_linear_beta",
        prediction_type: str = "v_prediction",
        original_inference_steps: int = ORIGINAL_INFERENCE_STEPS,
        timestep_scaling: float = TIMESTEP_SCALING,
        **schedule_args,
    ) -> None:
        from diffusers import LCMScheduler

        super().__init__(num_train_timesteps, schedule, **schedule_args)
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}.")
        self.prediction_type = prediction_type
        self.solver = LCMScheduler(
            num_train_timesteps=num_train_timesteps,
            trained_betas=self.betas.double().numpy(),  # MONAI's betas: one schedule for training and sampling
            prediction_type=prediction_type,
            original_inference_steps=int(original_inference_steps),
            timestep_scaling=float(timestep_scaling),
            clip_sample=False,
            set_alpha_to_one=True,
        )
        self.init_noise_sigma = 1.0
        self.num_inference_steps = 0
        self.timesteps = torch.arange(num_train_timesteps - 1, -1, -1, dtype=torch.long)

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Choose ``num_inference_steps`` (1 .. ``MAX_STEPS``) timesteps of the skipping-step schedule."""
        self.num_inference_steps = student_step_count(num_inference_steps, "LCM")
        self.solver.set_timesteps(self.num_inference_steps, device=device)
        self.timesteps = self.solver.timesteps

    def step(
        self, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor, generator=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One consistency step from ``sample`` (B, C, ...) at ``timestep`` (an entry of ``timesteps``).

        Args:
            model_output: the student's output at ``timestep``, same shape as ``sample``.
            generator: ``torch.Generator`` (or one per image) of the noise added for the next step.

        Returns:
            (sample at the next timestep, consistency prediction of the clean sample), both like ``sample``.
        """
        matches = (self.timesteps == int(timestep)).nonzero()
        if len(matches) == 0:
            raise ValueError(f"timestep {int(timestep)} is not one of this schedule's {self.timesteps.tolist()}.")
        # diffusers counts steps across calls; setting the index from the timestep makes each call independent
        # of the previous ones (the bundle steps the images of a batch one by one, each with its own noise).
        self.solver._step_index = int(matches[0, 0])
        prev_sample, denoised = self.solver.step(
            model_output, int(timestep), sample, generator=generator, return_dict=False
        )
        return prev_sample.to(sample.dtype), denoised.to(sample.dtype)
