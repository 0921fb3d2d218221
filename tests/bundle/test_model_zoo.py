"""The bundle as MONAI's own tools and the model zoo read it: ``configs/inference.json`` alone is a complete inference
workflow with ``network_def``, each training config alone a complete training workflow, from any folder.

Tiny networks come in as command-line overrides of the standalone configs (no overlay file), as a user would
shrink them.
"""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow, verify_net_in_out

from helpers.bundle import BUNDLE_ROOT, CONFIGS, bundle_run_command, cli_env, read_png, run_inference, tiny_run_settings

META = str(CONFIGS / "metadata.json")
LOGGING = str(CONFIGS / "logging.conf")
#: the tiny networks of configs/tiny/inference.json as command-line overrides
TINY_NETWORKS = {
    "image_size": 64,
    "latent_shape": [3, 8, 8],
    "autoencoder_def#channels": [8, 16, 16, 16],
    "autoencoder_def#norm_num_groups": 8,
    "network_def#channels": [32, 64, 64],
    "network_def#num_head_channels": [0, 32, 64],
    "network_def#cross_attention_dim": 32,
}


def test_tiny_overrides_are_the_tiny_overlay():
    from monai.bundle import ConfigParser

    overlay = ConfigParser.load_config_file(str(CONFIGS / "tiny" / "inference.json"))
    assert {key: overlay[key] for key in TINY_NETWORKS} == TINY_NETWORKS


def test_inference_json_alone_is_a_complete_inference_workflow(tiny_model_dir, tmp_path):
    """ConfigWorkflow of configs/inference.json alone: no missing property, and running it writes the image the
    inference workflow with the tiny overlay writes."""
    settings = tiny_run_settings(tiny_model_dir, tmp_path / "alone", **TINY_NETWORKS)
    workflow = ConfigWorkflow(
        config_file=str(CONFIGS / "inference.json"),
        meta_file=META,
        logging_file=LOGGING,
        workflow_type="infer",
        num_inference_steps=3,
        autocast_dtype="float32",
        progress=False,
        **settings,
    )
    workflow.initialize()
    assert workflow.check_properties() == []
    assert isinstance(workflow.network_def, torch.nn.Module) and workflow.inferer is workflow.parser.get_parsed_content(
        "sampler"
    )
    workflow.run()
    workflow.finalize()
    (image,) = sorted((tmp_path / "alone").glob("*.png"))
    (reference,) = run_inference(tiny_model_dir, tmp_path / "overlay")
    assert image.name == reference.name
    np.testing.assert_array_equal(read_png(image), read_png(reference))


@pytest.mark.parametrize("stage", ["autoencoder", "diffusion"])
def test_each_training_config_alone_is_a_complete_training_workflow(
    stage, tiny_model_dir, prepared_synthetic_dir, tmp_path
):
    """ConfigWorkflow of a training config (with its tiny overlay): no missing or misnamed property, and the
    properties are the stage's own pieces."""
    overrides = {
        "dataset_dir": str(prepared_synthetic_dir),
        "bundle_root": str(BUNDLE_ROOT),
        "train_dir": str(tmp_path),
    }
    if stage == "diffusion":
        overrides.update(
            autoencoder_path=str(tiny_model_dir / "autoencoder.pt"),
            text_encoder_source=str(tiny_model_dir / "text_encoder"),
        )
    workflow = ConfigWorkflow(
        config_file=[str(CONFIGS / f"train_{stage}.json"), str(CONFIGS / "tiny" / f"train_{stage}.json")],
        meta_file=META,
        logging_file=LOGGING,
        workflow_type="train",
        **overrides,
    )
    workflow.initialize()
    assert workflow.check_properties() == []
    trainer = workflow.trainer
    assert trainer.state.max_epochs == workflow.max_epochs == 3
    assert len(workflow.train_dataset) == len(workflow.parser.get_parsed_content("train#datalist")) > 0
    trained = trainer.autoencoder if stage == "autoencoder" else trainer.network
    expected = "AutoencoderKL" if stage == "autoencoder" else "DiffusionModelUNet"
    assert type(trained).__name__ == expected


def test_the_card_command_runs_from_another_folder(tiny_model_dir, tmp_path):
    """``python -m monai.bundle run --config_file <bundle>/configs/inference.json --bundle_root <bundle>`` from an
    unrelated folder with the bundle on PYTHONPATH, as the model zoo's CI builds workflows: nothing depends on
    the current folder. The image is the one made in-process."""
    out = tmp_path / "out"
    overrides = tiny_run_settings(tiny_model_dir, out, num_inference_steps=3, autocast_dtype="float32", **TINY_NETWORKS)
    command = bundle_run_command([str(CONFIGS / "inference.json")], overrides)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = subprocess.run(command, cwd=elsewhere, env=cli_env(one_thread=False), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not list(elsewhere.iterdir()), "the run wrote into the current folder"
    (image,) = sorted(out.glob("*.png"))
    (reference,) = run_inference(tiny_model_dir, tmp_path / "reference")
    assert image.name == reference.name
    difference = np.abs(read_png(image).astype(int) - read_png(reference).astype(int))
    assert difference.max() <= 1, "more than float rounding apart"


def test_verify_net_in_out_passes_with_the_unets_timesteps_and_context():
    """MONAI's ``verify_net_in_out`` (the model zoo's shape check) builds ``network_def`` from configs/inference.json
    and the shapes from metadata.json's ``image`` input and ``pred`` output. The UNet also needs the timesteps
    and the text context: given as ``extra_forward_args`` it passes; without them (the zoo's command line) the
    forward call fails on the missing timesteps."""
    overrides = {key: value for key, value in TINY_NETWORKS.items() if key.startswith("network_def")}
    overrides["_meta_#network_data_format#inputs#image#spatial_shape"] = [8, 8]
    common = {"net_id": "network_def", "meta_file": META, "config_file": str(CONFIGS / "inference.json")}
    extra = {"timesteps": torch.tensor([500]), "context": torch.randn(1, 77, 32)}
    verify_net_in_out(**common, device="cpu", extra_forward_args=extra, bundle_root=str(BUNDLE_ROOT), **overrides)
    with pytest.raises(TypeError, match="timesteps"):
        verify_net_in_out(**common, device="cpu", bundle_root=str(BUNDLE_ROOT), **overrides)
    bad = {**overrides, "_meta_#network_data_format#outputs#pred#num_channels": 4}
    with pytest.raises(ValueError, match="output channel number"):
        verify_net_in_out(**common, device="cpu", extra_forward_args=extra, bundle_root=str(BUNDLE_ROOT), **bad)


def test_ckpt_export_finds_network_def_and_stops_at_the_single_input_trace(tiny_model_dir, tmp_path):
    """MONAI's ``ckpt_export`` reads ``network_def`` from configs/inference.json and loads the weights; its
    TorchScript trace passes one input tensor, and the UNet's forward needs three (docs/README.md, Export)."""
    from monai.bundle import ckpt_export

    overrides = {key: value for key, value in TINY_NETWORKS.items() if key.startswith("network_def")}
    with pytest.raises(TypeError, match="timesteps"):
        ckpt_export(
            net_id="network_def",
            filepath=str(tmp_path / "model.ts"),
            ckpt_file=str(tiny_model_dir / "model.pt"),
            meta_file=META,
            config_file=str(CONFIGS / "inference.json"),
            bundle_root=str(BUNDLE_ROOT),
            use_trace=True,
            input_shape=[1, 3, 8, 8],
            **overrides,
        )
    assert not (tmp_path / "model.ts").exists()
