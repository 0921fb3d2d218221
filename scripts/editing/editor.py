"""Text-guided editing of real radiographs with the text-to-image model, without retraining.

``TextGuidedEditor`` is the inferer of ``configs/edit.json``. For each image of a batch:

1. the prepared radiograph x (``scripts.editing.inputs``) is encoded to clean latents z0 (the mean of
   the autoencoder's posterior, times ``scale_factor``);
2. z0 is noised with the image's seeded noise ε to the level of step ``N - s`` of the scheduler's ``N``
   steps, ``s = round(strength · N)`` (SDEdit, Meng et al. 2022): strength 1 starts from (almost) pure
   noise, 0 runs no step and returns the input;
3. the remaining ``s`` guided steps run in the sampler's own loop; after each, latents outside the
   editable region (the edit mask minus the keep mask, max-pooled to the latent grid) are replaced by z0
   noised with the same ε to the level just reached (blended latent diffusion / RePaint); after the last
   step they are z0 itself;
4. the latents are decoded, and pixels inside the keep mask are copied from x with a linear feather of
   ``feather_pixels`` pixels outside it, so the keep region is bit-identical to the prepared input.

Using the image's own ε for every re-noising keeps the known region on the path a deterministic solver
would take from z0, so the edited region meets it without a seam in noise level.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.inferers import Inferer

from scripts.networks.schedulers import noise_to_step
from scripts.sampling.sampler import GuidedLatentSampler, initial_latents


def denoising_steps(strength: float, num_inference_steps: int) -> int:
    """Steps an edit of ``strength`` (in [0, 1]) runs: round(strength × num_inference_steps); 0 returns the input.

    The last ``denoising_steps`` of the schedule run, from start index ``num_inference_steps - denoising_steps``.
    """
    return int(round(float(strength) * int(num_inference_steps)))


def feathered_weight(region: torch.Tensor, feather_pixels: int) -> torch.Tensor:
    """Weight (B, 1, H, W) in [0, 1]: exactly 1 inside ``region`` (B, 1, H, W of 0/1), falling linearly to 0
    over ``feather_pixels`` pixels outside it (square distance: one 3×3 dilation per pixel of width)."""
    region = (region > 0.5).float()
    dilated, total = region, region.clone()
    for _ in range(int(feather_pixels)):
        dilated = F.max_pool2d(dilated, kernel_size=3, stride=1, padding=1)
        total = total + dilated
    return total / (int(feather_pixels) + 1)


class TextGuidedEditor(Inferer):
    """Image-to-image, masked inpainting and two-mask editing with a guided sampler (see the module docstring).

    The inferer of ``configs/edit.json``, beside the config's ``sampler``: it runs that sampler's denoising loop,
    scheduler, precision and decoder (and shares its prompt-embedding cache and compiled UNet).

    Args:
        sampler: the ``GuidedLatentSampler`` whose model, scheduler, steps, guidance and speed settings it uses.
        feather_pixels: width in pixels of the blend from the keep region (copied from the input) to the
            edited image; 0 is a hard edge.
    """

    def __init__(self, sampler: GuidedLatentSampler, feather_pixels: int = 8) -> None:
        super().__init__()
        if int(feather_pixels) < 0:
            raise ValueError(f"feather_pixels must be >= 0, got {feather_pixels}.")
        self.sampler = sampler
        self.feather_pixels = int(feather_pixels)

    def identity(self) -> dict:
        """The sampler's identity and the feather width, which changes the pixels near a keep region."""
        return {**self.sampler.identity(), "feather_pixels": self.feather_pixels}

    def speed_switches(self) -> dict:
        """The sampler's rounding-only switches (``GuidedLatentSampler.speed_switches``)."""
        return self.sampler.speed_switches()

    def with_settings(self, **settings) -> TextGuidedEditor:
        """This editor over ``sampler.with_settings(**settings)`` (another scheduler, steps, guidance or progress)."""
        return TextGuidedEditor(self.sampler.with_settings(**settings), self.feather_pixels)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Clean latents (B, *latent_shape) of images (B, 1, H, W) in [0, 1]: the posterior mean × scale_factor.

        The encoder runs in float32, like the decoder.
        """
        z_mu, _ = self.sampler.autoencoder.encode(images.float())
        latents = z_mu.float() * self.sampler.scale_factor
        if tuple(latents.shape[1:]) != self.sampler.latent_shape:
            raise ValueError(
                f"{tuple(images.shape[-2:])} images encode to latents {tuple(latents.shape[1:])}, but latent_shape "
                f"is {self.sampler.latent_shape}: set --image_size to match --latent_shape."
            )
        return latents

    def latent_region(self, edit_region: torch.Tensor, keep_region: torch.Tensor) -> torch.Tensor | None:
        """Where latents may change (B, 1, h, w of 0/1): a latent cell holding any editable pixel (edit and not
        keep; the keep pixels are restored after decoding). None when every pixel is editable."""
        editable = (edit_region > 0.5) & (keep_region <= 0.5)
        if bool(editable.all()):
            return None
        height, width = self.sampler.latent_shape[-2:]
        return F.adaptive_max_pool2d(editable.float(), (height, width))

    def edit_latents(
        self,
        unet: torch.nn.Module,
        clean: torch.Tensor,
        noise: torch.Tensor,
        context: torch.Tensor,
        uncond_context: torch.Tensor,
        seeds: Sequence[int],
        steps: int,
        region: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Edited clean latents (B, *latent_shape) after the last ``steps`` (>= 1) of the schedule.

        ``clean`` and ``noise``: z0 and ε (B, *latent_shape); ``region``: where latents may change
        (B, 1, h, w; None: everywhere).
        """
        self.sampler.scheduler.set_timesteps(self.sampler.num_inference_steps, device=clean.device)
        start = self.sampler.num_inference_steps - int(steps)
        latents = noise_to_step(self.sampler.scheduler, clean, noise, start)

        def restore_known(index: int, latents: torch.Tensor) -> torch.Tensor:
            known = noise_to_step(self.sampler.scheduler, clean, noise, index)
            return torch.where(region > 0.5, latents.float(), known)

        return self.sampler.denoise(
            unet,
            latents,
            context,
            uncond_context,
            seeds=seeds,
            start_index=start,
            after_step=None if region is None else restore_known,
        )

    def __call__(self, inputs: dict, network: torch.nn.Module, *args, **kwargs) -> torch.Tensor:
        """Edited images (B, 1, H, W) in [0, 1].

        Args:
            inputs: a batch of edit jobs (``scripts.sampling.jobs.collate_jobs``): lists ``prompt``,
                ``negative_prompt``, ``seed``, ``strength``, and tensors (B, 1, H, W) ``input_image``
                in [0, 1], ``edit_region`` and ``keep_region`` of 0/1.
            network: the diffusion UNet.
        """
        prompts = [str(p) for p in inputs["prompt"]]
        negatives = [str(p) for p in inputs["negative_prompt"]]
        seeds = [int(s) for s in inputs["seed"]]
        steps = [denoising_steps(s, self.sampler.num_inference_steps) for s in inputs["strength"]]
        device = next(network.parameters()).device
        images = torch.as_tensor(inputs["input_image"]).float().to(device)
        edit_region = torch.as_tensor(inputs["edit_region"]).float().to(device)
        keep_region = torch.as_tensor(inputs["keep_region"]).float().to(device)
        network.eval()
        edited = images.clone()
        with torch.inference_mode():
            # images of one batch may run different numbers of steps (their strengths): one loop per count
            for count in sorted(set(steps) - {0}):
                rows = [i for i, s in enumerate(steps) if s == count]
                index = torch.tensor(rows, device=device)
                group_seeds = [seeds[i] for i in rows]
                context, uncond_context = self.sampler.contexts(
                    [prompts[i] for i in rows], [negatives[i] for i in rows], device
                )
                clean = self.encode_images(images[index])
                noise = initial_latents(group_seeds, self.sampler.latent_shape).to(device)
                region = self.latent_region(edit_region[index], keep_region[index])
                latents = self.edit_latents(network, clean, noise, context, uncond_context, group_seeds, count, region)
                self.sampler.check_finite(latents, [prompts[i] for i in rows], group_seeds)
                edited[index] = self.sampler.decode(latents)
            weight = feathered_weight(keep_region, self.feather_pixels)
            return weight * images + (1.0 - weight) * edited
