"""The released architecture, and weights in the GenerativeModels layout (``load_old``) vs the native layout."""

from __future__ import annotations

import pytest
import torch

from helpers.bundle import run_inference, tiny_parser
from helpers.networks import randomize_zero_layers
from scripts.networks.weights import CheckpointError, load_weights


def _generative_twin(parser, key: str):
    """The same network from the frozen GenerativeModels package (the released checkpoints' classes)."""
    import generative.networks.nets as nets  # monai-generative is pinned in requirements-dev.txt

    config = {k: parser.get_parsed_content(f"{key}#{k}") for k in parser[key] if not k.startswith("_")}
    config["num_channels"] = config.pop("channels")
    config.pop("use_flash_attention", None)
    cls = nets.AutoencoderKL if key == "autoencoder_def" else nets.DiffusionModelUNet
    return cls(**config).eval()


def test_full_size_networks_have_the_released_parameter_counts():
    from monai.bundle import ConfigParser

    from helpers.bundle import INFERENCE_CONFIGS

    parser = ConfigParser()
    parser.read_config(list(INFERENCE_CONFIGS))
    autoencoder = parser.get_parsed_content("autoencoder_def")
    unet = parser.get_parsed_content("network_def")
    assert sum(p.numel() for p in autoencoder.parameters()) == 4_607_848
    assert sum(p.numel() for p in unet.parameters()) == 263_636_995
    z = autoencoder.encode_stage_2_inputs(torch.zeros(1, 1, 64, 64))
    assert z.shape == (1, 3, 8, 8)  # 8x downsampling: 512² -> 3x64x64


@pytest.mark.parametrize("size", ["tiny", "full"])
def test_generativemodels_checkpoints_load_with_load_old(size, tmp_path):
    """A checkpoint written by the GenerativeModels classes loads with load_old and computes the same."""
    from monai.bundle import ConfigParser

    from helpers.bundle import INFERENCE_CONFIGS

    if size == "tiny":
        parser = tiny_parser()
    else:
        parser = ConfigParser()
        parser.read_config(list(INFERENCE_CONFIGS))
    torch.manual_seed(0)
    old_autoencoder = _generative_twin(parser, "autoencoder_def")
    old_unet = randomize_zero_layers(_generative_twin(parser, "network_def"))
    torch.save(old_autoencoder.state_dict(), tmp_path / "autoencoder.pt")
    torch.save(old_unet.state_dict(), tmp_path / "model.pt")

    autoencoder = load_weights(parser.get_parsed_content("autoencoder_def"), tmp_path / "autoencoder.pt", load_old=True)
    unet = load_weights(parser.get_parsed_content("network_def"), tmp_path / "model.pt", load_old=True)
    assert not autoencoder.training and not unet.training

    latent = torch.randn(1, 3, 8, 8)
    context = torch.randn(1, 77, parser["network_def"]["cross_attention_dim"])
    timesteps = torch.tensor([500])
    with torch.no_grad():
        torch.testing.assert_close(autoencoder.decode(latent), old_autoencoder.decode(latent), rtol=1e-5, atol=1e-5)
        expected = old_unet(latent, timesteps=timesteps, context=context)
        torch.testing.assert_close(unet(latent, timesteps=timesteps, context=context), expected, rtol=1e-4, atol=1e-4)

    # Without load_old the renamed keys do not fit: a clear error that names the file and the fix.
    with pytest.raises(CheckpointError, match=r"model\.pt' does not fit DiffusionModelUNet.*load_old True"):
        load_weights(parser.get_parsed_content("network_def"), tmp_path / "model.pt", load_old=False)

    # Saved natively, the converted weights load with load_old False and compute the same.
    torch.save(unet.state_dict(), tmp_path / "native.pt")
    native = load_weights(parser.get_parsed_content("network_def"), tmp_path / "native.pt", load_old=False)
    with torch.no_grad():
        torch.testing.assert_close(native(latent, timesteps=timesteps, context=context), expected, rtol=1e-4, atol=1e-4)


