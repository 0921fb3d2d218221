"""The distillation step's target against an independent computation, in-process on tiny random networks.

The independent side rebuilds the noise schedule from its formula (betas = linspace(√0.0015, √0.0205, 1000)²),
hard-codes the 4-phase edges (999 | 759 | 499 | 259 | clean) and runs the guided teacher's DDIM steps of 20
timesteps one sample at a time in float64, with v-prediction written out.
"""

from __future__ import annotations

import math

import pytest
import torch

from helpers.bundle import tiny_parser
from helpers.networks import make_tiny_text_encoder, randomize_zero_layers

GUIDANCE = 7.0
#: timestep -> its phase's lower edge (None: the clean end), for 4 phases of the 50-step schedule
EDGES = {999: 759, 779: 759, 759: 499, 519: 499, 259: None, 19: None}


@pytest.fixture(scope="module")
def parts(tokenizer):
    from scripts.networks.schedulers import build_scheduler
    from scripts.networks.text import encode_ids, null_prompt_ids, prompt_ids

    parser = tiny_parser()
    torch.manual_seed(0)
    teacher = randomize_zero_layers(parser.get_parsed_content("network_def")).eval()
    target = randomize_zero_layers(parser.get_parsed_content("network_def", lazy=False)).eval()
    assert target is not teacher
    text_encoder = make_tiny_text_encoder()
    timesteps = torch.tensor(list(EDGES))
    prompts = ["Big right-sided pleural effusion", "Cardiomegaly", "", "Left effusion", "No finding", "Edema"]
    with torch.no_grad():
        context = encode_ids(text_encoder, prompt_ids(tokenizer, prompts))
        null = encode_ids(text_encoder, prompt_ids(tokenizer, [""]))
    return {
        "parser": parser,
        "teacher": teacher,
        "target": target,
        "text_encoder": text_encoder,
        "autoencoder": parser.get_parsed_content("autoencoder_def").eval(),
        "scheduler": build_scheduler("ddpm", **parser.get_parsed_content("noise_schedule")),
        "null_ids": null_prompt_ids(tokenizer, "empty_prompt"),
        "noisy": torch.randn(len(timesteps), 3, 8, 8, generator=torch.Generator().manual_seed(1)),
        "timesteps": timesteps,
        "context": context,
        "null": null,
    }


def _prepare(parts, method: str, teacher_steps, **timestep_draw):
    from scripts.training.distillation import ConsistencyDistillationPrepareBatch, consistency_parameterisation

    return ConsistencyDistillationPrepareBatch(
        autoencoder=parts["autoencoder"],
        text_encoder=parts["text_encoder"],
        scheduler=parts["scheduler"],
        scale_factor=1.0,
        teacher=parts["teacher"],
        target_network=parts["target"],
        null_prompt_ids=parts["null_ids"],
        consistency=consistency_parameterisation(method, parts["scheduler"], num_phases=4),
        guidance_scale_range=(GUIDANCE, GUIDANCE),
        teacher_steps=teacher_steps,
        **timestep_draw,
    )


def _alpha_bar():
    betas = torch.linspace(math.sqrt(0.0015), math.sqrt(0.0205), 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, 0)


def _levels(t):
    """(√ᾱ, √(1−ᾱ)) at t; None is the clean end."""
    alpha_bar = 1.0 if t is None else float(_alpha_bar()[t])
    return math.sqrt(alpha_bar), math.sqrt(1.0 - alpha_bar)


def _move(v, x, t, s):
    """DDIM from t to s along a v-prediction, float64."""
    a, sigma = _levels(t)
    clean, noise = a * x - sigma * v, sigma * x + a * v
    a_s, sigma_s = _levels(s)
    return a_s * clean + sigma_s * noise


def _unet(network, x, t, context):
    with torch.no_grad():
        return network(x.float()[None], timesteps=torch.tensor([t]), context=context[None]).double()[0]


def _teacher_step(parts, x, t, context):
    uncond, cond = _unet(parts["teacher"], x, t, parts["null"][0]), _unet(parts["teacher"], x, t, context)
    s = t - 20 if t >= 20 else None
    return _move(uncond + GUIDANCE * (cond - uncond), x, t, s), s


def _count_calls(network):
    calls = []
    handle = network.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    return calls, handle


