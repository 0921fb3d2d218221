"""The one progress bar of the bundle (tqdm), switched off by a flag, and a check that can stop its loop.

Every long loop of the bundle (denoising steps, images, training iterations) runs under ``progress``. Code
that must be able to stop such a loop from outside (the app, when it is asked to quit) sets a check with
``step_check``: every progress loop started in that context calls it before each item, and the loop ends with
whatever error the check raises.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterable, Iterator

#: the check of the current context (thread or task), called before each item of its progress loops
_STEP_CHECK: contextvars.ContextVar[Callable[[], None] | None] = contextvars.ContextVar("step_check", default=None)


def progress(
    iterable: Iterable, total: int | None = None, description: str = "", enabled: bool = True, unit: str = "it"
):
    """``iterable`` under a tqdm progress bar (``total`` items), or ``iterable`` itself when not ``enabled``;
    with a ``step_check`` in force, the check runs before each item."""
    bar = iterable
    if enabled:
        from tqdm.auto import tqdm

        bar = tqdm(iterable, total=total, desc=description, unit=unit, dynamic_ncols=True, leave=False)
    check = _STEP_CHECK.get()
    return bar if check is None else _checked(bar, check)


def _checked(items: Iterable, check: Callable[[], None]) -> Iterator:
    try:
        for item in items:
            check()
            yield item
    finally:
        if hasattr(items, "close"):
            items.close()  # the bar of a loop the check ended


@contextlib.contextmanager
def step_check(check: Callable[[], None]):
    """Within this block, call ``check`` before each item of every ``progress`` loop started in this context;
    an error it raises ends the loop (and propagates from it)."""
    token = _STEP_CHECK.set(check)
    try:
        yield
    finally:
        _STEP_CHECK.reset(token)
