"""Training through the bundle's run: both stages, sampling with their weights, resume after a kill, two ranks.

The stages run in this process as ``python -m monai.bundle run`` runs them; a kill and ``torchrun`` need processes
of their own. All on the training configs with their tiny overlays, a 24-subject synthetic data set, offline, CPU.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import signal
import subprocess
import time

import numpy as np
import pytest
import torch
from PIL import Image

from helpers.bundle import (
    BUNDLE_ROOT,
    INFERENCE_CONFIGS,
    TEST_CONFIGS,
    TINY_OVERLAYS,
    bundle_run_command,
    cli_env,
    run_bundle,
    run_config,
    stage_configs,
)
from helpers.data import make_prepared_synthetic
from helpers.networks import write_tiny_weights
from helpers.training import image_tags, scalar_series

HAS_MLFLOW_STORE = (
    importlib.util.find_spec("sqlalchemy") is not None and importlib.util.find_spec("alembic") is not None
)


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    return make_prepared_synthetic(tmp_path_factory.mktemp("train_data"), num_subjects=24, image_size=64)


@pytest.fixture(scope="module")
def text_encoder_dir(tmp_path_factory):
    return write_tiny_weights(tmp_path_factory.mktemp("train_tiny_models")) / "text_encoder"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, dataset_dir, text_encoder_dir):
    """Both stages trained by the CLI: the diffusion stage reads the autoencoder the first stage wrote."""
    root = tmp_path_factory.mktemp("two_stages")
    autoencoder_dir, diffusion_dir = root / "autoencoder", root / "diffusion"
    mlflow = {"use_mlflow": True, "mlflow_tracking_uri": f"sqlite:///{root}/mlruns.db"} if HAS_MLFLOW_STORE else {}
    run_config(
        stage_configs("autoencoder"),
        {"dataset_dir": dataset_dir, "train_dir": autoencoder_dir, "max_epochs": 5, **mlflow},
    )
    run_config(
        stage_configs("diffusion"),
        {
            "dataset_dir": dataset_dir,
            "train_dir": diffusion_dir,
            "autoencoder_path": autoencoder_dir / "autoencoder.pt",
            "text_encoder_source": text_encoder_dir,
            "max_epochs": 6,
        },
    )
    return {"root": root, "autoencoder": autoencoder_dir, "diffusion": diffusion_dir, "mlflow": bool(mlflow)}


def _first_and_last_epochs_mean(series, iterations_per_epoch, last_epochs=1):
    """Mean loss of the first epoch and of the ``last_epochs`` last epochs (single steps are noisy)."""
    values = [value for _, value in series]
    last = values[-iterations_per_epoch * last_epochs :]
    return sum(values[:iterations_per_epoch]) / iterations_per_epoch, sum(last) / len(last)


def test_autoencoder_stage_trains_and_keeps_best_weights(trained):
    series = scalar_series(trained["autoencoder"] / "logs", "l1_loss")
    assert len(series) == 5 * 6, "one L1 value per iteration: 5 epochs of 24 images in batches of 4"
    first, last = _first_and_last_epochs_mean(series, 6)
    # a broken loss (no gradient, wrong target) stays at the first value; this one must fall clearly
    assert last < 0.75 * first, f"L1 loss fell only from {first:.3f} to {last:.3f}"
    adversarial = [value for _, value in scalar_series(trained["autoencoder"] / "logs", "discriminator_loss")]
    assert all(v == 0 for v in adversarial[:6]) and all(v > 0 for v in adversarial[6:]), (
        "D starts in epoch 2 (tiny overlay)"
    )
    best = torch.load(trained["autoencoder"] / "autoencoder.pt", map_location="cpu", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in best.values()), "exported weights are a plain state dict"
    assert [p for p in os.listdir(trained["autoencoder"]) if "tmp" in p] == [], "no temporary files left"
    assert {"checkpoint_epoch=4.pt", "checkpoint_epoch=5.pt"} <= set(os.listdir(trained["autoencoder"]))
    assert len(scalar_series(trained["autoencoder"] / "logs", "val_ms_ssim")) == 5
    assert image_tags(trained["autoencoder"] / "logs"), "reconstructions are logged as images"


@pytest.mark.skipif(not HAS_MLFLOW_STORE, reason="MLflow's local sqlite store needs sqlalchemy and alembic")
def test_autoencoder_stage_logs_to_local_mlflow_store(trained):
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{trained['root']}/mlruns.db")
    experiment = client.get_experiment_by_name("cxr_ldm_autoencoder")
    runs = client.search_runs([experiment.experiment_id])
    history = client.get_metric_history(runs[0].info.run_id, "l1_loss")
    assert len(history) == 30 and {"val_l1", "val_ms_ssim"} <= set(runs[0].data.metrics)


def test_diffusion_stage_trains_on_the_first_stage_autoencoder(trained):
    series = scalar_series(trained["diffusion"] / "logs", "train_loss")
    assert len(series) == 6 * 6
    # random timesteps make single epochs noisy: average the last three
    first, last = _first_and_last_epochs_mean(series, 6, last_epochs=3)
    assert last < 0.75 * first, f"v-prediction loss fell only from {first:.3f} to {last:.3f}"
    assert len(scalar_series(trained["diffusion"] / "logs", "val_loss")) == 6
    assert "samples" in image_tags(trained["diffusion"] / "logs"), "guided samples are logged every 2 epochs"
    checkpoint = torch.load(trained["diffusion"] / "checkpoint_epoch=6.pt", map_location="cpu", weights_only=True)
    assert checkpoint["trainer"]["iteration"] == 6 * checkpoint["trainer"]["epoch_length"] == 36
    # the EMA copy is saved next to the trained weights and differs from them (decay 0.5 in the tiny overlay)
    name = next(iter(checkpoint["network"]))
    assert not torch.equal(checkpoint["network"][name], checkpoint["ema_network"][name])
    final = torch.load(trained["diffusion"] / "model_final.pt", map_location="cpu", weights_only=True)
    assert torch.equal(final[name], checkpoint["ema_network"][name]), "model_final.pt is the EMA UNet"


def test_trained_weights_sample_through_the_inference_config(trained, text_encoder_dir, tmp_path):
    from scripts.common.hashing import fingerprint

    files = [*INFERENCE_CONFIGS, *TINY_OVERLAYS]
    run_config(
        files,
        {
            "load_old": False,
            "autoencoder_path": trained["autoencoder"] / "autoencoder.pt",
            "diffusion_path": trained["diffusion"] / "model.pt",
            "text_encoder_source": text_encoder_dir,
            "output_dir": tmp_path / "samples",
            "num_samples": 2,
        },
    )
    images = sorted((tmp_path / "samples").glob("*.png"))
    assert len(images) == 2 and all(np.asarray(Image.open(path)).std() > 1 for path in images)
    with open(tmp_path / "samples" / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {row["diffusion_weights"] for row in rows} == {fingerprint(trained["diffusion"] / "model.pt")}
    assert {row["autoencoder_weights"] for row in rows} == {fingerprint(trained["autoencoder"] / "autoencoder.pt")}


def test_killed_run_resumes_from_its_last_checkpoint(dataset_dir, tmp_path):
    files = stage_configs("autoencoder")
    overrides = {"dataset_dir": dataset_dir, "train_dir": tmp_path, "max_epochs": 6, "val_interval": 10}
    first = subprocess.Popen(
        bundle_run_command(files, overrides),
        cwd=BUNDLE_ROOT,
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 180
        while not (tmp_path / "checkpoint_epoch=2.pt").exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.2)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    saved = sorted(p.name for p in tmp_path.glob("checkpoint_epoch=*.pt"))
    assert "checkpoint_epoch=2.pt" in saved and "checkpoint_epoch=6.pt" not in saved, saved
    resumed_from = max(int(name.split("=")[1].split(".")[0]) for name in saved)

    second = run_bundle(files, overrides)
    log = second.stdout + second.stderr
    assert f"Resuming training from '{tmp_path}/checkpoint_epoch={resumed_from}.pt'" in log
    assert f"Epoch: {resumed_from + 1}/6, Iter: 1/6" in log and "Epoch: 1/6," not in log
    final = torch.load(tmp_path / "checkpoint_epoch=6.pt", map_location="cpu", weights_only=True)
    assert final["trainer"]["iteration"] == 6 * final["trainer"]["epoch_length"] == 36
    assert final["g_optimizer"]["state"], "optimiser state is part of the checkpoint"
    assert "best_model_saver" in final, "the best score is part of the checkpoint"
    assert len(list(tmp_path.glob("checkpoint_epoch=*.pt"))) <= 2, "checkpoints_kept holds across a resume"


@pytest.mark.parametrize("stage", ["autoencoder", "diffusion"])
def test_multi_gpu_overlay_two_ranks_agree(stage, dataset_dir, text_encoder_dir, tmp_path):
    overrides = {"dataset_dir": dataset_dir, "train_dir": tmp_path, "max_epochs": 2}
    extra = [str(TEST_CONFIGS / "tiny_train_rank_weights.json")]
    if stage == "diffusion":
        write_tiny_weights(tmp_path / "stage1")
        overrides.update(
            autoencoder_path=tmp_path / "stage1" / "autoencoder.pt",
            text_encoder_source=text_encoder_dir,
            rank_weights_network="@diffusion_model",
            sample_interval=0,
        )
    port = 29561 if stage == "autoencoder" else 29562
    run_bundle(stage_configs(stage, multi_gpu=True, extra=tuple(extra)), overrides, torchrun_procs=2, master_port=port)
    rank0 = torch.load(tmp_path / "rank0_weights.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1_weights.pt", weights_only=True)
    assert rank0.keys() == rank1.keys()
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0), "DDP keeps the ranks' weights identical"
    # each rank trained on its half of the data: 24 images / 2 ranks / batch 4 = 3 iterations per epoch
    checkpoint = torch.load(tmp_path / "checkpoint_epoch=2.pt", map_location="cpu", weights_only=True)
    assert checkpoint["trainer"]["iteration"] == 6
    key = next(iter(rank0))
    trained_key = "autoencoder" if stage == "autoencoder" else "network"
    assert torch.equal(checkpoint[trained_key][key], rank0[key]), "rank 0 saved the weights all ranks hold"
    # equal because the gradients were averaged, not because nothing moved: the second epoch's optimiser steps
    # changed most tensors (each rank stepping alone on its own half would have moved them apart)
    first = torch.load(tmp_path / "checkpoint_epoch=1.pt", map_location="cpu", weights_only=True)[trained_key]
    moved = [k for k in rank0 if rank0[k].is_floating_point() and not torch.equal(first[k], rank0[k])]
    assert len(moved) > len(rank0) // 2, f"only {len(moved)} of {len(rank0)} tensors changed in epoch 2"
    assert not (tmp_path / "logs").exists() or len(os.listdir(tmp_path / "logs")) >= 1
