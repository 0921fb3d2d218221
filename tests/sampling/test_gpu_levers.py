"""The GPU run's lever table, parity and choices (benchmarks/gpu_levers.py), and its budget and robustness
(benchmarks/gpu.py), on fake measurements, stubbed machines and tiny networks: what can be checked without a GPU."""

from __future__ import annotations

import json
import math

import pytest
import torch

from benchmarks import gpu
from benchmarks.gpu_levers import (
    LEVER_BY_NAME,
    LEVERS,
    PARITY_MARGIN,
    AttentionBackendUNet,
    AutocastDecoder,
    Machine,
    best_row,
    choose_combination,
    fp8_layer_names,
    parity_measures,
    parity_verdict,
    prepare_unet,
    recipe_of,
    unavailable,
)

CPU = Machine("cpu")
HOPPER = Machine("cuda", (9, 0), torchao=True, triton=True)


def test_every_lever_runs_on_a_hopper_gpu_with_torchao_and_the_cuda_ones_say_why_not_elsewhere():
    assert all(unavailable(lever, HOPPER) is None for lever in LEVERS)
    on_cpu = {lever.name: unavailable(lever, CPU) for lever in LEVERS}
    assert {name for name, reason in on_cpu.items() if reason is None} == {
        "bf16_weights",
        "decode_bf16",
        "double_batch",
        "compile",
    }
    assert {reason for reason in on_cpu.values() if reason} == {"skipped: needs CUDA"}
    fp8 = LEVER_BY_NAME["fp8"]
    ampere = Machine("cuda", (8, 0), torchao=True, triton=True)
    assert unavailable(fp8, ampere) == "skipped: float8 needs compute capability >= 8.9, this GPU has (8, 0)"
    assert unavailable(fp8, Machine("cuda", (8, 9), torchao=True)) is None
    assert unavailable(fp8, Machine("cuda", (9, 0), torchao=False)).startswith("unavailable: torchao is not installed")
    assert unavailable(LEVER_BY_NAME["max_autotune"], Machine("cuda", (9, 0))).startswith("unavailable: triton")


def test_levers_merge_into_one_recipe_and_two_of_a_group_are_refused():
    recipe = recipe_of(["decode_bf16", "fp8", "cuda_graphs", "double_batch"])
    assert recipe.name == "decode_bf16+fp8+cuda_graphs+double_batch"
    assert recipe.compile_mode == "reduce-overhead"  # the compile lever's mode, not fp8's own
    assert recipe.fp8 and recipe.bf16_weights and recipe.decode_bf16 and recipe.batch_factor == 2
    assert set(recipe.needs) == {"cuda", "fp8", "torchao"}
    assert recipe_of(["fp8"]).compile_mode == "default"
    assert recipe_of([]).name == "default" and recipe_of([]).compile_mode is None
    with pytest.raises(ValueError, match="two of one group"):
        recipe_of(["compile", "max_autotune"])
    with pytest.raises(ValueError, match="two of one group"):
        recipe_of(["sdpa_flash", "sdpa_cudnn"])


def _row(images_per_s, at_parity=True, **extra):
    return {"images_per_s": images_per_s, "at_parity": at_parity, "parity_note": "n", **extra}


def test_the_combination_takes_the_fastest_of_each_group_and_every_faster_lever_at_parity():
    base = _row(10.0)
    rows = {
        "bf16_weights": _row(10.05),  # 0.5 % faster: noise, left out
        "decode_bf16": _row(12.0),
        "double_batch": _row(11.0),  # the batch is not chosen: the combination runs at both
        "cudnn_benchmark": _row(13.0, at_parity=False, parity_note="pixel_rmse too far"),
        "sdpa_flash": {"error": "RuntimeError: No available kernel"},
        "sdpa_cudnn": _row(10.5),
        "sdpa_efficient": _row(11.5),
        "compile": _row(20.0),
        "cuda_graphs": _row(21.0),
        "fp8": _row(19.0),  # faster than the default, slower than compile alone: left out
    }
    chosen, left_out = choose_combination(rows, base)
    assert chosen == ["decode_bf16", "sdpa_efficient", "cuda_graphs"]
    assert left_out["bf16_weights"] == "no faster than the default"
    assert left_out["fp8"] == "no faster than compile"
    assert left_out["cudnn_benchmark"] == "not at parity: pixel_rmse too far"
    assert left_out["sdpa_flash"] == "RuntimeError: No available kernel"
    assert left_out["sdpa_cudnn"] == "slower than sdpa_efficient" and left_out["compile"] == "slower than cuda_graphs"
    assert "double_batch" not in chosen and "double_batch" not in left_out

    rows["fp8"] = _row(26.0)
    rows["cuda_graphs"] = _row(21.0, at_parity=False, parity_note="latent_rmse too far")
    chosen, left_out = choose_combination(rows, base)
    assert chosen == ["decode_bf16", "sdpa_efficient", "compile", "fp8"]
    assert left_out["cuda_graphs"].startswith("not at parity")
    assert choose_combination({"compile": {"skipped": "skipped: needs CUDA"}}, base) == (
        [],
        {"compile": "skipped: needs CUDA"},
    )