def test_phased_target_is_the_guided_teachers_ddim_solution_to_the_phase_edge(parts):
    prepare = _prepare(parts, "pcm", "phase")
    calls, handle = _count_calls(parts["target"])
    try:
        result = prepare.targets(parts["noisy"], parts["timesteps"], parts["context"])
    finally:
        handle.remove()
    assert calls == [], "a whole-phase teacher leaves nothing to the target network"
    for i, (t, edge) in enumerate(EDGES.items()):
        x, current = parts["noisy"][i].double(), t
        while current is not None and (edge is None or current > edge):
            x, current = _teacher_step(parts, x, current, parts["context"][i])
        torch.testing.assert_close(result[i].double(), x, rtol=1e-4, atol=2e-5, msg=f"t = {t}")


def test_one_teacher_step_then_the_target_networks_move_to_the_phase_edge(parts):
    prepare = _prepare(parts, "pcm", 1)
    calls, handle = _count_calls(parts["target"])
    try:
        result = prepare.targets(parts["noisy"], parts["timesteps"], parts["context"])
    finally:
        handle.remove()
    # one step takes 779 to 759, 519 to 499 and 19 to the clean end: only 999, 759 and 259 need θ⁻
    assert calls == [3]
    for i, (t, edge) in enumerate(EDGES.items()):
        x, current = _teacher_step(parts, parts["noisy"][i].double(), t, parts["context"][i])
        if current is not None and (edge is None or current > edge):
            v = _unet(parts["target"], x, current, parts["context"][i])
            x = _move(v, x, current, edge)
        torch.testing.assert_close(result[i].double(), x, rtol=1e-4, atol=2e-5, msg=f"t = {t}")


def test_lcm_target_is_one_teacher_step_then_the_target_networks_boundary_condition(parts):
    prepare = _prepare(parts, "lcm", 1)
    result = prepare.targets(parts["noisy"], parts["timesteps"], parts["context"])
    for i, t in enumerate(EDGES):
        x_t, context = parts["noisy"][i].double(), parts["context"][i]
        uncond, cond = _unet(parts["teacher"], x_t, t, parts["null"][0]), _unet(parts["teacher"], x_t, t, context)
        previous = max(t - 20, 0)  # LCM's last teacher step lands on timestep 0 (ᾱ_0 < 1), where f is the identity
        x = _move(uncond + GUIDANCE * (cond - uncond), x_t, t, previous)
        if previous > 0:
            v = _unet(parts["target"], x, previous, context)
            a, sigma = _levels(previous)
            scaled = previous * 10.0
            c_skip, c_out = 0.25 / (scaled**2 + 0.25), scaled / math.sqrt(scaled**2 + 0.25)
            x = c_skip * x + c_out * (a * x - sigma * v)
        torch.testing.assert_close(result[i].double(), x, rtol=1e-4, atol=2e-5, msg=f"t = {t}")


def test_the_student_is_trained_on_the_function_the_phased_sampler_steps_with(parts):
    """The inferer's f_θ at a phase's upper edge is the pcm scheduler's step at the same timestep."""
    from scripts.networks.schedulers import build_scheduler
    from scripts.training.distillation import ConsistencyInferer, consistency_parameterisation

    inferer = ConsistencyInferer(consistency_parameterisation("pcm", parts["scheduler"], num_phases=4))
    sampler = build_scheduler("pcm", **parts["parser"].get_parsed_content("noise_schedule"))
    sampler.set_timesteps(4)
    assert sampler.timesteps.tolist() == [999, 759, 499, 259]
    for t in sampler.timesteps.tolist():
        timesteps = torch.full((len(parts["noisy"]),), t)
        with torch.no_grad():
            trained = inferer(parts["noisy"], parts["teacher"], timesteps=timesteps, condition=parts["context"])
            output = parts["teacher"](parts["noisy"], timesteps=timesteps, context=parts["context"])
        stepped, _ = sampler.step(output, t, parts["noisy"])
        torch.testing.assert_close(trained, stepped, rtol=1e-5, atol=1e-6, msg=f"t = {t}")


def test_bad_method_and_teacher_steps_are_refused_in_one_line(parts):
    from scripts.training.distillation import consistency_parameterisation

    with pytest.raises(ValueError, match="distill_method must be one of"):
        consistency_parameterisation("pcmm", parts["scheduler"])
    with pytest.raises(ValueError, match="teacher_steps must be an integer >= 1 or 'phase'"):
        _prepare(parts, "pcm", 0)


