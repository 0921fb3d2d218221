"""Editing settings checked before any model is loaded or file written: one clear message per bad value."""

from __future__ import annotations

import math

from scripts.sampling.settings import SettingsError, as_int


def check_strength(value, what: str = "--strength") -> float:
    """``value`` as a strength in [0, 1], or a ``SettingsError`` naming ``what``."""
    try:
        strength = float(value)
    except (TypeError, ValueError):
        raise SettingsError(f"{what} must be a number in [0, 1], got {value!r}.") from None
    if not math.isfinite(strength) or not 0.0 <= strength <= 1.0:
        raise SettingsError(
            f"{what} must be in [0, 1] (0 keeps the image, 1 re-generates it from noise), got {value!r}."
        )
    return strength


def check_edit_settings(strength, feather_pixels) -> None:
    """Fail early on an editing setting that cannot work (the sampling settings are checked as in inference)."""
    check_strength(strength)
    as_int(feather_pixels, "--feather_pixels", 0)
