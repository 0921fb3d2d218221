"""Latent consistency distillation (LCD; Luo et al. 2023, "Latent Consistency Models", Algorithm 1).

A frozen teacher (the trained diffusion UNet) is distilled into a student of the same class that samples in
1-8 steps with classifier-free guidance built in. One training iteration, for a batch of latents z and text
contexts c:

1. draw n uniformly from the N = 50 timesteps t_n = 19, 39, ..., 999 of the skipping-step (DDIM) schedule
   (skip k = 1000 / N = 20 training timesteps) and noise z to x_{t_n} = √ᾱ · z + √(1−ᾱ) · ε;
2. teacher: guided output o = o_∅ + w · (o_c − o_∅) at x_{t_n}, w drawn uniformly from
   ``guidance_scale_range`` ([7, 7]: one fixed scale, the one the released model is sampled with), turned
   into (x̂0, ε̂) and stepped by DDIM to t_n − k (clamped at 0): x̂_{t_n−k} = √ᾱ' · x̂0 + √(1−ᾱ') · ε̂;
3. target: the target network θ⁻ (an EMA of the student, rate 0.95) evaluates the consistency function
   f(x̂_{t_n−k}, t_n − k) without gradient;
4. student: f_θ(x_{t_n}, t_n), and the loss is the pseudo-Huber distance √((f_θ − f_θ⁻)² + c²) − c.

The consistency function of a UNet output o at (x_t, t) is f = c_skip(t) · x_t + c_out(t) · x̂0(o, x_t, t)
(``scripts.networks.lcm.boundary_scalings``; σ_data 0.5, timestep scaling 10), the same as the LCM sampler's.
Steps 1-3 happen in ``ConsistencyDistillationPrepareBatch`` (no gradient), step 4 in
``ConsistencyInferer`` and ``PseudoHuberLoss``: a plain MONAI ``SupervisedTrainer`` runs the iteration,
with AMP, checkpoints and handlers exactly as the diffusion stage (``configs/distill.json``).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Sequence

import torch
from monai.inferers import Inferer

from scripts.networks.lcm import ORIGINAL_INFERENCE_STEPS, SIGMA_DATA, TIMESTEP_SCALING, boundary_scalings
from scripts.networks.text import encode_ids
from scripts.training.diffusion import LatentVPredictionPrepareBatch


def student_from_teacher(teacher: torch.nn.Module) -> torch.nn.Module:
    """A trainable copy of ``teacher`` (same class and weights, so the bundle's loaders load the student)."""
    return copy.deepcopy(teacher).requires_grad_(True).train()


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) values shaped (B, 1, ..., 1) to broadcast over ``like`` (B, C, ...)."""
    return values.reshape(-1, *([1] * (like.dim() - 1))).to(like.device, torch.float32)


def clean_and_noise(
    output: torch.Tensor, sample: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, prediction_type: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x̂0, ε̂) implied by a UNet ``output`` at ``sample`` = alpha · x0 + sigma · ε (all (B, C, h, w), float32).

    ``alpha``/``sigma`` broadcast over the sample ((B, 1, 1, 1)). v = alpha · ε − sigma · x0, so for
    v-prediction x̂0 = alpha · x − sigma · v and ε̂ = sigma · x + alpha · v (alpha² + sigma² = 1).
    """
    output, sample = output.float(), sample.float()
    if prediction_type == "v_prediction":
        return alpha * sample - sigma * output, sigma * sample + alpha * output
    if prediction_type == "epsilon":
        return (sample - sigma * output) / alpha, output
    if prediction_type == "sample":
        return output, (sample - alpha * output) / sigma.clamp(min=1e-12)
    raise ValueError(f"prediction_type must be 'v_prediction', 'epsilon' or 'sample', got {prediction_type!r}.")


def consistency_function(
    output: torch.Tensor,
    sample: torch.Tensor,
    timesteps: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    prediction_type: str,
    timestep_scaling: float = TIMESTEP_SCALING,
    sigma_data: float = SIGMA_DATA,
) -> torch.Tensor:
    """f = c_skip(t) · x_t + c_out(t) · x̂0 (B, C, h, w) of a UNet ``output`` at ``sample`` x_t, ``timesteps`` (B,)."""
    alpha_bar = _per_sample(alphas_cumprod.to(timesteps.device)[timesteps], sample)
    clean, _ = clean_and_noise(output, sample, alpha_bar.sqrt(), (1.0 - alpha_bar).sqrt(), prediction_type)
    c_skip, c_out = boundary_scalings(timesteps, sigma_data, timestep_scaling)
    return _per_sample(c_skip, sample) * sample.float() + _per_sample(c_out, sample) * clean


