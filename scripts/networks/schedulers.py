"""Noise schedulers selectable by name from the configs (``scheduler_name``).

All of them follow MONAI's scheduler interface: ``set_timesteps(num_inference_steps, device)``, then
``step(model_output, timestep, sample) -> (previous_sample, predicted_original_sample)`` for each
``timestep`` in ``scheduler.timesteps``.
"""

from __future__ import annotations

import importlib

import torch

#: name -> "module:Class". Extra keyword arguments of ``build_scheduler`` go to the class.
SCHEDULERS = {
    "ddim": "monai.networks.schedulers:DDIMScheduler",
    "ddpm": "monai.networks.schedulers:DDPMScheduler",
    "pndm": "monai.networks.schedulers:PNDMScheduler",
    "dpmpp_2m": "scripts.networks.dpm_solver:DPMSolverPlusPlusScheduler",
    "dpmpp_2m_karras": "scripts.networks.dpm_solver:DPMSolverPlusPlusScheduler",
    "unipc_karras": "scripts.networks.dpm_solver:DPMSolverPlusPlusScheduler",
    # a latent consistency student (scripts/training/distillation.py), 1-8 steps, guidance built in
    "lcm": "scripts.networks.lcm:LCMSamplingScheduler",
    # a phased consistency student (the default of configs/distill.json), 1-8 deterministic steps
    "pcm": "scripts.networks.pcm:PhasedConsistencyScheduler",
}

#: Settings each scheduler needs to sample this model as the reference does (DDIM without clipping).
SCHEDULER_DEFAULTS = {
    "ddim": {"clip_sample": False},
    "ddpm": {"clip_sample": False},
    "pndm": {"skip_prk_steps": True},
    "dpmpp_2m": {"solver_order": 2},
    # Karras et al. (2022) noise levels: denser steps at low noise, ending at t = 0 (docs/performance.md).
    "dpmpp_2m_karras": {"solver_order": 2, "use_karras_sigmas": True},
    "unipc_karras": {"solver": "unipc", "solver_order": 2, "use_karras_sigmas": True},
}


def build_scheduler(name: str, **schedule):
    """Scheduler ``name`` (one of ``SCHEDULERS``) over the noise schedule ``schedule``.

    Args:
        name: scheduler name, case-insensitive.
        schedule: ``num_train_timesteps``, ``schedule``, ``beta_start``, ``beta_end``, ``prediction_type``
            and any scheduler-specific option (overrides ``SCHEDULER_DEFAULTS``).
    """
    key = str(name).lower()
    if key not in SCHEDULERS:
        raise ValueError(f"Unknown scheduler_name {name!r}: choose one of {sorted(SCHEDULERS)}.")
    module_name, class_name = SCHEDULERS[key].split(":")
    scheduler_class = getattr(importlib.import_module(module_name), class_name)
    scheduler = scheduler_class(**{**SCHEDULER_DEFAULTS.get(key, {}), **schedule})
    scheduler.scheduler_name = name  # as given: a sampler's identity names its scheduler by it
    return scheduler


def scheduler_name(scheduler) -> str:
    """The name ``scheduler`` was built under (``build_scheduler``), else its class name."""
    return getattr(scheduler, "scheduler_name", type(scheduler).__name__)


def is_stochastic(scheduler) -> bool:
    """Whether ``step`` draws noise (then each image must be stepped with its own generator)."""
    from monai.networks.schedulers import DDPMScheduler

    return isinstance(scheduler, DDPMScheduler) or bool(getattr(scheduler, "stochastic", False))


def noise_scales(scheduler, index: int) -> tuple[float, float]:
    """(alpha, sigma) with which a sample at step ``index`` of ``scheduler.timesteps`` is x = alpha·x0 + sigma·ε.

    ``index`` runs from 0 (the first, noisiest step) to ``len(scheduler.timesteps)``, the clean end of
    sampling (1, 0). Call after ``set_timesteps``. MONAI's schedulers use the training schedule at the
    step's timestep (alpha = √ᾱ_t, sigma = √(1 - ᾱ_t)); the multistep solvers their own noise levels.
    """
    index = int(index)
    timesteps = scheduler.timesteps
    if not 0 <= index <= len(timesteps):
        raise IndexError(f"step index {index} is outside 0..{len(timesteps)}.")
    if index == len(timesteps):
        return 1.0, 0.0
    if hasattr(scheduler, "noise_scales"):
        return scheduler.noise_scales(index)
    alpha_bar = float(scheduler.alphas_cumprod[int(timesteps[index])])
    return alpha_bar**0.5, (1.0 - alpha_bar) ** 0.5


def noise_to_step(scheduler, clean: torch.Tensor, noise: torch.Tensor, index: int) -> torch.Tensor:
    """``clean`` latents noised with ``noise`` to the level of step ``index`` (``noise_scales``), in float32."""
    alpha, sigma = noise_scales(scheduler, index)
    return alpha * clean.float() + sigma * noise.float()
