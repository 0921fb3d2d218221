"""Fast by default: precision chosen by the hardware (recorded, part of an image's identity), compile by the
run's size, and guidance applied only inside a timestep interval."""

from __future__ import annotations

import csv

import pytest
import torch

import scripts.networks.precision as precision
from helpers.bundle import run_inference


def _manifest(folder) -> list[dict]:
    with open(folder / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("amx, probe_says, expected", [(True, None, "bfloat16"), (False, "float32", "float32")])
def test_auto_precision_follows_the_cpu(amx, probe_says, expected, monkeypatch, tmp_path):
    """AMX: bf16 without probing; another CPU: what the probe measures (test_precision_probe.py has the rest)."""
    monkeypatch.setenv(precision.PRECISION_PROBE_CACHE_ENV, str(tmp_path / "probe.json"))
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    probed = []

    def measure() -> dict:
        probed.append(1)
        return {"float32_ms": 100.0, "bfloat16_ms": 200.0 if probe_says == "float32" else 50.0}

    monkeypatch.setattr(precision, "measure_bf16_against_float32", measure)
    assert precision.resolve_precision("auto", "cpu") == expected
    assert len(probed) == (0 if amx else 1)
    # an explicit value always wins
    assert precision.resolve_precision("float32", "cpu") == "float32"
    assert precision.resolve_precision(None, "cpu") == "float32"
    assert precision.resolve_precision("bf16", "cpu") == "bfloat16"


@pytest.mark.parametrize("supported, expected", [(True, "bfloat16"), (False, "float32")])
def test_auto_precision_follows_the_gpu(supported, expected, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: supported)
    assert precision.resolve_precision("auto", "cuda:0") == expected


def test_auto_precision_is_recorded_and_never_reused_across_precisions(tiny_model_dir, tmp_path, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setattr(precision, "bf16_native", lambda device: False)
    slower_bf16 = {"float32_ms": 1.0, "bfloat16_ms": 2.0, "cached": True, "cache_file": "-"}
    monkeypatch.setattr(precision, "cpu_probe", lambda: slower_bf16)  # the probe finds bf16 slower here
    first = run_inference(tiny_model_dir, out, autocast_dtype="auto", output_format="pt")
    monkeypatch.setattr(precision, "bf16_native", lambda device: True)
    second = run_inference(tiny_model_dir, out, autocast_dtype="auto", output_format="pt")
    assert len(first) == 1 and len(second) == 2, "a bf16 run reused the float32 image"
    assert sorted(row["autocast_dtype"] for row in _manifest(out)) == ["bfloat16", "float32"]
    new = next(p for p in second if p not in first)
    assert not torch.equal(torch.load(new, weights_only=True), torch.load(first[0], weights_only=True)), (
        "the bf16 image was made in bf16"
    )


def test_guidance_interval_over_every_step_is_plain_guidance(tiny_model_dir, tmp_path):
    plain = run_inference(tiny_model_dir, tmp_path / "plain", output_format="pt")
    everywhere = run_inference(tiny_model_dir, tmp_path / "all", output_format="pt", guidance_interval=[0, 999])
    torch.testing.assert_close(torch.load(everywhere[0]), torch.load(plain[0]), rtol=0, atol=0)
    assert everywhere[0].name != plain[0].name, "the interval is part of the image's identity"


def test_empty_guidance_interval_is_guidance_one_and_a_partial_one_lies_between(tiny_model_dir, tmp_path):
    unguided = run_inference(tiny_model_dir, tmp_path / "g1", output_format="pt", guidance_scale=1.0)
    empty = run_inference(tiny_model_dir, tmp_path / "empty", output_format="pt", guidance_interval=[2000, 3000])
    torch.testing.assert_close(torch.load(empty[0]), torch.load(unguided[0]), rtol=0, atol=0)
    plain = run_inference(tiny_model_dir, tmp_path / "plain", output_format="pt")
    partial = run_inference(tiny_model_dir, tmp_path / "part", output_format="pt", guidance_interval=[500, 999])
    images = [torch.load(p[0]) for p in (unguided, plain, partial)]
    assert not torch.equal(images[2], images[0]) and not torch.equal(images[2], images[1])
    rows = _manifest(tmp_path / "part")
    assert rows[0]["guidance_interval"] == "[500, 999]"


def test_deep_cache_interval_one_is_the_unet_exactly_and_reuse_skips_the_deep_blocks():
    from helpers.bundle import tiny_parser
    from helpers.networks import fill_zero_initialised
    from scripts.networks.deep_cache import DeepCacheUNet

    unet = fill_zero_initialised(tiny_parser().get_parsed_content("network_def"), seed=1).eval()
    x, t, context = torch.randn(2, 3, 8, 8), torch.tensor([500, 500]), torch.randn(2, 77, 32)
    calls = []
    unet.middle_block.register_forward_hook(lambda *args: calls.append("middle"))
    with torch.no_grad():
        expected = unet(x, timesteps=t, context=context)
        assert torch.equal(DeepCacheUNet(unet, 1)(x, t, context), expected)
        cached = DeepCacheUNet(unet, 3)
        calls.clear()
        outputs = [cached(x, t - step, context) for step in range(4)]
    assert calls == ["middle", "middle"], "full passes at calls 1 and 4 only"
    assert torch.equal(outputs[0], expected)
    assert not torch.equal(outputs[1], unet(x, timesteps=t - 1, context=context))  # the deep features were reused
    cached.reset()
    with torch.no_grad():
        assert torch.equal(cached(x, t, context), expected)


def test_resume_never_reuses_an_image_made_with_another_cache_interval(tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    first = run_inference(tiny_model_dir, out, output_format="pt")
    second = run_inference(tiny_model_dir, out, output_format="pt", cache_interval=2)
    assert len(first) == 1 and len(second) == 2
    assert sorted(row["cache_interval"] for row in _manifest(out)) == ["1", "2"]


# -- compile: "auto" compiles long float32 and bf16 runs on a CPU, and runs that pay back the compile on a GPU -------

#: configs/inference.json's compile_min_images
MIN_IMAGES = {"cpu": 32, "cuda": 1034}


@pytest.mark.parametrize(
    "setting, device, dtype, images, expected",
    [
        ("auto", "cpu", "bfloat16", 32, True),
        ("auto", "cpu", "bfloat16", 31, False),  # too few images to pay for compiling
        ("auto", "cpu", "float32", 32, True),  # frozen fp32 pays after ~5 (AVX-512) to ~25 (AMX) images
        ("auto", "cpu", "float32", 31, False),
        ("auto", "cpu", "float16", 1000, False),  # slower than float32 on CPUs, never measured compiled
        ("auto", "cuda:0", "bfloat16", 1033, False),  # the 37 s compile has not paid back yet (H200 measurement)
        ("auto", "cuda:0", "bfloat16", 1034, True),
        ("auto", "cuda:0", "float32", 5000, True),  # every precision on a GPU
        ("auto", "mps", "float32", 5000, False),  # no measurement there
        (True, "cpu", "float32", 1, True),  # explicit values always win
        ("false", "cpu", "bfloat16", 1000, False),
    ],
)
def test_auto_compile_follows_the_run_size_device_and_precision(setting, device, dtype, images, expected):
    from scripts.networks.compilation import resolve_compile

    assert resolve_compile(setting, device, dtype, images, min_images=MIN_IMAGES) is expected


def test_the_gpu_threshold_is_where_the_measured_compile_pays_back(tiny_model_dir, tmp_path, caplog, monkeypatch):
    """The config's CUDA threshold is the H200 measurement's break-even (compile seconds over seconds saved per
    image); a run of that size on a (stubbed) CUDA device resolves to compiling, logged with the reason."""
    import logging

    from helpers.bundle import tiny_parser, tiny_run_settings
    from scripts.networks import compilation

    measured = compilation.CUDA_COMPILE
    saved = measured["eager_s_per_image"] - measured["compiled_s_per_image"]
    assert (compilation.CUDA_BREAK_EVEN_IMAGES - 1) * saved < measured["compile_s"]
    assert compilation.CUDA_BREAK_EVEN_IMAGES * saved >= measured["compile_s"]
    monkeypatch.setattr(compilation, "_announced", set())
    on_a_gpu = {"device": "$torch.device('cuda:0')", "autocast_dtype": "bfloat16"}
    for images, expected in (
        (compilation.CUDA_BREAK_EVEN_IMAGES, True),
        (compilation.CUDA_BREAK_EVEN_IMAGES - 1, False),
    ):
        settings = tiny_run_settings(tiny_model_dir, tmp_path, num_samples=images, **on_a_gpu)
        parser = tiny_parser(**settings)
        assert parser.get_parsed_content("compile_min_images") == MIN_IMAGES
        with caplog.at_level(logging.INFO, logger=compilation.__name__):
            assert parser.get_parsed_content("compiled") is expected
    assert "compile auto -> True (1034 images >= compile_min_images 1034, bfloat16 on a cuda device" in caplog.text


def test_compile_needs_a_cpu_compiler(monkeypatch):
    """Without a C++ compiler inductor cannot build CPU kernels: "auto" does not compile and true is refused
    with the fix, before anything runs; a GPU run does not need one."""
    from scripts.networks import compilation

    assert compilation.cpu_compiler_available(), "this machine has g++"
    monkeypatch.setattr(compilation, "cpu_compiler_available", lambda: False)
    assert compilation.resolve_compile("auto", "cpu", "bfloat16", 1000, 32) is False
    assert compilation.resolve_compile("auto", "cuda:0", "bfloat16", 2000, MIN_IMAGES) is True
    with pytest.raises(ValueError, match="compile true needs a C\\+\\+ compiler .* install g\\+\\+"):
        compilation.resolve_compile(True, "cpu", "bfloat16", 1000, 32)
    assert compilation.resolve_compile(True, "cuda:0", "bfloat16", 1, 32) is True


def test_compile_setting_must_be_true_false_or_auto():
    from scripts.networks.compilation import resolve_compile

    with pytest.raises(ValueError, match="compile must be true, false or 'auto', got 'sometimes'"):
        resolve_compile("sometimes", "cpu", "bfloat16", 100, 32)


def test_compile_freezes_the_weights_on_a_cpu_only(monkeypatch):
    """On a CPU the compiled UNet runs (and so compiles) with inductor's freezing on; elsewhere it does not."""
    import torch._inductor.config as inductor_config

    from scripts.networks import compilation

    compiled, freezing_at_call = [], []

    def fake_compile(network, **options):
        compiled.append(options)

        def run(x):
            freezing_at_call.append(inductor_config.freezing)
            return network(x)

        return run

    monkeypatch.setattr(torch, "compile", fake_compile)
    network, x = torch.nn.Linear(2, 2), torch.randn(3, 2)
    for device in ("cpu", "cuda:0"):
        with torch.no_grad():
            torch.testing.assert_close(compilation.compile_unet(network, device)(x), network(x))
    assert compiled == [{"dynamic": False}, {"dynamic": False}]
    assert freezing_at_call == [True, False] and inductor_config.freezing is False, "freezing leaked out of the call"


def test_auto_compile_is_decided_by_the_whole_run_and_recorded_but_not_in_names(tiny_model_dir, tmp_path, monkeypatch):
    """A 3-image bf16 run on a (mocked) AMX CPU with compile_min_images 3 is compiled; the decision depends on
    the run's size, not on how much of it is done, so a resumed run makes only the missing image, under the
    same name. Compiling changes only float rounding: the same command uncompiled finds its images made."""
    import scripts.sampling.sampler as sampler_module

    monkeypatch.setattr(precision, "bf16_native", lambda device: True)
    compiled = []
    monkeypatch.setattr(sampler_module, "compile_unet", lambda network, device: compiled.append(device) or network)
    out = tmp_path / "out"
    settings = {"autocast_dtype": "auto", "output_format": "pt", "num_samples": 3, "compile_min_images": 3}
    first = run_inference(tiny_model_dir, out, **settings)
    assert len(first) == 3 and len(compiled) == 1
    assert {row["compile"] for row in _manifest(out)} == {"True"}
    first[1].unlink()
    resumed = run_inference(tiny_model_dir, out, **settings)
    assert resumed == first and len(compiled) == 2, "the resumed run (1 image to make) was compiled as well"
    uncompiled = run_inference(tiny_model_dir, out, **{**settings, "compile_min_images": 4})
    assert uncompiled == first and len(compiled) == 2, "nothing left to make"
    assert [row["compile"] for row in _manifest(out)] == ["True"] * 3, "the manifest keeps how each was made"
