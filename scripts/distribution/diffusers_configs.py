"""diffusers configurations of this bundle's networks, noise schedule and samplers.

``unet_config`` and ``vae_config`` describe the bundle's MONAI networks (their ``network_def`` /
``autoencoder_def`` arguments) as diffusers ``UNet2DConditionModel`` / ``AutoencoderKL`` configurations,
refusing the MONAI options diffusers' blocks do not have. ``scheduler_config`` is the bundle's noise schedule
for a diffusers scheduler, and ``diffusers_scheduler`` the diffusers scheduler that steps exactly as the
bundle's scheduler of the same ``scheduler_name``.
"""

from __future__ import annotations

import importlib
import inspect

import torch

from scripts.common.errors import CxrLdmError


class UnsupportedForDiffusersError(CxrLdmError, ValueError):
    """A network option, noise schedule or scheduler has no diffusers counterpart."""


#: MONAI noise schedule name -> diffusers ``beta_schedule`` computing the same betas.
BETA_SCHEDULES = {"scaled_linear_beta": "scaled_linear", "linear_beta": "linear"}

#: Bundle ``scheduler_name`` -> (diffusers class, settings) that step as the bundle's scheduler does
#: (scripts/networks/schedulers.py). The noise schedule and prediction type come from the folder's config.
DIFFUSERS_SCHEDULERS = {
    "unipc_karras": (
        "UniPCMultistepScheduler",
        {
            "solver_type": "bh2",
            "solver_order": 2,
            "predict_x0": True,
            "use_karras_sigmas": True,
            "timestep_spacing": "linspace",
            "final_sigmas_type": "zero",
            "lower_order_final": True,
        },
    ),
    "dpmpp_2m": (
        "DPMSolverMultistepScheduler",
        {
            "algorithm_type": "dpmsolver++",
            "solver_type": "midpoint",
            "solver_order": 2,
            "use_karras_sigmas": False,
            "timestep_spacing": "linspace",
            "final_sigmas_type": "zero",
            "lower_order_final": True,
        },
    ),
    "ddim": (
        "DDIMScheduler",
        {"timestep_spacing": "linspace", "clip_sample": False, "set_alpha_to_one": True},
    ),
}
DIFFUSERS_SCHEDULERS["dpmpp_2m_karras"] = (
    "DPMSolverMultistepScheduler",
    {**DIFFUSERS_SCHEDULERS["dpmpp_2m"][1], "use_karras_sigmas": True},
)
#: The exported folder's own scheduler: the bundle's default sampler.
DEFAULT_SCHEDULER = "unipc_karras"


def with_defaults(network_class, arguments: dict) -> dict:
    """``arguments`` of ``network_class`` completed with the class's defaults (no ``_target_``-style keys)."""
    parameters = inspect.signature(network_class.__init__).parameters
    unknown = [k for k in arguments if k not in parameters]
    if unknown:
        raise UnsupportedForDiffusersError(f"{network_class.__name__} has no argument(s) {unknown}.")
    full = {k: p.default for k, p in parameters.items() if k != "self" and p.default is not inspect.Parameter.empty}
    return {**full, **arguments}


def network_arguments(parser, key: str) -> dict:
    """The arguments of config component ``key`` (``network_def`` / ``autoencoder_def``), resolved, defaults added."""
    module_name, _, class_name = parser[key]["_target_"].rpartition(".")
    network_class = getattr(importlib.import_module(module_name), class_name)
    names = [k for k in parser[key] if not k.startswith("_")]
    return with_defaults(network_class, {k: parser.get_parsed_content(f"{key}#{k}") for k in names})


def per_level(value, levels: int, name: str) -> list[int]:
    """An int or a per-level sequence as a list of ``levels`` ints."""
    values = [int(value)] * levels if isinstance(value, int) else [int(v) for v in value]
    if len(values) != levels:
        raise UnsupportedForDiffusersError(f"{name} has {len(values)} entries for {levels} levels.")
    return values


def _one_or_per_level(values: list[int]) -> int | list[int]:
    """One number when every level has it (what most diffusers tools expect), else the list."""
    return values[0] if len(set(values)) == 1 else values


def _require(arguments: dict, expected: dict, network: str) -> None:
    for key, value in expected.items():
        if arguments.get(key) != value:
            raise UnsupportedForDiffusersError(
                f"{network} with {key}={arguments.get(key)!r} has no diffusers counterpart (export needs {value!r})."
            )


def unet_config(arguments: dict, sample_size: int) -> dict:
    """``UNet2DConditionModel`` configuration of a MONAI ``DiffusionModelUNet`` built from ``arguments``.

    Args:
        arguments: the network's arguments, defaults included (``with_defaults``).
        sample_size: latent height/width the pipeline samples by default (64 for 512² images).
    """
    _require(
        arguments,
        {
            "spatial_dims": 2,
            "with_conditioning": True,
            "resblock_updown": False,
            "num_class_embeds": None,
            "dropout_cattn": 0.0,
            "include_fc": True,
            "use_combined_linear": False,
        },
        "DiffusionModelUNet",
    )
    channels = [int(c) for c in arguments["channels"]]
    levels = len(channels)
    attention = [bool(a) for a in arguments["attention_levels"]]
    head_channels = per_level(arguments["num_head_channels"], levels, "num_head_channels")
    if not attention[-1]:
        raise UnsupportedForDiffusersError("DiffusionModelUNet without attention at its last level: no diffusers twin.")
    # diffusers' `attention_head_dim` of this UNet class is the number of heads per level.
    heads = [channels[i] // head_channels[i] if attention[i] else 1 for i in range(levels)]
    return {
        "sample_size": int(sample_size),
        "in_channels": int(arguments["in_channels"]),
        "out_channels": int(arguments["out_channels"]),
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention],
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)],
        "block_out_channels": channels,
        "layers_per_block": _one_or_per_level(per_level(arguments["num_res_blocks"], levels, "num_res_blocks")),
        "attention_head_dim": heads,
        "cross_attention_dim": int(arguments["cross_attention_dim"]),
        "transformer_layers_per_block": int(arguments["transformer_num_layers"]),
        "norm_num_groups": int(arguments["norm_num_groups"]),
        "norm_eps": float(arguments["norm_eps"]),
        "upcast_attention": bool(arguments["upcast_attention"]),
        "use_linear_projection": False,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "downsample_padding": 1,
        "act_fn": "silu",
    }