def test_the_best_row_is_the_fastest_at_parity():
    rows = [_row(30.0, at_parity=False), _row(20.0, recipe="a"), {"skipped": "x"}, _row(25.0, recipe="b")]
    assert best_row(rows)["recipe"] == "b"
    assert best_row([_row(30.0, at_parity=False)]) is None


def test_parity_measures_are_the_distances_of_the_cpu_benchmark_and_the_switch_tests():
    ref_latents = torch.ones(2, 3, 4, 4)
    ref_images = torch.full((2, 1, 10, 10), 0.5)
    ref_features = torch.tensor([[3.0, 4.0], [0.0, 5.0]])
    latents = ref_latents + 0.1
    images = ref_images.clone()
    images[0, 0, 0, :] = 0.6  # 10 of 200 pixels moved by 0.1
    features = ref_features + torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    measures = parity_measures(latents, images, features, (ref_latents, ref_images, ref_features))
    assert measures["latent_rmse"] == pytest.approx(0.1)
    assert measures["pixel_rmse"] == pytest.approx(math.sqrt(10 * 0.01 / 200))
    assert measures["feature_distance"] == pytest.approx((1.0 / 2) / 5.0)  # mean |Δ| / mean |reference|
    assert measures["latent_relative"] == pytest.approx(0.1)
    assert measures["image_mean_abs"] == pytest.approx(10 * 0.1 / 200)
    assert measures["image_p99_abs"] == pytest.approx(0.1)  # the 99th percentile is among the moved pixels
    assert measures["num_images"] == 2


def test_a_row_is_at_parity_within_the_margin_of_the_default_distances():
    yardstick = {"latent_rmse": 0.2, "pixel_rmse": 0.04, "feature_distance": 0.01}
    inside = {key: value * PARITY_MARGIN for key, value in yardstick.items()}
    assert parity_verdict(inside, yardstick)[0]
    outside = {**inside, "pixel_rmse": 0.04 * PARITY_MARGIN * 1.01}
    at_parity, why = parity_verdict(outside, yardstick)
    assert not at_parity and why.startswith("pixel_rmse")
    assert not parity_verdict({**inside, "latent_rmse": float("nan")}, yardstick)[0]
    exact = {"latent_rmse": 0.0, "pixel_rmse": 0.0, "feature_distance": 0.0}  # a float32 default: distance 0
    assert parity_verdict(exact, exact)[0] and not parity_verdict({**exact, "pixel_rmse": 1e-3}, exact)[0]
    assert parity_verdict(outside, None) == (True, "the yardstick (the default's own rounding)")


@pytest.fixture(scope="module")
def tiny_unet():
    """The tiny UNet with PyTorch's fused attention (as the GPU run builds it), random non-zero weights."""
    from scripts.common.configs import tiny_parser
    from scripts.networks.weights import fill_zero_initialised

    torch.manual_seed(0)
    network = tiny_parser(use_flash_attention=True).get_parsed_content("network_def")
    return fill_zero_initialised(network).eval()


def _call(unet, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 8, 8, generator=generator)
    context = torch.randn(2, 77, 32, generator=generator)
    with torch.inference_mode():
        return unet(x, timesteps=torch.tensor([10, 500]), context=context)


def test_float8_converts_the_transformer_blocks_linear_layers_only(tiny_unet):
    names = fp8_layer_names(tiny_unet)
    linear = [name for name, m in tiny_unet.named_modules() if isinstance(m, torch.nn.Linear)]
    assert names and set(names) < set(linear)
    assert all(".transformer_blocks." in name for name in names)
    assert {name.rsplit(".", 1)[-1] for name in names} == {"to_q", "to_k", "to_v", "out_proj", "linear1", "linear2"}
    assert not any("time_emb" in name for name in names)


def test_the_attention_lever_restricts_the_unets_attention_kernel(tiny_unet):
    plain = _call(tiny_unet)
    math_only = AttentionBackendUNet(tiny_unet, "MATH")
    assert torch.allclose(_call(math_only), plain, atol=1e-5)
    # the CPU has no memory-efficient kernel: restricted to it, the UNet's attention cannot run
    with pytest.raises(RuntimeError, match="No viable backend|No available kernel"):
        _call(prepare_unet(tiny_unet, LEVER_BY_NAME["sdpa_efficient"]))