def test_load_old_key_switches_layout_in_the_workflow(tiny_model_dir, tmp_path):
    """--load_old True on GenerativeModels files gives the images of the same weights stored natively."""
    parser = tiny_parser()
    old_dir = tmp_path / "old"
    old_dir.mkdir()
    torch.manual_seed(0)
    old_autoencoder = _generative_twin(parser, "autoencoder_def")
    old_unet = randomize_zero_layers(_generative_twin(parser, "network_def"))
    torch.save(old_autoencoder.state_dict(), old_dir / "autoencoder.pt")
    torch.save(old_unet.state_dict(), old_dir / "model.pt")
    new_dir = tmp_path / "new"
    new_dir.mkdir()
    for name, key in (("autoencoder.pt", "autoencoder_def"), ("model.pt", "network_def")):
        network = load_weights(parser.get_parsed_content(key), old_dir / name, load_old=True)
        torch.save(network.state_dict(), new_dir / name)

    encoder = str(tiny_model_dir / "text_encoder")
    old_images = run_inference(
        old_dir, tmp_path / "out_old", load_old=True, text_encoder_source=encoder, output_format="pt"
    )
    new_images = run_inference(
        new_dir, tmp_path / "out_new", load_old=False, text_encoder_source=encoder, output_format="pt"
    )
    a, b = (torch.load(p[0], weights_only=True) for p in (old_images, new_images))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    with pytest.raises(Exception, match="Failed to evaluate"):
        run_inference(old_dir, tmp_path / "out_wrong", load_old=False, text_encoder_source=encoder)
    assert not (tmp_path / "out_wrong").exists()


def test_corrupted_wrong_and_unsafe_files_give_clear_errors(tmp_path):
    parser = tiny_parser()
    autoencoder = parser.get_parsed_content("autoencoder_def")
    (tmp_path / "truncated.pt").write_bytes(b"PK\x03\x04 not really a checkpoint")
    with pytest.raises(CheckpointError, match=r"truncated\.pt' could not be read"):
        load_weights(autoencoder, tmp_path / "truncated.pt")
    with pytest.raises(CheckpointError, match=r"absent\.pt' not found: run `python -m scripts.distribution.download`"):
        load_weights(autoencoder, tmp_path / "absent.pt")
    # Weights of another architecture: the message names the file and what differs.
    torch.save(parser.get_parsed_content("network_def").state_dict(), tmp_path / "unet.pt")
    with pytest.raises(CheckpointError, match=r"unet\.pt' does not fit AutoencoderKL as configured \(.*missing"):
        load_weights(autoencoder, tmp_path / "unet.pt")

    # Pickles that would run code are refused (weights_only=True).
    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"weights": Payload()}, tmp_path / "unsafe.pt")
    with pytest.raises(CheckpointError, match="could not be read"):
        load_weights(autoencoder, tmp_path / "unsafe.pt")
    # Training checkpoints: name the entry that holds the weights.
    torch.save({"autoencoder": autoencoder.state_dict(), "epoch": torch.tensor(3)}, tmp_path / "checkpoint.pt")
    assert load_weights(parser.get_parsed_content("autoencoder_def"), tmp_path / "checkpoint.pt", key="autoencoder")
    with pytest.raises(CheckpointError, match="does not hold a state dict"):
        load_weights(autoencoder, tmp_path / "checkpoint.pt")


@pytest.mark.parametrize("key", ["autoencoder_def", "network_def"])
@pytest.mark.parametrize("load_old", [True, False])
def test_a_file_lacking_tensors_is_refused_in_both_layouts(key, load_old, tmp_path):
    """A checkpoint without some tensor never loads: those tensors would keep their random values."""
    parser = tiny_parser()
    torch.manual_seed(0)
    source = _generative_twin(parser, key) if load_old else parser.get_parsed_content(key)
    state = source.state_dict()
    # a tensor that keeps its name in both layouts (the last convolution)
    del state[[k for k in state if k.endswith("weight") and "conv" in k][-1]]
    torch.save(state, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match=r"partial\.pt' (lacks \d+ tensors|does not fit)"):
        load_weights(parser.get_parsed_content(key), tmp_path / "partial.pt", load_old=load_old)
