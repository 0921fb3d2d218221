"""Sampling a phased student with ``--scheduler_name pcm``: its timesteps, its deterministic step, its guidance
factor, per-seed determinism at any batch size, and the settings it refuses.

The step and the timesteps are checked against diffusers' ``TCDScheduler`` (deterministic at gamma 0), an
independent implementation of the same skipping-step spacing and DDIM move.
"""

from __future__ import annotations

import pytest
import torch

from helpers.networks import tiny_sampling_parts
from scripts.common.errors import root_cause


@pytest.fixture(scope="module")
def tiny(tokenizer):
    return tiny_sampling_parts(tokenizer)


def _scheduler(tiny):
    from scripts.networks.schedulers import build_scheduler

    return build_scheduler("pcm", **tiny["parser"].get_parsed_content("noise_schedule"))


def _sampler(tiny, steps: int, guidance: float = 1.0, **settings):
    from scripts.sampling.sampler import GuidedLatentSampler

    return GuidedLatentSampler(
        autoencoder=tiny["autoencoder"],
        text_encoder=tiny["text_encoder"],
        tokenizer=tiny["tokenizer"],
        scheduler=_scheduler(tiny),
        num_inference_steps=steps,
        guidance_scale=guidance,
        latent_shape=tiny["parser"]["latent_shape"],
        progress=False,
        **settings,
    )


def _denoise(sampler, unet, prompts, seeds, negatives=None):
    from scripts.sampling.sampler import initial_latents

    with torch.inference_mode():
        context, uncond = sampler.contexts(prompts, negatives or [""] * len(prompts), torch.device("cpu"))
        return sampler.denoise(unet, initial_latents(seeds, sampler.latent_shape), context, uncond, seeds=seeds)


def _tcd(tiny):
    from diffusers import TCDScheduler

    scheduler = _scheduler(tiny)
    return TCDScheduler(
        num_train_timesteps=1000,
        trained_betas=scheduler.betas.double().numpy(),
        prediction_type="v_prediction",
        original_inference_steps=50,
    )


def test_timesteps_are_tcds_and_nest_from_two_to_eight_steps(tiny):
    scheduler, tcd = _scheduler(tiny), _tcd(tiny)
    timesteps = {}
    for steps in range(1, 9):
        scheduler.set_timesteps(steps)
        tcd.set_timesteps(steps)
        assert scheduler.timesteps.tolist() == tcd.timesteps.tolist(), steps
        timesteps[steps] = set(scheduler.timesteps.tolist())
    assert sorted(timesteps[4], reverse=True) == [999, 759, 499, 259]
    assert timesteps[2] <= timesteps[4] <= timesteps[8], "more steps only add points inside the phases"


def test_a_step_is_tcds_deterministic_step_and_the_last_gives_the_clean_estimate(tiny):
    scheduler, tcd = _scheduler(tiny), _tcd(tiny)
    scheduler.set_timesteps(4)
    tcd.set_timesteps(4)
    generator = torch.Generator().manual_seed(0)
    sample, output = torch.randn(2, 3, 8, 8, generator=generator), torch.randn(2, 3, 8, 8, generator=generator)
    for index, t in enumerate(scheduler.timesteps.tolist()[:-1]):
        tcd._step_index = index
        expected, _ = tcd.step(output.double(), t, sample.double(), eta=0.0, return_dict=False)
        moved, _ = scheduler.step(output, t, sample)
        torch.testing.assert_close(moved.double(), expected, rtol=1e-5, atol=1e-5, msg=f"t = {t}")
    # after the last step: x̂0 = √ᾱ·x − √(1−ᾱ)·v (TCD stops at timestep 0 instead, with a little noise left)
    alpha_bar = scheduler.alphas_cumprod[259].double()
    clean = alpha_bar.sqrt() * sample.double() - (1 - alpha_bar).sqrt() * output.double()
    last, predicted = scheduler.step(output, 259, sample)
    torch.testing.assert_close(last.double(), clean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(predicted, last)


@pytest.mark.parametrize("guidance", [1.0, 1.5], ids=["one-pass", "student-guided"])
def test_images_depend_on_their_seed_alone_at_any_batch_size(tiny, guidance):
    prompts, seeds = ["Cardiomegaly", "Left pleural effusion", "No finding"], [3, 4, 5]
    sampler = _sampler(tiny, 4, guidance)
    together = _denoise(sampler, tiny["unet"], prompts, seeds)
    alone = _denoise(sampler, tiny["unet"], prompts[1:2], seeds[1:2])
    torch.testing.assert_close(alone[0], together[1], rtol=1e-4, atol=1e-5)
    assert torch.equal(_denoise(sampler, tiny["unet"], prompts, seeds), together), "the same seeds, the same images"
    assert not torch.allclose(together[0], together[1])


def test_the_guidance_factor_uses_the_negative_prompt_and_one_is_a_single_pass(tiny):
    calls = []
    handle = tiny["unet"].register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    try:
        plain = _denoise(_sampler(tiny, 2, 1.0), tiny["unet"], ["Cardiomegaly"], [3], negatives=["Edema"])
        assert calls == [1, 1], "factor 1: one UNet pass per step, the negative prompt unused"
        calls.clear()
        guided = _denoise(_sampler(tiny, 2, 1.5), tiny["unet"], ["Cardiomegaly"], [3], negatives=["Edema"])
        assert calls == [2, 2], "another factor: both branches in one batched call per step"
    finally:
        handle.remove()
    other_negative = _denoise(_sampler(tiny, 2, 1.5), tiny["unet"], ["Cardiomegaly"], [3], negatives=[""])
    assert not torch.allclose(guided, plain) and not torch.allclose(guided, other_negative)
    plain_again = _denoise(_sampler(tiny, 2, 1.0), tiny["unet"], ["Cardiomegaly"], [3], negatives=[""])
    assert torch.equal(plain, plain_again)


@pytest.mark.parametrize(
    "overrides, error",
    [
        ({"num_inference_steps": 9}, "--num_inference_steps 9 is too many for --scheduler_name pcm"),
        ({"guidance_scale": 7}, "--guidance_scale 7 is outside [0, 2] for --scheduler_name pcm"),
        ({"guidance_scale": -0.5}, "--guidance_scale -0.5 is outside [0, 2] for --scheduler_name pcm"),
    ],
    ids=["nine-steps", "teacher-guidance", "negative"],
)
def test_bad_pcm_settings_fail_in_one_line_before_anything_loads(overrides, error, tmp_path):
    from helpers.bundle import run_inference

    out = tmp_path / "out"
    with pytest.raises(Exception) as info:
        run_inference(tmp_path / "no_models", out, **{"scheduler_name": "pcm", "guidance_scale": 1, **overrides})
    message = str(root_cause(info.value))
    assert error in message and len(message.splitlines()) == 1, message
    assert not out.exists()