def test_emphasised_timesteps_are_drawn_at_the_configured_share(parts):
    """Each emphasised timestep's share is fraction/8 + (1 − fraction)/50, every other one's (1 − fraction)/50:
    counted over 200,000 draws (binomial standard error < 0.001)."""
    emphasised = [999, 879, 759, 639, 499, 379, 259, 139]
    fraction, draws = 0.5, 200_000
    prepare = _prepare(parts, "pcm", "phase", emphasised_timesteps=emphasised, emphasised_timestep_fraction=fraction)
    torch.manual_seed(3)
    drawn = prepare.draw_timesteps(draws, torch.device("cpu"))
    schedule = [20 * j - 1 for j in range(1, 51)]
    assert set(drawn.tolist()) == set(schedule)
    shares = torch.bincount(drawn, minlength=1000).double() / draws
    for t in schedule:
        expected = (1 - fraction) / 50 + (fraction / 8 if t in emphasised else 0.0)
        assert abs(float(shares[t]) - expected) < 0.004, (t, float(shares[t]), expected)
    only = _prepare(parts, "pcm", "phase", emphasised_timesteps=[999, 259], emphasised_timestep_fraction=1.0)
    assert set(only.draw_timesteps(1000, torch.device("cpu")).tolist()) == {999, 259}


def test_uniform_draw_is_unchanged_without_emphasis(parts):
    """Fraction 0 draws what the uniform recipe drew from the same generator state (runs stay reproducible)."""
    prepare = _prepare(parts, "pcm", "phase")
    torch.manual_seed(5)
    drawn = prepare.draw_timesteps(64, torch.device("cpu"))
    torch.manual_seed(5)
    expected = (torch.randint(0, 50, (64,)) + 1) * 20 - 1
    assert torch.equal(drawn, expected)


def test_distill_config_emphasises_the_student_samplers_timesteps():
    """The config's emphasised timesteps are where its 8-step sampler evaluates the student (which holds the
    1-, 2- and 4-step samplers' timesteps), and reach the prepare-batch component."""
    from helpers.bundle import distill_configs, load_parser

    overrides = {"emphasised_timestep_fraction": 0.5, "rollout_fraction": 0.25, "phase_loss_weights": [1, 3, 1, 1]}
    parser = load_parser(distill_configs(), overrides)
    assert parser.get_parsed_content("emphasised_timesteps") == [999, 879, 759, 639, 499, 379, 259, 139]
    sampler = parser.get_parsed_content("scheduler_name")
    assert sampler == "pcm"
    prepare = parser["prepare_batch"]
    assert prepare["emphasised_timesteps"] == "@emphasised_timesteps"
    assert prepare["emphasised_timestep_fraction"] == "@emphasised_timestep_fraction"
    assert parser.get_parsed_content("emphasised_timestep_fraction") == 0.5
    assert prepare["rollout_fraction"] == "@rollout_fraction"
    assert parser.get_parsed_content("rollout_fraction") == 0.25
    assert parser.get_parsed_content("consistency").loss_weights.tolist() == [1.0, 1.0, 3.0, 1.0]


def _fixed_batch(prepare, parts, seed: int):
    """Make ``prepare`` see the same latents, text and noise whatever the batch data (the tiny parts' shapes)."""
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(parts["noisy"].shape, generator=generator)
    noise = torch.randn(parts["noisy"].shape, generator=generator)
    prepare.encode = lambda batchdata, device=None, non_blocking=False: (latents, parts["context"])
    prepare.get_noise = lambda like: noise
    return latents, noise


def test_rollout_input_is_the_target_networks_own_phased_sample_at_the_edge(parts):
    """The target network's steps from the data noised to 999 down to each sample's edge, recomputed one sample at
    a time in float64 with the schedule and the DDIM move written out."""
    prepare = _prepare(parts, "pcm", "phase", rollout_fraction=0.5)
    assert prepare.rollout_edges.tolist() == [259, 499, 759]
    generator = torch.Generator().manual_seed(4)
    latents = torch.randn(parts["noisy"].shape, generator=generator)
    noise = torch.randn(parts["noisy"].shape, generator=generator)
    edges = torch.tensor([759, 499, 259, 759, 499, 259])
    result = prepare.rollout(latents, noise, edges, parts["context"])
    for i, edge in enumerate(edges.tolist()):
        a, sigma = _levels(999)
        x, t = a * latents[i].double() + sigma * noise[i].double(), 999
        for following in (759, 499, 259):
            if t <= edge:
                break
            x, t = _move(_unet(parts["target"], x, t, parts["context"][i]), x, t, following), following
        torch.testing.assert_close(result[i].double(), x, rtol=1e-4, atol=2e-5, msg=f"edge {edge}")


