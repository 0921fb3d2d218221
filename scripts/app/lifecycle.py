"""The app as a service: what a supervisor checks (``GET /health``), and a clean stop on SIGTERM or SIGINT.

``docker stop``, systemd and Kubernetes send SIGTERM; Ctrl-C in a terminal sends SIGINT. Both stop the app
the same way (``serve_until_stopped``):

1. requests that arrive or wait in the queue are refused with a one-line message, which the page shows;
2. the running request stops at its next denoising step (``scripts.common.progress.step_check``) with the
   same message;
3. once nothing runs or waits, the server closes, the app's temporary folder is removed, and the command
   exits with status 0.

The wait lasts at most ``stop_timeout_s`` seconds (below ``docker stop``'s 10 s by default); a second signal
ends it at once. A request that reaches no denoising step by then (a first ``torch.compile``, say) is
abandoned: the temporary folder is still removed and the process ends with status 0.

``/health`` answers 200 with ``{"status": "ok", "running": r, "waiting": w}`` while the app takes requests and
503 with ``"status": "stopping"`` once it stops; it needs no login, and tells nothing about what is generated.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable

from scripts.common.errors import CxrLdmError
from scripts.common.progress import step_check

logger = logging.getLogger(__name__)

#: the signals that stop the app cleanly
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
#: path of the health check
HEALTH_PATH = "/health"
#: seconds left to the server to deliver the refusals of a stop before it closes
DELIVERY_S = 1.0


class AppStoppingError(CxrLdmError, RuntimeError):
    """A request refused or stopped because the app is stopping."""


class ServiceState:
    """What the app is doing: how many requests run, whether it stops and on which signal. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running = 0
        self._stopping = False
        self.refused = 0
        self.stop_reason: str | None = None
        self.stop_requests = 0
        self.stop_requested = threading.Event()

    @property
    def running(self) -> int:
        """Requests running now."""
        return self._running

    @property
    def stopping(self) -> bool:
        """Whether the app refuses requests (``begin_stop`` was called)."""
        return self._stopping

    def request_stop(self, reason: str) -> None:
        """Ask the app to stop (a signal handler: only sets flags); ``reason`` names the signal."""
        self.stop_requests += 1
        self.stop_reason = self.stop_reason or reason
        self.stop_requested.set()

    def begin_stop(self) -> None:
        """From now on, refuse requests and stop the running one at its next step."""
        self._stopping = True

    def refuse_if_stopping(self) -> None:
        """``AppStoppingError`` once the app stops: the check before each step of a running request."""
        if self._stopping:
            self.refused += 1
            raise AppStoppingError(
                f"The app is stopping ({self.stop_reason or 'asked to quit'}): this request was not finished; "
                "send it again once the app is back."
            )

    @contextlib.contextmanager
    def request(self):
        """One request of the page: refused when the app stops, counted while it runs, and stopped at its next
        progress step (denoising step) when the app begins to stop."""
        with self._lock:
            self.refuse_if_stopping()
            self._running += 1
        try:
            with step_check(self.refuse_if_stopping):
                yield
        finally:
            with self._lock:
                self._running -= 1

    def health(self, waiting: int) -> tuple[int, dict]:
        """(HTTP status, body) of ``/health`` with ``waiting`` requests in the queue."""
        status = "stopping" if self._stopping else "ok"
        return (503 if self._stopping else 200), {"status": status, "running": self._running, "waiting": waiting}


def waiting_requests(app) -> int:
    """Requests waiting in the Gradio queue of ``app`` (not those running)."""
    queue = getattr(app, "_queue", None)
    return len(queue) if queue is not None else 0


def health_route(app, state: ServiceState):
    """The ``GET /health`` route of the Gradio ``app`` (``state.health`` as JSON, no login), for the web app's
    routes at launch (``app_kwargs={"routes": [...]}``): it answers as soon as the server does."""
    from fastapi.responses import JSONResponse
    from fastapi.routing import APIRoute

    def health():
        status, body = state.health(waiting_requests(app))
        return JSONResponse(body, status_code=status)

    return APIRoute(HEALTH_PATH, health, methods=["GET"])


@contextlib.contextmanager
def stop_signals(state: ServiceState):
    """Within this block (main thread only), SIGTERM and SIGINT ask ``state`` to stop instead of ending the
    process at once; the previous handlers come back after it."""

    def on_signal(number, frame) -> None:
        state.request_stop(signal.Signals(number).name)

    previous = {number: signal.signal(number, on_signal) for number in STOP_SIGNALS}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def drain(state: ServiceState, waiting: Callable[[], int], timeout_s: float) -> bool:
    """Stop taking requests, then wait until none runs or waits: at most ``timeout_s`` seconds, and not past
    another stop request. Whether the app is idle."""
    state.begin_stop()
    deadline = time.monotonic() + float(timeout_s)
    requests = state.stop_requests
    while state.running or waiting():
        if time.monotonic() >= deadline or state.stop_requests > requests:
            return False
        time.sleep(0.05)
    return True


def close_share_links() -> None:
    """End the tunnels of ``--share`` links (Gradio ends them itself only on a Ctrl-C it catches)."""
    from gradio.tunneling import CURRENT_TUNNELS

    for tunnel in list(CURRENT_TUNNELS):
        tunnel.kill()


def serve_until_stopped(app, folders, state: ServiceState, stop_timeout_s: float) -> None:
    """Serve until ``state`` is asked to stop (``stop_signals``), then stop as the module docstring says."""
    while not state.stop_requested.wait(0.5):
        pass
    logger.info(
        "%s: stopping; requests in the queue are refused and the running one ends at its next step (at most %g s).",
        state.stop_reason,
        float(stop_timeout_s),
    )
    idle = drain(state, lambda: waiting_requests(app), stop_timeout_s)
    if idle and state.refused:
        time.sleep(DELIVERY_S)  # the refusals reach their pages before the server closes
    app.close(verbose=False)
    close_share_links()
    folders.close()
    if not idle and state.running:
        logger.info("A request was still running after %g s: abandoned. Temporary files removed.", stop_timeout_s)
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os._exit(0)  # the abandoned request's thread would keep the interpreter alive
    logger.info("Stopped; temporary files removed.")
