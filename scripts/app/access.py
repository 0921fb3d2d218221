"""Who may use the app: its logins (``--auth``), and the refusal to serve a network without one.

On 127.0.0.1 (the default) only people logged in to this machine reach the app. Any other ``--host`` (``0.0.0.0``,
a network address or name) or a public ``--share`` link opens it to every machine that can reach it, where
anyone could run the model and read what others generated: the app then needs ``--auth`` (Gradio's login page),
unless ``--allow_unauthenticated true`` says that is intended (a network that is itself access-controlled).

``--auth`` takes ``user:password``, several of them (``"alice:pw1,bob:pw2"``), or a file with one
``user:password`` per line (blank lines and lines starting with ``#`` are skipped); a file keeps passwords out
of the shell's history and the process list.
"""

from __future__ import annotations

import ipaddress
import os

from scripts.sampling.settings import SettingsError


class AppAccessError(SettingsError):
    """App access settings that cannot be used (the message names the setting and the fix)."""


def as_bool(value, what: str) -> bool:
    """``value`` as a switch: a bool, or the words true/false, yes/no, 1/0 (what the command line passes)."""
    if isinstance(value, bool):
        return value
    words = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
    if str(value).strip().lower() not in words:
        raise SettingsError(f"{what} must be true or false, got {value!r}.")
    return words[str(value).strip().lower()]


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine only: ``localhost`` or a loopback address (127.0.0.0/8, ::1)."""
    host = str(host).strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: whatever it resolves to, it may be reachable from elsewhere


def read_auth(auth) -> list[tuple[str, str]] | None:
    """Gradio's ``auth`` (a list of (user, password)) from ``--auth``; None when there is no login.

    ``auth``: None or "" (no login), ``"user:password"``, several such entries (a list, a tuple, or one string
    separated by commas), or the path of a file of ``user:password`` lines.
    """
    if auth is None or (isinstance(auth, str) and not auth.strip()):
        return None
    if isinstance(auth, str) and os.path.isfile(auth):
        return _logins_of_file(auth)
    entries = [str(entry) for entry in auth] if isinstance(auth, (list, tuple)) else str(auth).split(",")
    logins = []
    for number, entry in enumerate(entries, start=1):
        login = _login(entry)
        if login is None:
            raise AppAccessError(
                f"--auth entry {number} is neither user:password nor an existing file: give --auth user:password, "
                "or the path of a file with one user:password per line."
            )
        logins.append(login)
    return logins


def _logins_of_file(path: str) -> list[tuple[str, str]]:
    logins = []
    with open(path, encoding="utf-8") as file:
        for number, line in enumerate(file, start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            login = _login(line.rstrip("\r\n"))
            if login is None:  # the line itself is not shown: it may hold a password
                raise AppAccessError(f"--auth: line {number} of '{path}' is not user:password; fix or remove it.")
            logins.append(login)
    if not logins:
        raise AppAccessError(f"--auth: '{path}' holds no user:password line; add one per user.")
    return logins


def _login(entry: str) -> tuple[str, str] | None:
    """(user, password) of ``user:password`` (the password may hold ':'), None when either part is empty."""
    user, separator, password = entry.partition(":")
    if not separator or not user.strip() or not password:
        return None
    return user.strip(), password


def check_access(host: str, share, auth, allow_unauthenticated) -> list[tuple[str, str]] | None:
    """The app's logins (``read_auth``), after refusing to open it to a network without one.

    Raises ``AppAccessError`` (one line saying why and what to add) when ``host`` is not loopback or ``share``
    is on, there is no ``auth``, and ``allow_unauthenticated`` is not true.
    """
    logins = read_auth(auth)
    if logins or as_bool(allow_unauthenticated, "--allow_unauthenticated"):
        return logins
    if as_bool(share, "--share"):
        exposure = "--share true publishes the app on a public link"
    elif not is_loopback(host):
        exposure = f"--host {host} opens the app to every machine that can reach this one"
    else:
        return None
    raise AppAccessError(
        f"{exposure}, where anyone could use it without logging in: add --auth user:password (or a file of "
        "user:password lines), or --allow_unauthenticated true if everyone there may use it."
    )
