"""Fast sampling: DPM-Solver++(2M) against exact answers, and each speed switch against float32.

The solver is checked on Gaussian data, where the ideal denoiser and the exact probability-flow ODE
solution are analytic (``helpers_sampling``), and against the update of Lu et al. (2022), Algorithm 2.
The speed switches are checked on the tiny networks of ``configs/tiny/inference.json``, built
through ``configs/inference.json`` so that the config keys users set are what is tested.
"""

from __future__ import annotations

import pytest
import torch

from helpers.bundle import tiny_parser
from helpers.gaussian import (
    NOISE_SCHEDULE,
    GaussianDenoiser,
    dpm_solver_pp_2m_reference,
    exact_ode_solution,
    mean_context,
)
from helpers.networks import fill_zero_initialised, make_tiny_text_encoder
from scripts.networks.dpm_solver import DPMSolverPlusPlusScheduler
from scripts.networks.schedulers import build_scheduler

STD = torch.tensor([0.3, 0.7, 1.2])  # per-channel data std, around the 0.3-scaled latents' ~0.37


@pytest.fixture(scope="module")
def gaussian_problem():
    """Means (4, 3), start noise (4, 3, 8, 8) and the ideal denoiser for data N(mu, STD^2)."""
    generator = torch.Generator().manual_seed(0)
    mu = torch.randn(4, 3, generator=generator)
    x_start = torch.randn(4, 3, 8, 8, generator=generator)
    model = GaussianDenoiser(build_scheduler("ddim", **NOISE_SCHEDULE).alphas_cumprod, STD)
    return mu, x_start, model


def _solve(scheduler, model, x_start, mu, steps):
    scheduler.set_timesteps(steps)
    context, x = mean_context(mu), x_start.clone()
    for t in scheduler.timesteps:
        x, _ = scheduler.step(model(x, t.repeat(x.shape[0]), context), t, x)
    return x.double()


def _exact_denoised_at_last_timestep(scheduler, model, x_start, mu):
    """Exact ODE state at the last timestep, then the ideal denoiser: what an exact integrator returns.

    Both DDIM and DPM-Solver++ end with x = x0-prediction at their last timestep, so this isolates the
    integration error of the steps before it.
    """
    t_first, t_last = int(scheduler.timesteps[0]), int(scheduler.timesteps[-1])
    x0 = exact_ode_solution(x_start, t_first, scheduler.alphas_cumprod, mu, STD)
    a_bar = scheduler.alphas_cumprod.double()[t_last]
    mean, std = mu.double().view(*mu.shape, 1, 1), STD.double().view(1, -1, 1, 1)
    x_last = a_bar.sqrt() * mean + (a_bar * std**2 + 1 - a_bar).sqrt() * (x0 - mean) / std
    return model.posterior_mean(x_last, torch.full((mu.shape[0],), t_last), mu)


def _rms(a, b):
    return ((a - b) ** 2).mean().sqrt().item()


def test_dpmpp_2m_is_registered_on_the_model_noise_schedule():
    parser = tiny_parser(scheduler_name="dpmpp_2m")
    scheduler = parser.get_parsed_content("scheduler")
    assert isinstance(scheduler, DPMSolverPlusPlusScheduler)
    ddim = build_scheduler("ddim", **parser.get_parsed_content("noise_schedule"))
    torch.testing.assert_close(scheduler.solver.alphas_cumprod, ddim.alphas_cumprod, rtol=0, atol=0)

    scheduler.set_timesteps(10)
    timesteps = scheduler.timesteps
    assert timesteps.dtype == torch.long and timesteps.shape == (10,)
    assert int(timesteps[0]) == 999 and 0 <= int(timesteps[-1]) and bool((timesteps[1:] < timesteps[:-1]).all())

    # v-prediction: the returned x0 is sqrt(a) x - sqrt(1 - a) v.
    sample, v = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    t = timesteps[0]
    _, x0 = scheduler.step(v, t, sample)
    a_bar = scheduler.alphas_cumprod[t]
    torch.testing.assert_close(x0, a_bar.sqrt() * sample - (1 - a_bar).sqrt() * v, rtol=1e-5, atol=1e-5)

    karras = build_scheduler("dpmpp_2m_karras", **parser.get_parsed_content("noise_schedule"))
    karras.set_timesteps(10)
    assert int(karras.timesteps[0]) == 999 and int(karras.timesteps[-1]) == 0, "Karras steps end at the least noise"

    for bad in (0, 1001):
        with pytest.raises(ValueError, match="num_inference_steps"):
            scheduler.set_timesteps(bad)


