"""Full-size parity and speed of the diffusers export: the same images through the bundle and the exported folder.

    python -m benchmarks.diffusers_parity --work_dir /tmp/cxr_ldm_diffusers --output_json diffusers_parity.json

Without weights files (``--model_dir`` empty or absent) the released architecture is built with random
weights (zero-initialised layers filled, so the UNet's output depends on its input) and an SD-2.1-shaped
random text encoder; they are written to ``<work_dir>/model`` and exported with
``scripts.distribution.export_diffusers`` to ``<work_dir>/diffusers``. Then, in float32 on ``device``:

- networks: the largest difference between the MONAI UNet and the exported ``UNet2DConditionModel`` (one
  guided batch at a few timesteps), and between the autoencoders (decode, and encode of a decoded image);
- speed: the median time of one guided UNet call (batch 2) and of one decode of each route, interleaved
  (``timing_repeats`` rounds after a warm-up round);
- samplers: for each of ``schedulers``, ``prompts`` × one seed each, image by image through the bundle's
  sampler and the pipeline (per-image generators; which route goes first alternates): the largest difference
  of the final latents and of the images in [0, 1] (and in 8-bit grey levels), and the seconds per image of
  each route.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import torch

from scripts.common.configs import INFERENCE_CONFIGS, load_parser
from scripts.distribution.diffusers_parity import seed_generators, use_bundle_scheduler
from scripts.distribution.export_diffusers import CHECK_SETTINGS, export, load_pipeline
from scripts.networks.precision import cpu_flags, cpu_model
from scripts.networks.weights import fill_zero_initialised
from scripts.sampling.sampler import initial_latents

PROMPTS = ("Big right-sided pleural effusion", "Cardiomegaly with small bilateral effusions")


def write_random_model(folder: Path, config_files, seed: int = 0) -> Path:
    """Random weights in ``folder``: the configs' autoencoder and UNet, an SD-2.1-shaped text encoder."""
    from benchmarks.sampling_benchmark import random_text_encoder

    folder.mkdir(parents=True, exist_ok=True)
    parser = load_parser(config_files)
    torch.manual_seed(seed)
    torch.save(parser.get_parsed_content("autoencoder_def").state_dict(), folder / "autoencoder.pt")
    torch.save(
        fill_zero_initialised(parser.get_parsed_content("network_def"), seed=seed).state_dict(), folder / "model.pt"
    )
    random_text_encoder(int(parser["network_def"]["cross_attention_dim"])).save_pretrained(folder / "text_encoder")
    return folder


def model_settings(model_dir: Path) -> dict:
    """Config overrides that load the weights of ``model_dir`` (this bundle's layout)."""
    return {
        "model_dir": str(model_dir),
        "load_old": False,
        "text_encoder_source": str(model_dir / "text_encoder"),
    }


@torch.inference_mode()
def network_differences(parser, pipeline, seed: int = 0) -> dict:
    """Largest differences between the bundle's networks and the pipeline's, on random inputs."""
    generator = torch.Generator().manual_seed(seed)
    unet, autoencoder = parser.get_parsed_content("network"), parser.get_parsed_content("autoencoder")
    device = next(unet.parameters()).device
    latent_shape = tuple(parser.get_parsed_content("latent_shape"))
    latents = torch.randn((2, *latent_shape), generator=generator).to(device)
    context = torch.randn((2, 77, int(parser["network_def"]["cross_attention_dim"])), generator=generator).to(device)
    report = {}
    for timestep in (999, 500, 20):
        t = torch.full((2,), timestep, device=device)
        ours = unet(latents, timesteps=t, context=context)
        theirs = pipeline.unet(latents, t, encoder_hidden_states=context).sample
        report[f"unet_t{timestep}"] = {
            "max_abs_difference": float((ours - theirs).abs().max()),
            "max_abs_output": float(ours.abs().max()),
        }
    scale = float(parser.get_parsed_content("scale_factor"))
    ours = autoencoder.decode(latents[:1] / scale)
    theirs = (pipeline.vae.decode(latents[:1] / scale).sample + 1) / 2
    report["decode"] = {
        "max_abs_difference": float((ours - theirs).abs().max()),
        "max_abs_output": float(ours.abs().max()),
    }
    image = ours.clamp(0, 1)
    mean, _ = autoencoder.encode(image)
    posterior = pipeline.vae.encode(image * 2 - 1).latent_dist
    report["encode_mean"] = {
        "max_abs_difference": float((mean - posterior.mean).abs().max()),
        "max_abs_output": float(mean.abs().max()),
    }
    return report


@torch.inference_mode()
def step_seconds(parser, pipeline, repeats: int = 3, seed: int = 0) -> dict:
    """Median seconds of one guided UNet call (batch 2) and of one decode, each network in turn, ``repeats`` times:
    interleaved, so that load from other work on shared cores touches both routes alike."""
    generator = torch.Generator().manual_seed(seed)
    unet, autoencoder = parser.get_parsed_content("network"), parser.get_parsed_content("autoencoder")
    device = next(unet.parameters()).device
    latents = torch.randn((2, *parser.get_parsed_content("latent_shape")), generator=generator).to(device)
    context = torch.randn((2, 77, int(parser["network_def"]["cross_attention_dim"])), generator=generator).to(device)
    t = torch.full((2,), 500, device=device)
    calls = {
        "bundle_unet": lambda: unet(latents, timesteps=t, context=context),
        "diffusers_unet": lambda: pipeline.unet(latents, t, encoder_hidden_states=context),
        "bundle_decode": lambda: autoencoder.decode(latents[:1]),
        "diffusers_decode": lambda: pipeline.vae.decode(latents[:1]),
    }
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(int(repeats) + 1):  # the first round warms up
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values[1:]) for name, values in times.items()}