def test_the_bf16_weights_lever_samples_a_bf16_copy_and_leaves_the_network(tiny_unet):
    copy = prepare_unet(tiny_unet, LEVER_BY_NAME["bf16_weights"])
    assert copy is not tiny_unet and {p.dtype for p in copy.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in tiny_unet.parameters()} == {torch.float32}
    with torch.autocast("cpu", torch.bfloat16):
        cast, autocast = _call(copy).float(), _call(tiny_unet).float()
    assert torch.allclose(cast, autocast, atol=0.05 * autocast.abs().max().item())


def test_the_bf16_decoder_decodes_under_autocast():
    from scripts.common.configs import tiny_parser

    torch.manual_seed(0)
    autoencoder = tiny_parser().get_parsed_content("autoencoder_def").eval()
    z = torch.randn(1, 3, 8, 8)
    seen = []
    hook = autoencoder.decoder.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    with torch.inference_mode():
        exact = autoencoder.decode_stage_2_outputs(z)
        rounded = AutocastDecoder(autoencoder).decode_stage_2_outputs(z).float()
    hook.remove()
    assert seen == [torch.float32, torch.bfloat16]
    assert 0 < (rounded - exact).abs().mean() < 0.05 * exact.abs().mean()  # bf16: 8 mantissa bits


def test_the_budget_skips_what_its_estimate_would_not_fit_in_what_is_left():
    now = [0.0]
    budget = gpu.Budget(100.0, {"a": 30.0, "b": 90.0}, clock=lambda: now[0])
    assert budget.check("a") is None and budget.check("b") is None and budget.check("unknown") is None
    now[0] = 20.0
    assert budget.check("a") is None
    assert budget.check("b") == "skipped: budget (90 s estimated on an H100/H200, 80 s of --budget_s left)"
    assert gpu.Budget(None, {"b": 1e9}).check("b") is None


def test_a_part_that_raises_or_does_not_fit_is_recorded_and_saved(tmp_path):
    path = tmp_path / "gpu_benchmark.json"
    report: dict = {"environment": {}}

    def broken():
        raise RuntimeError("CUDA out of memory")

    gpu.run_part(report, path, "student", broken)
    gpu.run_part(report, path, "editing", lambda: {"images_per_s": 3.0})
    gpu.run_part(report, path, "app", lambda: {"never": "run"}, gpu.Budget(10.0, {"app": 45.0}))
    saved = json.loads(path.read_text())
    assert saved["student"]["error"] == "RuntimeError: CUDA out of memory" and "broken" in saved["student"]["traceback"]
    assert saved["editing"]["images_per_s"] == 3.0
    assert saved["app"]["skipped"].startswith("skipped: budget (45 s estimated")
    assert all(saved[name]["wall_s"] >= 0 for name in ("student", "editing", "app"))


def test_the_summary_is_the_fastest_row_at_parity_of_the_levers_and_autotune_parts():
    timing = {"steps": 20, "text_s": 0.1, "step_s": 0.04, "decode_s": 0.1}
    report = {
        "levers": {
            "bound_images_per_s": 80.0,
            "default": _row(13.0, recipe="default", batch_size=32, bound_fraction=13 / 80, **timing),
            "rows": {"compile": _row(25.0, recipe="compile", batch_size=32, bound_fraction=25 / 80, **timing)},
            "combination": {"rows": [_row(30.0, at_parity=False, recipe="compile+fp8", batch_size=32)]},
        },
        "autotune": {
            "rows": {"max_autotune": _row(44.0, recipe="max_autotune", batch_size=32, bound_fraction=0.55, **timing)}
        },
    }
    summary = gpu.summarize(report)
    assert summary["best"]["recipe"] == "max_autotune" and summary["target_met"]
    assert summary["best"]["time_shares"]["unet_steps"] == pytest.approx(0.8 / 1.0)
    assert summary["best"]["unet_only_bound_fraction"] == pytest.approx(32 / 0.8 / 80.0)
    del report["autotune"]
    assert gpu.summarize(report)["best"]["recipe"] == "compile" and not gpu.summarize(report)["target_met"]
    assert gpu.best_levers({"best": {"recipe": "compile+decode_bf16+double_batch"}}) == ["compile", "decode_bf16"]
    assert gpu.best_levers({"best": {"recipe": "default"}}) == [] and gpu.best_levers(None) == []