@pytest.mark.parametrize("spacing", ["linspace", "trailing"])
@pytest.mark.parametrize("steps", [6, 12])
def test_dpmpp_2m_follows_published_algorithm(spacing, steps, gaussian_problem):
    mu, x_start, model = gaussian_problem
    scheduler = DPMSolverPlusPlusScheduler(**NOISE_SCHEDULE, timestep_spacing=spacing)
    ours = _solve(scheduler, model, x_start, mu, steps)
    reference = dpm_solver_pp_2m_reference(
        lambda x, t: model.posterior_mean(x, torch.full((x.shape[0],), t), mu),
        x_start,
        [int(t) for t in scheduler.timesteps],
        scheduler.alphas_cumprod,
    )
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-4)


def test_dpmpp_2m_converges_to_exact_gaussian_solution_in_few_steps(gaussian_problem):
    mu, x_start, model = gaussian_problem
    dpm = DPMSolverPlusPlusScheduler(**NOISE_SCHEDULE)
    errors = {}
    for steps in (5, 10, 20):
        x = _solve(dpm, model, x_start, mu, steps)
        errors[steps] = _rms(x, _exact_denoised_at_last_timestep(dpm, model, x_start, mu))
    ddim = build_scheduler("ddim", **NOISE_SCHEDULE)
    x = _solve(ddim, model, x_start, mu, 50)
    ddim_50_error = _rms(x, _exact_denoised_at_last_timestep(ddim, model, x_start, mu))

    assert errors[10] < 1e-2, errors
    assert errors[5] > 4 * errors[10], f"not converging at second order: {errors}"
    assert errors[20] < errors[10], errors
    assert errors[10] < ddim_50_error / 4, (errors, ddim_50_error)

    # Ending at the smallest noise level (Karras spacing) also reaches the exact ODE solution at noise 0.
    karras = DPMSolverPlusPlusScheduler(**NOISE_SCHEDULE, use_karras_sigmas=True)
    x = _solve(karras, model, x_start, mu, 50)
    assert _rms(x, exact_ode_solution(x_start, 999, karras.alphas_cumprod, mu, STD)) < 5e-3


@pytest.mark.parametrize("batched_guidance", [True, False])
def test_guided_sampler_with_dpmpp_2m_reaches_exact_guided_solution(batched_guidance, gaussian_problem):
    """The bundle's sampler loop, guidance 7: for Gaussian branches the guided ODE has an exact answer too."""
    from scripts.sampling.sampler import GuidedLatentSampler

    mu_cond, x_start, model = gaussian_problem
    mu_uncond = torch.zeros_like(mu_cond)
    guidance = 7.0
    scheduler = build_scheduler("dpmpp_2m", **NOISE_SCHEDULE)
    sampler = GuidedLatentSampler(
        autoencoder=torch.nn.Identity(),
        text_encoder=torch.nn.Identity(),
        tokenizer=None,
        scheduler=scheduler,
        num_inference_steps=10,
        guidance_scale=guidance,
        latent_shape=(3, 8, 8),
        batched_guidance=batched_guidance,
        progress=False,
    )
    with torch.inference_mode():
        latents = sampler.denoise(model, x_start.clone(), mean_context(mu_cond), mean_context(mu_uncond))
    # The ideal v is affine in mu with mu-independent slopes, so guiding = sampling data with mean mu_guided.
    mu_guided = mu_uncond + guidance * (mu_cond - mu_uncond)
    expected = _exact_denoised_at_last_timestep(scheduler, model, x_start, mu_guided)
    assert _rms(latents.double(), expected) < 5e-2 * mu_guided.abs().mean().item()


# -- speed switches ---------------------------------------------------------------------------------

