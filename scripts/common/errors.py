"""The bundle's error base class, and the hook that makes its one-line messages the last line users see.

``python -m monai.bundle run`` evaluates config expressions inside MONAI, which re-raises every error as
``RuntimeError: Failed to evaluate ConfigExpression(...)`` (or ``Failed to instantiate``) with the real
error as its ``__cause__``. Python then prints the wrapper last, so the line a user reads is a fragment of
config text. ``excepthook`` prints the whole traceback as before, then repeats the root cause's one-line
message so that it is the last line.
"""

from __future__ import annotations

import sys
import traceback


class CxrLdmError(Exception):
    """Base class of the errors this bundle raises for bad input; the message names the problem and the fix."""


def root_cause(error: BaseException) -> BaseException:
    """The innermost exception of ``error``'s ``raise ... from`` chain."""
    seen = set()
    while error.__cause__ is not None and id(error) not in seen:
        seen.add(id(error))
        error = error.__cause__
    return error


def one_line(error: BaseException) -> str:
    """``"TypeName: message"`` of ``error`` on one line (the form Python prints last)."""
    message = " ".join(str(error).split())
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def excepthook(exc_type, exc_value, exc_traceback, *, file=None) -> None:
    """``sys.excepthook``: the usual traceback, then the root cause's message when another error wraps it."""
    stream = sys.stderr if file is None else file
    traceback.print_exception(exc_type, exc_value, exc_traceback, file=stream)
    if exc_value is None:
        return
    cause = root_cause(exc_value)
    if cause is not exc_value:
        print(one_line(cause), file=stream)
    stream.flush()


def install_excepthook() -> None:
    """Make ``excepthook`` the interpreter's hook (idempotent; leaves a hook set by someone else alone)."""
    if sys.excepthook is sys.__excepthook__:
        sys.excepthook = excepthook
