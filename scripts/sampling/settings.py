"""Sampling settings checked before any model is loaded or file written: one clear message per bad value."""

from __future__ import annotations

import math

import torch

from scripts.common.errors import CxrLdmError
from scripts.sampling.writer import OUTPUT_FORMATS


class SettingsError(CxrLdmError, ValueError):
    """A sampling setting that cannot work."""


def as_int(value, what: str, minimum: int, error: type[Exception] = SettingsError) -> int:
    try:
        number = int(str(value).strip())
    except (TypeError, ValueError):
        raise error(f"{what} must be an integer, got {value!r}.") from None
    if number < minimum:
        raise error(f"{what} must be >= {minimum}, got {number}.")
    return number


def as_finite(value, what: str, positive: bool = False) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SettingsError(f"{what} must be a number, got {value!r}.") from None
    if not math.isfinite(number):
        raise SettingsError(f"{what} must be a finite number, got {value}.")
    if positive and number <= 0:
        raise SettingsError(f"{what} must be > 0, got {value!r}.")
    return number


def check_settings(
    output_format: str,
    num_inference_steps,
    guidance_scale,
    batch_size,
    num_samples,
    device=None,
    scale_factor=1.0,
    scheduler_name=None,
) -> None:
    """Fail early, before any model is loaded or file written, on settings that cannot work."""
    if device is not None:
        device = torch.device(device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise SettingsError(f"--device {device} was asked for but CUDA is not available here: use --device cpu.")
        if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
            raise SettingsError(f"--device {device} does not exist: {torch.cuda.device_count()} GPU(s) are visible.")
    if str(output_format).lower() not in OUTPUT_FORMATS:
        raise SettingsError(
            f"--output_format {output_format!r} is not supported: choose one of {list(OUTPUT_FORMATS)}."
        )
    as_int(num_inference_steps, "--num_inference_steps", 1)
    as_int(batch_size, "--batch_size", 1)
    as_int(num_samples, "--num_samples", 1)
    guidance = as_finite(guidance_scale, "--guidance_scale")
    as_finite(scale_factor, "--scale_factor", positive=True)
    if scheduler_name is not None:
        check_scheduler(scheduler_name, num_inference_steps, guidance)


def check_scheduler(scheduler_name, num_inference_steps, guidance_scale: float) -> None:
    """The scheduler exists, and a distilled student (``pcm``, ``lcm``) gets 1-8 steps and a guidance it can use:
    ``lcm`` none beyond its own (1), ``pcm`` a factor on its own in ``scripts.networks.pcm.GUIDANCE_RANGE``."""
    from scripts.networks.lcm import MAX_STEPS
    from scripts.networks.pcm import GUIDANCE_RANGE
    from scripts.networks.schedulers import SCHEDULERS

    name = str(scheduler_name).lower()
    if name not in SCHEDULERS:
        raise SettingsError(f"--scheduler_name {scheduler_name!r} is not known: choose one of {sorted(SCHEDULERS)}.")
    if name not in ("lcm", "pcm"):
        return
    steps = as_int(num_inference_steps, "--num_inference_steps", 1)
    if steps > MAX_STEPS:
        raise SettingsError(
            f"--num_inference_steps {steps} is too many for --scheduler_name {name}: a distilled student samples in "
            f"1-{MAX_STEPS} steps (4 is the default of docs/distillation.md)."
        )
    low, high = GUIDANCE_RANGE
    if name == "pcm" and not low <= guidance_scale <= high:
        raise SettingsError(
            f"--guidance_scale {guidance_scale:g} is outside [{low:g}, {high:g}] for --scheduler_name pcm: the student "
            "has the teacher's guidance built in and takes a factor on it (1: as distilled, one UNet pass per step)."
        )
    if name == "lcm" and guidance_scale != 1.0:
        raise SettingsError(
            f"--guidance_scale {guidance_scale:g} does not apply to --scheduler_name lcm: the distilled student has "
            "guidance built in and runs one UNet pass per step; set --guidance_scale 1."
        )
