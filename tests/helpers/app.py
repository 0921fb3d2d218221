"""The interactive app as its command starts it, for the app's tests: tiny networks, a free port, its log."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import torch

from .bundle import BUNDLE_ROOT, INFERENCE_CONFIGS, TINY_OVERLAYS, bundle_run_command, cli_env

#: the app is an overlay of inference and edit
APP_CONFIGS = (str(BUNDLE_ROOT / "configs" / "edit.json"), str(BUNDLE_ROOT / "configs" / "app.json"))
CHROMIUM = "/usr/bin/chromium"
#: upper bound on waiting for the app to start or answer (a guard against hanging, not a speed check)
WAIT_S = 180


def free_port() -> int:
    """A TCP port free on this machine now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_app(model_dir: Path, temporary: Path, **overrides) -> tuple[subprocess.Popen, str, Path]:
    """Start the app (edit.json and app.json after the inference config and the tiny overlay, the weights of
    ``model_dir``) on a free port with ``overrides``, its temporary files in ``temporary``; wait until it answers.

    Returns the process, the app's URL (``http://127.0.0.1:<port>/``) and its log file.
    """
    port = free_port()
    settings = {
        "bundle_root": str(BUNDLE_ROOT),
        "model_dir": str(model_dir),
        "load_old": False,
        "text_encoder_source": str(Path(model_dir) / "text_encoder"),
        "port": port,
        **overrides,
    }
    command = bundle_run_command([*INFERENCE_CONFIGS, *TINY_OVERLAYS, *APP_CONFIGS], settings)
    # as many threads as the tests' process, whose in-process command-line runs are the reference: float
    # results then agree to the bit
    env = {**cli_env(one_thread=False), "OMP_NUM_THREADS": str(torch.get_num_threads()), "TMPDIR": str(temporary)}
    log = Path(temporary) / "app.log"
    with open(log, "w") as output:
        process = subprocess.Popen(command, cwd=BUNDLE_ROOT, env=env, stdout=output, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + WAIT_S
    while True:
        if process.poll() is not None:
            raise AssertionError(f"the app exited ({process.returncode}):\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=30):
                return process, url, log
        except OSError:
            if time.monotonic() > deadline:
                process.kill()
                raise AssertionError(f"the app did not answer within {WAIT_S} s:\n{log.read_text()[-4000:]}") from None
            time.sleep(0.5)
