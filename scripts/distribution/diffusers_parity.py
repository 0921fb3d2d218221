"""The same images through the bundle and through an exported diffusers pipeline, and how far apart they are.

``pipeline_images`` is how a diffusers user gets the bundle's pixels: one CPU ``torch.Generator`` per image
seeded with the image's seed (diffusers then draws each image's initial noise exactly as the bundle's
``initial_latents`` does), the bundle's scheduler (``diffusers_scheduler``), and ``output_type="pt"``:
images (B, 1, H, W) in [0, 1]. ``compare_routes`` runs both routes on the same prompts and seeds.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from scripts.distribution.diffusers_configs import diffusers_scheduler


def seed_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per image, seeded with its seed (what the bundle's ``initial_latents`` draws from)."""
    return [torch.Generator().manual_seed(int(seed)) for seed in seeds]


def null_prompt_embeds(pipeline, null_prompt: str, batch: int) -> torch.Tensor | None:
    """``negative_prompt_embeds`` (B, 77, C) for the bundle's ``bos_eos`` null prompt; None for ``empty_prompt``.

    The pipeline's empty negative prompt is the tokenised "", which is the bundle's ``empty_prompt`` null
    prompt; ``bos_eos`` (BOS then 76 EOS) cannot be written as text, so its embedding is handed over.
    """
    from scripts.networks.text import encode_ids, null_prompt_ids

    if null_prompt == "empty_prompt":
        return None
    ids = null_prompt_ids(pipeline.tokenizer, null_prompt)[None].repeat(batch, 1)
    return encode_ids(pipeline.text_encoder, ids)


def pipeline_images(
    pipeline,
    prompts: Sequence[str],
    seeds: Sequence[int],
    num_inference_steps: int,
    guidance_scale: float,
    negative_prompt: str = "",
    null_prompt: str = "empty_prompt",
) -> torch.Tensor:
    """Images (B, 1, H, W) in [0, 1] of an exported pipeline, image i from ``prompts[i]`` and ``seeds[i]``."""
    negative_embeds = null_prompt_embeds(pipeline, null_prompt, len(prompts)) if negative_prompt == "" else None
    with torch.inference_mode():
        output = pipeline(
            list(prompts),
            num_inference_steps=int(num_inference_steps),
            guidance_scale=float(guidance_scale),
            negative_prompt=None if negative_embeds is not None else [negative_prompt] * len(prompts),
            negative_prompt_embeds=negative_embeds,
            generator=seed_generators(seeds),
            output_type="pt",
        )
    return output.images.float().cpu()


def bundle_images(
    sampler, network, prompts: Sequence[str], seeds: Sequence[int], negative_prompt: str = ""
) -> torch.Tensor:
    """Images (B, 1, H, W) in [0, 1] of the bundle's ``sampler`` (``GuidedLatentSampler``) and UNet ``network``."""
    jobs = {"prompt": list(prompts), "negative_prompt": [negative_prompt] * len(prompts), "seed": list(seeds)}
    return sampler(jobs, network).float().cpu()


def use_bundle_scheduler(pipeline, scheduler_name: str) -> None:
    """Give ``pipeline`` the diffusers scheduler that steps as the bundle's ``scheduler_name``."""
    pipeline.scheduler = diffusers_scheduler(scheduler_name, pipeline.scheduler.config)


def compare_routes(
    sampler, network, pipeline, scheduler_name: str, prompts: Sequence[str], seeds: Sequence[int]
) -> dict:
    """Both routes on the same prompts and seeds, one image at a time: differences and seconds per image.

    The pipeline gets the scheduler of ``scheduler_name`` and the sampler's steps, guidance and null prompt.

    Returns:
        ``{"max_abs_difference", "rmse", "max_grey_levels", "bundle_seconds_per_image",
        "diffusers_seconds_per_image", "images"}``; differences over every pixel of images in [0, 1]
        (``max_grey_levels``: of the 8-bit images, round(255·x)).
    """
    use_bundle_scheduler(pipeline, scheduler_name)
    ours, theirs, seconds = [], [], {"bundle": 0.0, "diffusers": 0.0}
    for prompt, seed in zip(prompts, seeds):
        start = time.perf_counter()
        ours.append(bundle_images(sampler, network, [prompt], [seed]))
        seconds["bundle"] += time.perf_counter() - start
        start = time.perf_counter()
        theirs.append(
            pipeline_images(
                pipeline,
                [prompt],
                [seed],
                sampler.num_inference_steps,
                sampler.guidance_scale,
                null_prompt=sampler.null_prompt,
            )
        )
        seconds["diffusers"] += time.perf_counter() - start
    a, b = torch.cat(ours), torch.cat(theirs)
    grey = ((a * 255).round() - (b * 255).round()).abs()
    return {
        "max_abs_difference": float((a - b).abs().max()),
        "rmse": float((a - b).pow(2).mean().sqrt()),
        "max_grey_levels": int(grey.max()),
        "bundle_seconds_per_image": seconds["bundle"] / len(prompts),
        "diffusers_seconds_per_image": seconds["diffusers"] / len(prompts),
        "images": len(prompts),
    }