def test_rolled_out_samples_train_at_their_edge_from_the_rollout(parts):
    """With rollout_fraction 1 every input is the target network's sample at a lower phase edge and the target is
    the teacher's solution from there; with 0 the inputs are the data noised at the drawn timesteps."""
    prepare = _prepare(parts, "pcm", "phase", rollout_fraction=1.0)
    latents, noise = _fixed_batch(prepare, parts, seed=6)
    torch.manual_seed(8)
    noisy, target, _, kwargs = prepare({})
    timesteps = kwargs["timesteps"]
    assert set(timesteps.tolist()) <= {759, 499, 259}
    torch.testing.assert_close(noisy, prepare.rollout(latents, noise, timesteps, parts["context"]))
    torch.testing.assert_close(target, prepare.targets(noisy, timesteps, parts["context"]))

    plain = _prepare(parts, "pcm", "phase")
    latents, noise = _fixed_batch(plain, parts, seed=6)
    torch.manual_seed(8)
    noisy, _, _, kwargs = plain({})
    torch.manual_seed(8)
    expected_timesteps = plain.draw_timesteps(len(latents), torch.device("cpu"))
    assert torch.equal(kwargs["timesteps"], expected_timesteps)
    expected = plain.scheduler.add_noise(original_samples=latents, noise=noise, timesteps=expected_timesteps)
    torch.testing.assert_close(noisy, expected)


def test_rollout_is_refused_where_it_cannot_apply(parts):
    with pytest.raises(ValueError, match="rollout_fraction must be in"):
        _prepare(parts, "pcm", "phase", rollout_fraction=1.5)
    with pytest.raises(ValueError, match="rollout_fraction > 0 needs the phased method"):
        _prepare(parts, "lcm", 1, rollout_fraction=0.25)


def test_phase_loss_weights_scale_the_student_and_its_target_by_their_phase(parts):
    """Timesteps 999, 759, 499, 259 lie in phases 1-4 (lower edges 759, 499, 259, clean): with factors 2, 3, 5, 7
    the inferer's f and the prepared target are those without weights times their phase's factor."""
    from scripts.training.distillation import ConsistencyInferer, consistency_parameterisation

    timesteps = torch.tensor([999, 759, 499, 259, 999, 259])
    factors = torch.tensor([2.0, 3.0, 5.0, 7.0, 2.0, 7.0]).reshape(-1, 1, 1, 1)
    noisy = parts["noisy"][: len(timesteps)]
    plain = ConsistencyInferer(consistency_parameterisation("pcm", parts["scheduler"], num_phases=4))
    weighted = ConsistencyInferer(
        consistency_parameterisation("pcm", parts["scheduler"], num_phases=4, phase_loss_weights=[2, 3, 5, 7])
    )
    with torch.no_grad():
        expected = plain(noisy, parts["teacher"], timesteps=timesteps, condition=parts["context"])
        result = weighted(noisy, parts["teacher"], timesteps=timesteps, condition=parts["context"])
    torch.testing.assert_close(result, factors * expected)

    prepare = _prepare(parts, "pcm", "phase")
    prepare.consistency = weighted.consistency
    _fixed_batch(prepare, parts, seed=9)
    prepare.draw_timesteps = lambda batch, device: timesteps
    noisy, target, _, _ = prepare({})
    torch.testing.assert_close(target, factors * prepare.targets(noisy, timesteps, parts["context"]))


def test_bad_phase_loss_weights_are_refused_in_one_line(parts):
    from scripts.training.distillation import consistency_parameterisation

    for weights in ([1.0, 3.0, 1.0], [1.0, 0.0, 1.0, 1.0]):
        with pytest.raises(ValueError, match="phase_loss_weights must be 4 positive factors"):
            consistency_parameterisation("pcm", parts["scheduler"], num_phases=4, phase_loss_weights=weights)


def test_distill_config_defaults_are_the_measured_recipe_and_lcm_turns_rollout_off():
    from helpers.bundle import distill_configs, load_parser

    parser = load_parser(distill_configs(), {})
    assert parser.get_parsed_content("emphasised_timestep_fraction") == 0.5
    assert parser.get_parsed_content("rollout_fraction") == 0.5
    assert parser.get_parsed_content("phase_loss_weights") == [1.0, 3.0, 1.0, 1.0]
    lcm = load_parser(distill_configs(), {"distill_method": "lcm"})
    assert lcm.get_parsed_content("rollout_fraction") == 0.0
    assert load_parser(distill_configs(), {"num_phases": 2}).get_parsed_content("phase_loss_weights") is None