class ConsistencyDistillationPrepareBatch(LatentVPredictionPrepareBatch):
    """``prepare_batch`` of latent consistency distillation: the noisy input and the target network's target.

    From a batch ``{"image": (B, 1, H, W) in [0, 1], "prompt_ids": (B, 77)}`` it returns
    ``(x_t (B, 3, h, w), target (B, 3, h, w), (), {"timesteps": t (B,), "condition": context (B, 77, C)})``:
    x_t is the scaled latent noised to a timestep t of the skipping-step schedule, and the target is the
    target network's consistency function at the teacher's guided DDIM step from (x_t, t) to t − k.

    Args:
        autoencoder, text_encoder, scale_factor, sample_latents, cross_attention_dim: as
            ``LatentVPredictionPrepareBatch`` (frozen first stage and text encoder).
        scheduler: the training noise schedule (``alphas_cumprod``, ``prediction_type``).
        teacher: the frozen diffusion UNet.
        target_network: θ⁻, the EMA of the student (updated by the trainer's EMA handler).
        null_prompt_ids: (77,) token ids of the null prompt, the teacher's unconditional branch.
        guidance_scale_range: [w_min, w_max]; each sample's teacher guidance is uniform in it (equal: fixed).
        num_ddim_timesteps: N of the skipping-step schedule (50: skip k = 20 of 1000 timesteps); it must be
            the sampler's ``original_inference_steps``.
        timestep_scaling, sigma_data: the boundary-condition constants (10, 0.5).
        amp: run the teacher and target passes under ``torch.autocast(**amp_kwargs)``.
    """

    def __init__(
        self,
        autoencoder: torch.nn.Module,
        text_encoder: torch.nn.Module,
        scheduler,
        scale_factor: float,
        teacher: torch.nn.Module,
        target_network: torch.nn.Module,
        null_prompt_ids: torch.Tensor,
        guidance_scale_range: Sequence[float] = (7.0, 7.0),
        num_ddim_timesteps: int = ORIGINAL_INFERENCE_STEPS,
        timestep_scaling: float = TIMESTEP_SCALING,
        sigma_data: float = SIGMA_DATA,
        sample_latents: bool = True,
        amp: bool = False,
        amp_kwargs: dict | None = None,
        image_key: str = "image",
        prompt_key: str = "prompt_ids",
        cross_attention_dim: int | None = None,
    ) -> None:
        super().__init__(
            autoencoder,
            text_encoder,
            scheduler,
            scale_factor,
            sample_latents,
            image_key,
            prompt_key,
            cross_attention_dim,
        )
        low, high = (float(v) for v in guidance_scale_range)
        if not low <= high:
            raise ValueError(
                f"guidance_scale_range must be [w_min, w_max] with w_min <= w_max, got {guidance_scale_range}."
            )
        num_train = int(scheduler.num_train_timesteps)
        if not 1 <= int(num_ddim_timesteps) <= num_train or num_train % int(num_ddim_timesteps):
            raise ValueError(
                f"num_ddim_timesteps must divide the {num_train} training timesteps, got {num_ddim_timesteps}."
            )
        self.teacher = teacher.eval().requires_grad_(False)
        self.target_network = target_network
        self.null_prompt_ids = torch.as_tensor(null_prompt_ids).reshape(1, -1)
        self.guidance_scale_range = (low, high)
        self.skip = num_train // int(num_ddim_timesteps)
        # t_n = k·(n+1) − 1: 19, 39, ..., 999, the timesteps of diffusers' LCMScheduler (leading spacing)
        self.ddim_timesteps = torch.arange(1, int(num_ddim_timesteps) + 1) * self.skip - 1
        self.timestep_scaling = float(timestep_scaling)
        self.sigma_data = float(sigma_data)
        self.prediction_type = scheduler.prediction_type
        self.amp = bool(amp)
        self.amp_kwargs = dict(amp_kwargs or {})
        self._null_context: torch.Tensor | None = None

    def _autocast(self, device: torch.device):
        return torch.autocast(device_type=device.type, **self.amp_kwargs) if self.amp else contextlib.nullcontext()

    def null_context(self, device: torch.device) -> torch.Tensor:
        """(1, 77, C) text-encoder output of the null prompt, computed once."""
        if self._null_context is None or self._null_context.device != torch.device(device):
            with torch.no_grad():
                self._null_context = encode_ids(self.text_encoder, self.null_prompt_ids).to(device).clone()
        return self._null_context

    def consistency(self, output, sample, timesteps) -> torch.Tensor:
        return consistency_function(
            output,
            sample,
            timesteps,
            self.scheduler.alphas_cumprod,
            self.prediction_type,
            self.timestep_scaling,
            self.sigma_data,
        )

    @torch.no_grad()
    def teacher_step(
        self, noisy: torch.Tensor, timesteps: torch.Tensor, previous: torch.Tensor, context: torch.Tensor
    ) -> torch.Tensor:
        """The teacher's guided DDIM step from ``noisy`` (B, 3, h, w) at ``timesteps`` (B,) to ``previous`` (B,)."""
        batch, device = noisy.shape[0], noisy.device
        low, high = self.guidance_scale_range
        scale = _per_sample(low + (high - low) * torch.rand(batch, device=device), noisy)
        uncond = self.null_context(device).expand(batch, -1, -1)
        with self._autocast(device):
            output = self.teacher(
                torch.cat([noisy, noisy]),
                timesteps=torch.cat([timesteps, timesteps]),
                context=torch.cat([uncond, context]),
            ).float()
        out_uncond, out_cond = output.chunk(2)
        guided = out_uncond + scale * (out_cond - out_uncond)
        alphas_cumprod = self.scheduler.alphas_cumprod.to(device)
        alpha_bar, alpha_bar_prev = (
            _per_sample(alphas_cumprod[timesteps], noisy),
            _per_sample(alphas_cumprod[previous], noisy),
        )
        clean, noise = clean_and_noise(guided, noisy, alpha_bar.sqrt(), (1.0 - alpha_bar).sqrt(), self.prediction_type)
        return alpha_bar_prev.sqrt() * clean + (1.0 - alpha_bar_prev).sqrt() * noise

    def __call__(self, batchdata: dict, device=None, non_blocking: bool = False, **kwargs):
        latents, context = self.encode(batchdata, device, non_blocking)
        noise = self.get_noise(latents)
        index = torch.randint(0, len(self.ddim_timesteps), (latents.shape[0],), device=latents.device)
        timesteps = self.ddim_timesteps.to(latents.device)[index]
        previous = (timesteps - self.skip).clamp(min=0)
        noisy = self.scheduler.add_noise(original_samples=latents, noise=noise, timesteps=timesteps)
        stepped = self.teacher_step(noisy, timesteps, previous, context)
        with torch.no_grad(), self._autocast(noisy.device):
            target_output = self.target_network(stepped, timesteps=previous, context=context)
        target = self.consistency(target_output, stepped, previous)
        return noisy, target, (), {"timesteps": timesteps, "condition": context}