@torch.inference_mode()
def bundle_route(sampler, network, prompt: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(final latents, image in [0, 1]) of the bundle's sampler: its ``__call__`` in its own steps."""
    device = next(network.parameters()).device
    context, uncond = sampler.contexts([prompt], [""], device)
    latents = sampler.denoise(network, initial_latents([seed], sampler.latent_shape).to(device), context, uncond)
    return latents.float().cpu(), sampler.decode(latents).cpu()


@torch.inference_mode()
def pipeline_route(pipeline, prompt: str, seed: int, steps: int, guidance: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(final latents, image in [0, 1]) of the pipeline: ``output_type="latent"``, then the decoding and
    post-processing ``StableDiffusionPipeline`` applies for ``output_type="pt"``."""
    generator = seed_generators([seed])
    latents = pipeline(
        [prompt], num_inference_steps=steps, guidance_scale=guidance, generator=generator, output_type="latent"
    ).images
    decoded = pipeline.vae.decode(latents / pipeline.vae.config.scaling_factor).sample
    return latents.float().cpu(), pipeline.image_processor.postprocess(decoded, output_type="pt").float().cpu()


def sampler_parity(parser, pipeline, scheduler_name: str, prompts, seed: int) -> dict:
    """Both routes for ``scheduler_name``, image by image: latent and image differences, seconds per image."""
    parser["scheduler_name"] = scheduler_name
    sampler, network = parser.get_parsed_content("sampler"), parser.get_parsed_content("network")
    use_bundle_scheduler(pipeline, scheduler_name)
    latents, images, seconds = (
        {"bundle": [], "diffusers": []},
        {"bundle": [], "diffusers": []},
        {"bundle": 0.0, "diffusers": 0.0},
    )
    for index, prompt in enumerate(prompts):
        # alternate which route goes first, so that a change of load on shared cores touches both alike
        for route in ("bundle", "diffusers") if index % 2 == 0 else ("diffusers", "bundle"):
            start = time.perf_counter()
            if route == "bundle":
                latent, image = bundle_route(sampler, network, prompt, seed + index)
            else:
                latent, image = pipeline_route(
                    pipeline, prompt, seed + index, sampler.num_inference_steps, float(sampler.guidance_scale)
                )
            seconds[route] += time.perf_counter() - start
            latents[route].append(latent)
            images[route].append(image)
    a, b = torch.cat(images["bundle"]), torch.cat(images["diffusers"])
    return {
        "max_abs_latent_difference": float(
            (torch.cat(latents["bundle"]) - torch.cat(latents["diffusers"])).abs().max()
        ),
        "max_abs_latent": float(torch.cat(latents["bundle"]).abs().max()),
        "max_abs_image_difference": float((a - b).abs().max()),
        "image_rmse": float((a - b).pow(2).mean().sqrt()),
        "max_grey_levels": int(((a * 255).round() - (b * 255).round()).abs().max()),
        "unclipped_pixel_fraction": float(((a > 0) & (a < 1)).float().mean()),
        "bundle_seconds_per_image": seconds["bundle"] / len(prompts),
        "diffusers_seconds_per_image": seconds["diffusers"] / len(prompts),
        "images": len(prompts),
    }


def main(
    work_dir: str = "diffusers_parity",
    model_dir: str | None = None,
    schedulers=("unipc_karras",),
    num_inference_steps: int = 20,
    prompts=PROMPTS,
    seed: int = 42,
    device: str = "cpu",
    output_json: str | None = None,
    config_file=None,
    timing_repeats: int = 3,
) -> dict:
    """Export (random weights unless ``model_dir`` holds some), then measure; print and return the report.

    ``config_file``: the configs defining the networks (default the inference chain: full size).
    """
    work = Path(work_dir)
    files = list(config_file or INFERENCE_CONFIGS)
    model = Path(model_dir) if model_dir else work / "model"
    if not (model / "model.pt").is_file():
        write_random_model(model, files)
    folder = work / "diffusers"
    settings = {**model_settings(model), "device": f"$torch.device('{device}')"}
    start = time.perf_counter()
    if not (folder / "model_index.json").is_file():
        export(folder, config_file=files, check_steps=0, **settings)
    export_seconds = time.perf_counter() - start
    parser = load_parser(files, {**settings, **CHECK_SETTINGS, "num_inference_steps": num_inference_steps})
    pipeline = load_pipeline(folder, device)
    report = {
        "command": "python -m benchmarks.diffusers_parity",
        "machine": {
            "processor": cpu_model(),
            "bf16_units": sorted(cpu_flags() & {"amx_bf16", "avx512_bf16"}),
            "threads": torch.get_num_threads(),
            "load_average_at_start": os.getloadavg()[0],
        },
        "device": device,
        "weights": "random" if not model_dir else str(model),
        "export_seconds": export_seconds,
        "num_inference_steps": num_inference_steps,
        "guidance_scale": float(parser.get_parsed_content("guidance_scale")),
        "networks": network_differences(parser, pipeline),
        "median_seconds": step_seconds(parser, pipeline, timing_repeats) if timing_repeats else None,
        "samplers": {name: sampler_parity(parser, pipeline, name, prompts, seed) for name in schedulers},
    }
    print(json.dumps(report, indent=2))
    if output_json:
        with open(output_json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
    return report


if __name__ == "__main__":
    import fire

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    fire.Fire(main, serialize=lambda report: None)