#: diffusers' autoencoder blocks use this group-norm epsilon whatever the configuration.
DIFFUSERS_VAE_NORM_EPS = 1e-6


def vae_config(arguments: dict, sample_size: int, scaling_factor: float) -> dict:
    """diffusers ``AutoencoderKL`` configuration (for ``CxrAutoencoderKL``) of a MONAI ``AutoencoderKL``.

    Args:
        arguments: the autoencoder's arguments, defaults included (``with_defaults``).
        sample_size: image height/width (512).
        scaling_factor: the bundle's latent ``scale_factor``.
    """
    _require(
        arguments,
        {
            "spatial_dims": 2,
            "with_encoder_nonlocal_attn": False,
            "with_decoder_nonlocal_attn": False,
            "use_convtranspose": False,
            "norm_eps": DIFFUSERS_VAE_NORM_EPS,
        },
        "AutoencoderKL",
    )
    channels = [int(c) for c in arguments["channels"]]
    if any(arguments["attention_levels"]):
        raise UnsupportedForDiffusersError("AutoencoderKL with attention_levels has no diffusers twin here.")
    blocks = per_level(arguments["num_res_blocks"], len(channels), "num_res_blocks")
    if len(set(blocks)) != 1:
        raise UnsupportedForDiffusersError(f"AutoencoderKL num_res_blocks {blocks}: diffusers needs one number.")
    return {
        "in_channels": int(arguments["in_channels"]),
        "out_channels": int(arguments["out_channels"]),
        "down_block_types": ["DownEncoderBlock2D"] * len(channels),
        "up_block_types": ["UpDecoderBlock2D"] * len(channels),
        "block_out_channels": channels,
        "layers_per_block": blocks[0],
        "act_fn": "silu",
        "latent_channels": int(arguments["latent_channels"]),
        "norm_num_groups": int(arguments["norm_num_groups"]),
        "sample_size": int(sample_size),
        "scaling_factor": float(scaling_factor),
        "force_upcast": False,
        "mid_block_add_attention": False,
    }


def monai_betas(noise_schedule: dict) -> torch.Tensor:
    """The betas (float32, ``num_train_timesteps``) of the bundle's ``noise_schedule`` as MONAI computes them."""
    from monai.networks.schedulers import Scheduler

    schedule = {k: v for k, v in noise_schedule.items() if k != "prediction_type"}
    return Scheduler(**schedule).betas


def scheduler_config(noise_schedule: dict) -> dict:
    """Noise-schedule part of a diffusers scheduler configuration giving exactly MONAI's betas.

    A named diffusers schedule is used when its betas equal MONAI's bit for bit; otherwise the betas are
    listed (``trained_betas``).
    """
    from diffusers import DDPMScheduler

    steps = int(noise_schedule.get("num_train_timesteps", 1000))
    config = {
        "num_train_timesteps": steps,
        "prediction_type": noise_schedule.get("prediction_type", "epsilon"),
        # Ignored by the bundle's samplers (linspace or Karras spacing); 1 keeps StableDiffusionPipeline from
        # rewriting the configuration with a deprecation warning.
        "steps_offset": 1,
    }
    betas = monai_betas(noise_schedule)
    name = BETA_SCHEDULES.get(noise_schedule.get("schedule"))
    if name is not None:
        named = {
            "beta_schedule": name,
            "beta_start": noise_schedule["beta_start"],
            "beta_end": noise_schedule["beta_end"],
        }
        if torch.equal(DDPMScheduler(num_train_timesteps=steps, **named).betas, betas):
            return {**config, **named}
    return {**config, "trained_betas": betas.double().tolist()}


def diffusers_scheduler(name: str, config: dict):
    """The diffusers scheduler that samples as the bundle's scheduler ``name`` (``DIFFUSERS_SCHEDULERS``).

    Args:
        name: the bundle's ``scheduler_name``.
        config: a scheduler configuration holding the noise schedule (``pipe.scheduler.config``).
    """
    import diffusers

    key = str(name).lower()
    if key not in DIFFUSERS_SCHEDULERS:
        raise UnsupportedForDiffusersError(
            f"scheduler_name {name!r} has no exact diffusers counterpart here: choose one of "
            f"{sorted(DIFFUSERS_SCHEDULERS)}."
        )
    class_name, settings = DIFFUSERS_SCHEDULERS[key]
    return getattr(diffusers, class_name).from_config(dict(config), **settings)


def folder_betas(config: dict) -> torch.Tensor:
    """The betas a diffusers scheduler configuration ``config`` gives (float32)."""
    from diffusers import DDPMScheduler

    keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas")
    return DDPMScheduler(**{k: config[k] for k in keys if config.get(k) is not None}).betas
