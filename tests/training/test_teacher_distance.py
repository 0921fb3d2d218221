"""The student's distance to its teacher during distillation (``TeacherDistance``), in-process on tiny networks."""

from __future__ import annotations

import copy

import pytest
import torch

from helpers.bundle import tiny_parser
from helpers.networks import make_tiny_text_encoder, randomize_zero_layers


@pytest.fixture(scope="module")
def parts(tokenizer):
    from scripts.networks.schedulers import build_scheduler
    from scripts.sampling.sampler import GuidedLatentSampler

    parser = tiny_parser()
    torch.manual_seed(0)
    teacher = randomize_zero_layers(parser.get_parsed_content("network_def")).eval()
    sampler = GuidedLatentSampler(
        autoencoder=parser.get_parsed_content("autoencoder_def").eval(),
        text_encoder=make_tiny_text_encoder(),
        tokenizer=tokenizer,
        scheduler=build_scheduler("pcm", **parser.get_parsed_content("noise_schedule")),
        num_inference_steps=2,
        guidance_scale=1.0,
        latent_shape=parser["latent_shape"],
        progress=False,
    )
    return {"parser": parser, "teacher": teacher, "sampler": sampler}


def _distance(parts, network, teacher_scheduler, steps, guidance, interval=2):
    from scripts.training.teacher_distance import TeacherDistance

    return TeacherDistance(
        sampler=parts["sampler"],
        network=network,
        teacher=parts["teacher"],
        teacher_scheduler=teacher_scheduler,
        teacher_steps=steps,
        teacher_guidance_scale=guidance,
        prompts=["Cardiomegaly", "Left pleural effusion"],
        images_per_prompt=2,
        interval=interval,
        seed=5,
        batch_size=3,
    )


def test_distance_is_the_rmse_of_the_students_samples_to_the_teachers(parts):
    from scripts.networks.schedulers import build_scheduler
    from scripts.sampling.sampler import initial_latents

    schedule = parts["parser"].get_parsed_content("noise_schedule")
    # the teacher sampled as the student is: distance 0
    same = _distance(parts, parts["teacher"], build_scheduler("pcm", **schedule), 2, 1.0)
    assert same.measure() == 0.0
    # a moved student against the guided teacher: the RMSE computed here, image by image from seeds 5..8
    student = copy.deepcopy(parts["teacher"])
    with torch.no_grad():
        for parameter in student.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    handler = _distance(parts, student, build_scheduler("ddim", **schedule), 5, 7.0)
    prompts, seeds = ["Cardiomegaly"] * 2 + ["Left pleural effusion"] * 2, [5, 6, 7, 8]
    teacher_sampler = parts["sampler"].with_settings(
        scheduler=build_scheduler("ddim", **schedule), num_inference_steps=5, guidance_scale=7.0
    )
    with torch.inference_mode():
        context, uncond = parts["sampler"].contexts(prompts, [""] * 4, torch.device("cpu"))
        noise = initial_latents(seeds, parts["sampler"].latent_shape)
        ours = parts["sampler"].denoise(student, noise, context, uncond, seeds=seeds)
        theirs = teacher_sampler.denoise(parts["teacher"], noise, context, uncond, seeds=seeds)
    expected = float((ours - theirs).pow(2).mean().sqrt())
    assert handler.measure() == pytest.approx(expected, rel=1e-5) and expected > 0


def test_it_measures_at_the_start_and_every_interval_and_leaves_the_network_training(parts):
    from ignite.engine import Engine

    from scripts.networks.schedulers import build_scheduler

    student = copy.deepcopy(parts["teacher"]).train()
    handler = _distance(
        parts, student, build_scheduler("ddim", **parts["parser"].get_parsed_content("noise_schedule")), 3, 7.0
    )
    engine = Engine(lambda engine, batch: None)
    handler.attach(engine)
    engine.run(range(5), max_epochs=1)
    assert [iteration for iteration, _ in handler.history] == [0, 2, 4]
    assert len({value for _, value in handler.history}) == 1, "the student did not change, nor did its distance"
    assert student.training
