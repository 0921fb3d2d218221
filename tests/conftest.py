"""Session settings and shared fixtures: offline hubs, two threads, tiny weights, the bundle's tokenizer.

Helpers live in ``tests/helpers`` (imported as ``helpers.<module>``); this file holds only fixtures.
Nothing here downloads: the tiny networks are built from the bundle's configs with the overlay
``configs/tiny/inference.json`` and random weights. Nothing writes to the user's cache folder: the CPU
precision probe caches in a temporary file (its own tests point it at their own).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# OpenMP threads that wait by spinning hold a core another process (a worker, a rank, a server the test started)
# needs: on 2 cores shared that way, steps were measured 5-8x slower. Set before torch loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

#: pytest-xdist workers share the cores: each takes its part of them
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // WORKERS)))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """Folder with tiny ``autoencoder.pt``, ``model.pt`` (new layout) and ``text_encoder/``."""
    from helpers.networks import write_tiny_weights

    return write_tiny_weights(tmp_path_factory.mktemp("tiny_models"))


@pytest.fixture(scope="session")
def tokenizer():
    from helpers.bundle import TOKENIZER_DIR
    from scripts.networks.text import load_tokenizer

    return load_tokenizer(TOKENIZER_DIR)


@pytest.fixture(scope="session")
def prepared_synthetic_dir(tmp_path_factory) -> Path:
    """20 synthetic subjects at 64 px, prepared like MIMIC-CXR (``helpers.data.make_prepared_synthetic``)."""
    from helpers.data import make_prepared_synthetic

    return make_prepared_synthetic(tmp_path_factory.mktemp("prepared_synthetic"))


@pytest.fixture(scope="session", autouse=True)
def precision_probe_cache(tmp_path_factory) -> Iterator[Path]:
    """The session's precision probe cache file, instead of ``~/.cache/cxr-ldm/precision_probe.json``; set in
    the environment, so command-line runs started by tests use it too."""
    from scripts.networks.precision import PRECISION_PROBE_CACHE_ENV

    path = tmp_path_factory.mktemp("precision_probe") / "precision_probe.json"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(PRECISION_PROBE_CACHE_ENV, str(path))
        yield path


@pytest.fixture(scope="session")
def hostile_inputs(tmp_path_factory) -> dict:
    """Unreadable, truncated and oversized uploads (``helpers.editing.write_hostile_inputs``): file name -> (path,
    what the bundle's message must say)."""
    from helpers.editing import write_hostile_inputs

    return write_hostile_inputs(tmp_path_factory.mktemp("hostile"))