class ConsistencyInferer(Inferer):
    """The student's consistency function f_θ(x_t, t) (B, 3, h, w), float32, as a MONAI inferer.

    Args:
        scheduler: the training noise schedule (``alphas_cumprod``, ``prediction_type``).
        timestep_scaling, sigma_data: the boundary-condition constants (10, 0.5).
    """

    def __init__(self, scheduler, timestep_scaling: float = TIMESTEP_SCALING, sigma_data: float = SIGMA_DATA) -> None:
        super().__init__()
        self.scheduler = scheduler
        self.timestep_scaling = float(timestep_scaling)
        self.sigma_data = float(sigma_data)

    def __call__(self, inputs: torch.Tensor, network, timesteps: torch.Tensor, condition: torch.Tensor, **kwargs):
        output = network(inputs, timesteps=timesteps, context=condition)
        return consistency_function(
            output,
            inputs,
            timesteps,
            self.scheduler.alphas_cumprod,
            self.scheduler.prediction_type,
            self.timestep_scaling,
            self.sigma_data,
        )


class PseudoHuberLoss(torch.nn.Module):
    """Mean of √((a − b)² + c²) − c over all elements (LCM's distance; ~L2/(2c) near 0, ~L1 beyond c).

    Args:
        c: the transition scale (0.001, as in LCM's latent-space distillation).
    """

    def __init__(self, c: float = 0.001) -> None:
        super().__init__()
        if float(c) <= 0:
            raise ValueError(f"pseudo-Huber c must be > 0, got {c}.")
        self.c = float(c)

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        difference = prediction.float() - target.float()
        return (torch.sqrt(difference**2 + self.c**2) - self.c).mean()
