"""The decoder's precision (``decode_dtype``): bf16 decoding runs in bf16, stays within its stated tolerance of the
float32 decoder on the same latents, names its images apart, and ``auto`` follows the machine like the UNet's."""

from __future__ import annotations

import pytest
import torch

from helpers.bundle import tiny_parser
from helpers.networks import tiny_sampling_parts

#: bf16 decoder against float32 on the same latents (tiny random networks, images in [0, 1]); measured
#: 0.0032 / 0.023 / 0.070 (docs/performance.md gives the parity model's figures)
MEAN_ABS, P99, MAX_ABS = 0.01, 0.05, 0.2


@pytest.fixture(scope="module")
def parts(tokenizer):
    return tiny_sampling_parts(tokenizer, latents=torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0)))


def _sampler(parts, decode_dtype):
    from scripts.networks.schedulers import build_scheduler
    from scripts.sampling.sampler import GuidedLatentSampler

    return GuidedLatentSampler(
        autoencoder=parts["autoencoder"],
        text_encoder=parts["text_encoder"],
        tokenizer=parts["tokenizer"],
        scheduler=build_scheduler("pcm", **parts["parser"].get_parsed_content("noise_schedule")),
        num_inference_steps=4,
        guidance_scale=1.0,
        latent_shape=parts["parser"]["latent_shape"],
        progress=False,
        decode_dtype=decode_dtype,
    )


def _decode_with_dtypes(parts, sampler):
    """Images of the shared latents, and the dtypes the decoder's convolutions computed in."""
    dtypes = []
    convolutions = [m for m in parts["autoencoder"].decoder.modules() if isinstance(m, torch.nn.Conv2d)]
    handles = [m.register_forward_hook(lambda module, args, output: dtypes.append(output.dtype)) for m in convolutions]
    try:
        with torch.inference_mode():
            images = sampler.decode(parts["latents"])
    finally:
        for handle in handles:
            handle.remove()
    return images, set(dtypes)


def test_bf16_decoder_runs_in_bf16_within_its_tolerance_of_float32(parts):
    reference, reference_dtypes = _decode_with_dtypes(parts, _sampler(parts, "float32"))
    images, dtypes = _decode_with_dtypes(parts, _sampler(parts, "bfloat16"))
    assert reference_dtypes == {torch.float32} and dtypes == {torch.bfloat16}, "each decoder took its own path"
    assert images.dtype == torch.float32 and 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    difference = (images - reference).abs()
    assert 0 < float(difference.mean()) <= MEAN_ABS, float(difference.mean())
    assert float(difference.flatten().quantile(0.99)) <= P99
    assert float(difference.max()) <= MAX_ABS


def test_decode_dtype_is_in_the_identity_and_bad_values_fail_in_one_line(parts):
    assert _sampler(parts, None).identity()["decode_dtype"] == "float32"
    assert _sampler(parts, "bf16").identity()["decode_dtype"] == "bfloat16"
    with pytest.raises(ValueError, match="decode_dtype: autocast_dtype must be one of") as info:
        _sampler(parts, "int8")
    assert len(str(info.value).splitlines()) == 1


@pytest.mark.parametrize("native, expected", [(True, "bfloat16"), (False, "float32")], ids=["amx", "probe-says-no"])
def test_auto_decodes_in_bf16_where_the_unets_auto_would(tiny_model_dir, tmp_path, monkeypatch, native, expected):
    import scripts.networks.precision as precision
    from helpers.bundle import tiny_run_settings

    monkeypatch.setattr(precision, "bf16_native", lambda device: native)
    monkeypatch.setattr(
        precision,
        "cpu_probe",
        lambda: {"float32_ms": 1.0, "bfloat16_ms": 2.0, "cached": True, "cache_file": "probe.json"},
    )
    parser = tiny_parser(**tiny_run_settings(tiny_model_dir, tmp_path / "out", decode_dtype="auto"))
    assert parser.get_parsed_content("sampler").decode_precision == expected
    default = tiny_parser(**tiny_run_settings(tiny_model_dir, tmp_path / "out"))
    assert default.get_parsed_content("sampler").decode_precision == "float32", "the default decoder stays float32"
