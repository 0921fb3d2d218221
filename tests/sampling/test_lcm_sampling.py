"""Sampling a distilled student with ``--scheduler_name lcm``: the consistency step, per-image noise, settings.

The one-step check computes the consistency prediction from the paper's formulas (the model's betas,
v-prediction, c_skip/c_out with sigma_data 0.5 and timestep scaling 10), independently of the scheduler.
"""

from __future__ import annotations

import math

import pytest
import torch

from helpers.networks import tiny_sampling_parts
from scripts.common.errors import root_cause


@pytest.fixture(scope="module")
def tiny(tokenizer):
    """A tiny UNet with random weights, a tiny text encoder and autoencoder, and the config's noise schedule."""
    return tiny_sampling_parts(tokenizer)


def _lcm_sampler(tiny, steps: int):
    from scripts.networks.schedulers import build_scheduler
    from scripts.sampling.sampler import GuidedLatentSampler

    parser = tiny["parser"]
    return GuidedLatentSampler(
        autoencoder=tiny["autoencoder"],
        text_encoder=tiny["text_encoder"],
        tokenizer=tiny["tokenizer"],
        scheduler=build_scheduler("lcm", **parser.get_parsed_content("noise_schedule")),
        num_inference_steps=steps,
        guidance_scale=1.0,
        latent_shape=parser["latent_shape"],
        progress=False,
    )


def _denoise(sampler, unet, prompts, seeds):
    from scripts.sampling.sampler import initial_latents

    with torch.inference_mode():
        context = sampler.encode_prompts(prompts)
        latents = initial_latents(seeds, sampler.latent_shape)
        return latents, context, sampler.denoise(unet, latents, context, context, seeds=seeds)


def test_one_step_is_the_students_consistency_prediction(tiny):
    sampler = _lcm_sampler(tiny, 1)
    noise, context, result = _denoise(sampler, tiny["unet"], ["Big right-sided pleural effusion", ""], [3, 4])
    # independently: betas = linspace(sqrt(0.0015), sqrt(0.0205), 1000)^2, t = 999, v-prediction
    betas = torch.linspace(math.sqrt(0.0015), math.sqrt(0.0205), 1000, dtype=torch.float64) ** 2
    alpha_bar = torch.cumprod(1.0 - betas, 0)[999]
    with torch.inference_mode():
        v = tiny["unet"](noise, timesteps=torch.full((2,), 999), context=context).double()
    clean = alpha_bar.sqrt() * noise.double() - (1.0 - alpha_bar).sqrt() * v
    scaled_t = 999 * 10.0
    c_skip, c_out = 0.25 / (scaled_t**2 + 0.25), scaled_t / math.sqrt(scaled_t**2 + 0.25)
    expected = c_skip * noise.double() + c_out * clean
    assert sampler.scheduler.timesteps.tolist() == [999]
    torch.testing.assert_close(result.double(), expected, rtol=1e-4, atol=1e-5)


def test_training_and_sampling_share_the_consistency_function(tiny):
    """The distillation loss's f(x_t, t) is the sampler's prediction, on every timestep of the schedule."""
    from scripts.networks.schedulers import build_scheduler
    from scripts.training.distillation import consistency_function

    scheduler = build_scheduler("lcm", **tiny["parser"].get_parsed_content("noise_schedule"))
    scheduler.set_timesteps(8)
    generator = torch.Generator().manual_seed(0)
    sample, output = torch.randn(2, 3, 8, 8, generator=generator), torch.randn(2, 3, 8, 8, generator=generator)
    for t in scheduler.timesteps.tolist() + [19, 0]:
        if t not in scheduler.timesteps.tolist():
            scheduler.timesteps = torch.tensor([t])
        _, predicted = scheduler.step(output, t, sample, generator=torch.Generator().manual_seed(1))
        ours = consistency_function(output, sample, torch.full((2,), t), scheduler.alphas_cumprod, "v_prediction")
        torch.testing.assert_close(ours, predicted, rtol=1e-5, atol=1e-6, msg=f"t = {t}")


def test_four_steps_use_the_skipping_schedule_and_images_do_not_depend_on_their_batch(tiny):
    sampler = _lcm_sampler(tiny, 4)
    _, _, both = _denoise(sampler, tiny["unet"], ["Cardiomegaly", "Left pleural effusion"], [3, 4])
    assert sampler.scheduler.timesteps.tolist() == [999, 759, 499, 259]
    _, _, alone = _denoise(sampler, tiny["unet"], ["Left pleural effusion"], [4])
    # each image's re-noising draws from its own generator: the second image alone equals its batched self
    torch.testing.assert_close(alone[0], both[1], rtol=1e-4, atol=1e-5)
    _, _, again = _denoise(sampler, tiny["unet"], ["Cardiomegaly", "Left pleural effusion"], [3, 4])
    assert torch.equal(again, both), "the same seeds give the same images"
    assert not torch.allclose(both[0], both[1])


@pytest.mark.parametrize(
    "overrides, error",
    [
        ({"num_inference_steps": 0}, "--num_inference_steps must be >= 1, got 0"),
        (
            {"num_inference_steps": 9, "guidance_scale": 1},
            "--num_inference_steps 9 is too many for --scheduler_name lcm",
        ),
        ({"num_inference_steps": 4}, "--guidance_scale 7 does not apply to --scheduler_name lcm"),
        ({"scheduler_name": "lcmm"}, "--scheduler_name 'lcmm' is not known"),
    ],
    ids=["zero-steps", "nine-steps", "guidance", "unknown"],
)
def test_bad_lcm_settings_fail_in_one_line_before_anything_loads(overrides, error, tmp_path):
    from helpers.bundle import run_inference

    missing = tmp_path / "no_models"  # nothing to load here: a settings error must come first
    out = tmp_path / "out"
    with pytest.raises(Exception) as info:
        run_inference(missing, out, **{"scheduler_name": "lcm", **overrides})
    message = str(root_cause(info.value))
    assert error in message and len(message.splitlines()) == 1, message
    assert not out.exists()


def test_lcm_edits_keep_their_keep_region_and_change_the_edit_region(tiny_model_dir, tmp_path):
    """Editing (strength, masks) runs with the student's sampler as with any other."""
    import numpy as np

    from helpers.bundle import read_png
    from helpers.editing import run_edit, write_image, write_mask
    from scripts.editing.inputs import load_edit_image, load_edit_inputs

    image = write_image(tmp_path / "chest.png")
    masks = {
        "edit_mask": write_mask(tmp_path / "edit.png", (40, 50, 72, 82)),
        "keep_mask": write_mask(tmp_path / "keep.png", (0, 0, 28, 96)),
    }
    overrides = {"scheduler_name": "lcm", "guidance_scale": 1, "num_inference_steps": 4, "strength": 0.5}
    [edited] = run_edit(
        tiny_model_dir, tmp_path / "out", image=str(image), **overrides, **{k: str(v) for k, v in masks.items()}
    )
    size = 64  # the tiny overlay's image_size
    regions = load_edit_inputs({"source_image": str(image), **{k: str(v) for k, v in masks.items()}}, size)
    keep, edit = regions["keep_region"][0].bool().numpy(), regions["edit_region"][0].bool().numpy()
    source = (load_edit_image(str(image), size)[0][0].numpy() * 255.0).round().astype(np.int32)
    result = read_png(edited).astype(np.int32)
    assert np.array_equal(result[keep], source[keep])
    assert np.abs(result[edit] - source[edit]).mean() > 10
