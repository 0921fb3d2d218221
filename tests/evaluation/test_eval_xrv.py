"""torchxrayvision loading and input protocols (scripts.evaluation.xrv).

On the real architecture with random weights.
"""

from __future__ import annotations

import pytest
import torch

from helpers.evaluation import InputRecorder, random_densenet_file, smooth_images
from scripts.common.hashing import file_digest
from scripts.evaluation import xrv


@pytest.fixture(scope="module")
def densenet():
    torch.manual_seed(0)
    return xrv.load_densenet(None)


def test_xrv_protocol_maps_unit_range_to_plus_minus_1024_at_224_px():
    images = torch.zeros(2, 1, 300, 256)
    images[0] = 1.0
    images[1, :, :, 128:] = 1.0  # right half white: the centre crop keeps both halves
    x = xrv.to_network_input(images, "xrv")
    assert x.shape == (2, 1, 224, 224)
    assert x[0].min() == 1024 and x[0].max() == 1024
    assert x[1, 0, :, :100].max() == -1024 and x[1, 0, :, 124:].min() == 1024
    rgb = xrv.to_network_input(torch.full((1, 3, 64, 64), 0.5), "xrv")
    assert rgb.shape == (1, 1, 224, 224) and torch.allclose(rgb, torch.zeros_like(rgb), atol=1e-3)  # on the ±1024 scale


def test_reference_protocol_keeps_size_and_scales_only_generated_images():
    images = smooth_images(2, size=96)
    real = xrv.to_network_input(images, "reference", role="real")
    generated = xrv.to_network_input(images, "reference", role="generated")
    assert real.shape == generated.shape == (2, 1, 96, 96)
    assert torch.equal(real, images) and torch.allclose(generated, images * 255, atol=1e-4)
    with pytest.raises(ValueError, match="Unknown torchxrayvision input protocol 'inception'"):
        xrv.to_network_input(images, "inception")


def test_the_xrv_protocol_is_what_reaches_the_network(densenet):
    recorder = InputRecorder(densenet)
    try:
        features = xrv.image_features(densenet, smooth_images(2, size=64, seed=1), "xrv")
        probabilities = xrv.pathology_probabilities(densenet, smooth_images(1, size=64, seed=2))
        xrv.image_features(densenet, smooth_images(1, size=64, seed=3), "reference", role="generated")
    finally:
        recorder.close()
    first, second, third = recorder.inputs
    for seen in (first, second):
        assert seen.shape[1:] == (1, 224, 224)
        assert seen.min() >= -1024 and seen.max() <= 1024
        assert seen.max() - seen.min() > 1000  # the [0, 1] contrast was stretched, not left in [0, 1]
    assert third.shape[1:] == (1, 64, 64) and 1.5 < third.max() <= 255
    assert features.shape == (2, xrv.FEATURE_DIM) and (features >= 0).all()  # ReLU before pooling
    assert probabilities.shape == (1, 18) and ((probabilities >= 0) & (probabilities <= 1)).all()
    assert len(densenet.pathologies) == 18 and densenet.pathologies[7] == "Effusion"
    assert densenet.random_weights and "random" in densenet.weights_source


def test_missing_weights_name_the_file_and_the_download_command(tmp_path):
    missing = tmp_path / "xrv" / "densenet121-res224-all.pt"
    with pytest.raises(
        xrv.XrvWeightsError, match=r"densenet121-res224-all\.pt.*python -m scripts\.distribution\.download"
    ):
        xrv.load_densenet(str(missing))


def test_weights_load_from_a_state_dict_and_from_a_hash_checked_module_pickle(tmp_path):
    path = random_densenet_file(tmp_path / "state.pt", seed=3)
    expected = torch.load(path, weights_only=True)["classifier.weight"]
    loaded = xrv.load_densenet(str(path))
    assert torch.equal(loaded.classifier.weight, expected) and not loaded.random_weights
    assert not loaded.training

    # torchxrayvision's release file is a whole pickled module: only unpickled when its SHA-256 matches
    module_file = tmp_path / "module.pt"
    torch.save(loaded, module_file)
    with pytest.raises(xrv.XrvWeightsError, match="neither a plain state dict nor the official"):
        xrv.load_densenet(str(module_file))
    trusted = xrv.load_densenet(str(module_file), sha256=file_digest(str(module_file)))
    assert torch.equal(trusted.classifier.weight, expected)

    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(xrv.XrvWeightsError, match="garbage.pt"):
        xrv.load_densenet(str(tmp_path / "garbage.pt"))