#: Tolerances each speed switch is held to against float32 (tiny random networks, guidance 7, 8 DPM-Solver++
#: steps, docs/performance.md): overrides, then mean |diff| of the clean latents relative to their mean |value|,
#: and on the images in [0, 1]: mean |diff|, 99th percentile of |diff|, max |diff| (None: not bounded).
#: Measured here: exact-math switches ~3e-6 relative / 2.5e-5 max; float16 3.9e-3 / 1.3e-3 / 0.010 / 0.021;
#: bfloat16 0.034 / 0.011 / 0.098 / 0.22 (8 mantissa bits; guidance 7 amplifies the branch difference);
#: deep-feature reuse every other step 0.073 / 0.024 / 0.23 / 0.57 (random weights change fast between steps;
#: a trained UNet's deep features change slowly, which is what the reuse relies on).
SWITCH_TOLERANCES = {
    "batched_guidance": ({"batched_guidance": True}, 1e-4, 1e-5, 1e-4, 1e-4),
    "channels_last": ({"channels_last": True}, 1e-4, 1e-5, 1e-4, 1e-4),
    "sdpa_attention": ({"use_flash_attention": True}, 1e-4, 1e-5, 1e-4, 1e-4),
    "autocast_float16": ({"autocast_dtype": "float16"}, 1e-2, 5e-3, 0.03, 0.1),
    "autocast_bfloat16": ({"autocast_dtype": "bfloat16"}, 0.08, 0.03, 0.2, None),
    "deep_cache_2": ({"cache_interval": 2}, 0.1, 0.04, 0.3, None),
}


@pytest.fixture(scope="module")
def tiny_switch_models(tmp_path_factory):
    """Tiny weights whose UNet output is not identically zero (see ``fill_zero_initialised``)."""
    model_dir = tmp_path_factory.mktemp("tiny_switch_models")
    parser = tiny_parser()
    torch.manual_seed(1)
    torch.save(parser.get_parsed_content("autoencoder_def").state_dict(), model_dir / "autoencoder.pt")
    torch.save(
        fill_zero_initialised(parser.get_parsed_content("network_def"), seed=1).state_dict(), model_dir / "model.pt"
    )
    make_tiny_text_encoder(seed=1).save_pretrained(model_dir / "text_encoder")
    return model_dir


class PathTrace:
    """What a sampling run did inside the UNet, recorded by forward hooks (and a wrapper of PyTorch's fused
    attention): UNet calls (its input convolution), deep calls (its middle block), the dtypes the input
    convolution computed in, whether its input was channels-last, its batch sizes, and fused-attention calls."""

    def __init__(self, unet: torch.nn.Module, monkeypatch) -> None:
        self.unet_calls = self.deep_calls = self.sdpa_calls = 0
        self.dtypes: set[torch.dtype] = set()
        self.channels_last: set[bool] = set()
        self.batches: set[int] = set()
        unet.conv_in.register_forward_hook(self._unet_call)
        unet.middle_block.register_forward_hook(self._deep_call)
        sdpa = torch.nn.functional.scaled_dot_product_attention

        def counted_sdpa(*args, **kwargs):
            self.sdpa_calls += 1
            return sdpa(*args, **kwargs)

        monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counted_sdpa)

    def _unet_call(self, module, inputs, output) -> None:
        self.unet_calls += 1
        self.dtypes.add(output.dtype)
        self.channels_last.add(inputs[0].is_contiguous(memory_format=torch.channels_last))
        self.batches.add(inputs[0].shape[0])

    def _deep_call(self, module, inputs, output) -> None:
        self.deep_calls += 1


def _sample(model_dir, monkeypatch, traced: bool = True, **overrides):
    """Clean latents, images and the ``PathTrace`` of the config's sampler, 2 prompts, 8 DPM-Solver++ steps
    (``traced=False``: no trace, whose Python counters dynamo would guard on and recompile at every call)."""
    from scripts.sampling.sampler import initial_latents

    plain = {"batched_guidance": False, "channels_last": False, "compile": False}  # inference.json's are on / auto
    settings = {"scheduler_name": "dpmpp_2m", "num_inference_steps": 8, **plain, **overrides}
    parser = tiny_parser(
        model_dir=str(model_dir), text_encoder_source=str(model_dir / "text_encoder"), load_old=False, **settings
    )
    sampler, unet = parser.get_parsed_content("inferer"), parser.get_parsed_content("network").eval()
    trace = PathTrace(unet, monkeypatch) if traced else None
    seeds = [1, 2]
    with torch.inference_mode():
        context = sampler.encode_prompts(["big right pleural effusion", "no acute findings"])
        uncond = sampler.encode_prompts(["", ""])
        if trace is not None:
            trace.sdpa_calls = 0  # the text encoder's attention is fused too: count the UNet's alone
        latents = sampler.denoise(unet, initial_latents(seeds, sampler.latent_shape), context, uncond, seeds=seeds)
        return latents.float(), sampler.decode(latents), trace


