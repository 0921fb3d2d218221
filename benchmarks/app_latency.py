"""Time to first image of the interactive app at full size: start the app by its README command on random
full-size weights, then time one generation with the page's defaults through Gradio's API.

Random weights are written once to ``weights_dir`` (the autoencoder and UNet of configs/inference.json, an
SD-2.1-shaped text encoder: ~1.4 GB). Reported: seconds from the command to the page answering (imports and
loading the networks) and seconds of the first generation (20 UniPC steps, guidance 7, one 512² image).

    python -m benchmarks.app_latency --weights_dir models/app_latency --compile false
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

BUNDLE_ROOT = Path(__file__).resolve().parents[1]


def write_random_weights(weights_dir: Path, config_files=None) -> Path:
    """Random autoencoder.pt, model.pt (this bundle's layout) and text_encoder/ in ``weights_dir``, of the networks of
    ``config_files`` (default: configs/inference.json, full size); kept when already there."""
    import torch

    from benchmarks.sampling_benchmark import random_text_encoder
    from scripts.common.configs import INFERENCE_CONFIGS, load_parser
    from scripts.networks.weights import fill_zero_initialised

    weights_dir.mkdir(parents=True, exist_ok=True)
    if (weights_dir / "model.pt").is_file() and (weights_dir / "text_encoder").is_dir():
        return weights_dir
    parser = load_parser(config_files or INFERENCE_CONFIGS)
    torch.manual_seed(0)
    torch.save(parser.get_parsed_content("autoencoder_def").state_dict(), weights_dir / "autoencoder.pt")
    unet = fill_zero_initialised(parser.get_parsed_content("network_def"))
    torch.save(unet.state_dict(), weights_dir / "model.pt")
    random_text_encoder(int(parser["network_def"]["cross_attention_dim"])).save_pretrained(weights_dir / "text_encoder")
    return weights_dir


def main(weights_dir: str = "models/app_latency", compile: str = "false", device: str = "cpu") -> dict:
    from gradio_client import Client

    weights = write_random_weights(Path(weights_dir).resolve())
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = "['configs/inference.json','configs/edit.json','configs/app.json']"
    overrides = {"port": port, "model_dir": weights, "load_old": False, "text_encoder_source": weights / "text_encoder",
                 "compile": compile, "device": device}  # fmt: skip
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config]
    command += [word for key, value in overrides.items() for word in (f"--{key}", str(value))]
    url = f"http://127.0.0.1:{port}/"
    started = time.perf_counter()
    app = subprocess.Popen(command, cwd=BUNDLE_ROOT, env={**os.environ, "PYTHONPATH": str(BUNDLE_ROOT)})
    try:
        while True:
            if app.poll() is not None:
                raise RuntimeError(f"the app exited with {app.returncode}")
            try:
                urllib.request.urlopen(url, timeout=5).read()
                break
            except OSError:
                time.sleep(1)
        ready = time.perf_counter() - started
        client = Client(url, verbose=False)
        generation_started = time.perf_counter()
        client.predict("Big right-sided pleural effusion", "", 1, 42, 20, 7.0, "unipc_karras", api_name="/generate")
        first_image = time.perf_counter() - generation_started
    finally:
        app.send_signal(signal.SIGINT)
        app.wait(timeout=60)
    result = {"app_ready_s": round(ready, 1), "first_image_s": round(first_image, 1), "compile": compile,
              "device": device, "torch_threads": os.environ.get("OMP_NUM_THREADS", "default")}  # fmt: skip
    return result


if __name__ == "__main__":
    import fire

    fire.Fire(main)
