"""The one progress bar of the bundle (tqdm), switched off by a flag."""

from __future__ import annotations

from collections.abc import Iterable


def progress(
    iterable: Iterable, total: int | None = None, description: str = "", enabled: bool = True, unit: str = "it"
):
    """``iterable`` under a tqdm progress bar (``total`` items), or ``iterable`` itself when not ``enabled``."""
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=description, unit=unit, dynamic_ncols=True, leave=False)