@pytest.fixture(scope="module")
def float32_reference(tiny_switch_models):
    with pytest.MonkeyPatch.context() as monkeypatch:
        latents, images, trace = _sample(tiny_switch_models, monkeypatch)
    # the plain path: 8 steps x 2 guidance branches of batch 2, every call a full float32 pass, no fused attention
    assert (trace.unet_calls, trace.deep_calls, trace.sdpa_calls) == (16, 16, 0)
    assert trace.dtypes == {torch.float32} and trace.channels_last == {False} and trace.batches == {2}
    return latents, images


#: What proves each switch took its path (against the plain path's trace above).
SWITCH_EVIDENCE = {
    "batched_guidance": lambda t: t.batches == {4} and t.unet_calls == 8,
    "channels_last": lambda t: t.channels_last == {True},
    "sdpa_attention": lambda t: t.sdpa_calls > 0,
    "autocast_float16": lambda t: t.dtypes == {torch.float16},
    "autocast_bfloat16": lambda t: t.dtypes == {torch.bfloat16},
    "deep_cache_2": lambda t: t.unet_calls == 16 and t.deep_calls == 8,
}


@pytest.mark.parametrize("switch", sorted(SWITCH_TOLERANCES))
def test_speed_switch_takes_its_path_and_stays_within_tolerance_of_float32(
    switch, tiny_switch_models, float32_reference, monkeypatch
):
    overrides, latent_relative, image_mean, image_q99, image_max = SWITCH_TOLERANCES[switch]
    ref_latents, ref_images = float32_reference
    assert ref_latents.std() > 0.1 and 0.05 < ref_images.std(), "reference sample is degenerate"
    latents, images, trace = _sample(tiny_switch_models, monkeypatch, **overrides)
    assert SWITCH_EVIDENCE[switch](trace), f"{switch} did not take its path: {vars(trace)}"
    assert images.shape == ref_images.shape and images.dtype == torch.float32
    assert (latents - ref_latents).abs().mean() <= latent_relative * ref_latents.abs().mean()
    image_error = (images - ref_images).abs().flatten()
    assert image_error.mean() <= image_mean
    assert torch.quantile(image_error, 0.99) <= image_q99
    if image_max is not None:
        assert image_error.max() <= image_max


def test_compile_runs_the_compiled_unet_and_stays_within_tolerance_of_float32(
    tiny_switch_models, float32_reference, monkeypatch
):
    """``compile: true`` samples through ``torch.compile`` of the UNet: here with the ``aot_eager`` backend (the
    same graph capture and functionalisation as inductor, without building C++ kernels, which take minutes on a
    CPU). Dynamo is proven to have traced the UNet, and the images agree with eager float32."""
    import torch._dynamo

    import scripts.networks.compilation as compilation

    compiled = []
    original = torch.compile

    def aot_eager_compile(model, **kwargs):
        compiled.append(type(model).__name__)
        return original(model, **{**kwargs, "backend": "aot_eager"})

    monkeypatch.setattr(compilation.torch, "compile", aot_eager_compile)
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    ref_latents, ref_images = float32_reference
    latents, images, _ = _sample(tiny_switch_models, monkeypatch, traced=False, compile=True)
    assert compiled == ["DiffusionModelUNet"] and counters["stats"]["unique_graphs"] >= 1
    assert (latents - ref_latents).abs().max() <= 1e-4
    assert (images - ref_images).abs().max() <= 1e-4
    torch._dynamo.reset()


def test_default_unipc_karras_reaches_exact_gaussian_solution_better_than_ddim_50(gaussian_problem):
    """The inference default (UniPC, Karras noise levels, 20 steps) integrates the ODE to noise 0 more
    accurately than the reference DDIM-50, and converges as steps are added."""
    from monai.bundle import ConfigParser

    from helpers.bundle import INFERENCE_CONFIGS

    defaults = ConfigParser()
    defaults.read_config(list(INFERENCE_CONFIGS))
    name, steps = defaults["scheduler_name"], defaults["num_inference_steps"]
    assert (name, steps) == ("unipc_karras", 20)
    mu, x_start, model = gaussian_problem
    exact = exact_ode_solution(x_start, 999, build_scheduler("ddim", **NOISE_SCHEDULE).alphas_cumprod, mu, STD)
    errors = {
        n: _rms(_solve(build_scheduler(name, **NOISE_SCHEDULE), model, x_start, mu, n), exact) for n in (8, steps, 40)
    }
    ddim_50_error = _rms(_solve(build_scheduler("ddim", **NOISE_SCHEDULE), model, x_start, mu, 50), exact)
    assert errors[40] < errors[steps] < errors[8], errors
    assert errors[steps] < ddim_50_error, (errors, ddim_50_error)
