"""Noise schedulers selectable by name from the configs (``scheduler_name``).

All of them follow MONAI's scheduler interface: ``set_timesteps(num_inference_steps, device)``, then
``step(model_output, timestep, sample) -> (previous_sample, predicted_original_sample)`` for each
``timestep`` in ``scheduler.timesteps``.
"""

from __future__ import annotations

import importlib

#: name -> "module:Class". Extra keyword arguments of ``build_scheduler`` go to the class.
SCHEDULERS = {
    "ddim": "monai.networks.schedulers:DDIMScheduler",
    "ddpm": "monai.networks.schedulers:DDPMScheduler",
    "pndm": "monai.networks.schedulers:PNDMScheduler",
    "dpmpp_2m": "scripts.networks.dpm_solver:DPMSolverPlusPlusScheduler",
    "dpmpp_2m_karras": "scripts.networks.dpm_solver:DPMSolverPlusPlusScheduler",
    "unipc_karras": "scripts.networks.dpm_solver:DPMSolverPlusPlusScheduler",
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
    return scheduler_class(**{**SCHEDULER_DEFAULTS.get(key, {}), **schedule})


def is_stochastic(scheduler) -> bool:
    """Whether ``step`` draws noise (then each image must be stepped with its own generator)."""
    from monai.networks.schedulers import DDPMScheduler

    return isinstance(scheduler, DDPMScheduler)
