"""Second stage: the text-conditioned diffusion UNet on autoencoder latents.

MONAI's ``VPredictionPrepareBatch`` draws noise shaped like the *images* it is given; latent diffusion
must first map each batch into latent space. ``LatentVPredictionPrepareBatch`` does that with the frozen
first-stage autoencoder (latents × ``scale_factor``) and the frozen text encoder, then lets MONAI add
noise, draw timesteps and compute the v-target, so a plain ``SupervisedTrainer`` with a
``DiffusionInferer`` and an MSE loss trains the UNet.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from ignite.engine import Engine, Events
from monai.engines.utils import VPredictionPrepareBatch

from scripts.networks.text import check_context_width, encode_ids

logger = logging.getLogger(__name__)


class LatentVPredictionPrepareBatch(VPredictionPrepareBatch):
    """``prepare_batch`` for v-prediction training in the latent space of a frozen autoencoder.

    From a batch ``{"image": (B, 1, H, W) in [0, 1], "prompt_ids": (B, 77) long}`` it returns
    ``(latents, v_target, (), {"noise", "timesteps", "condition"})`` where ``latents`` (B, 3, H/8, W/8) are
    ``scale_factor`` × a sample of q(z | image) (or its mean), ``condition`` (B, 77, C) is the text encoder's
    ``last_hidden_state`` of ``prompt_ids``, ``noise`` ~ N(0, I) like the latents, ``timesteps`` (B,) are
    uniform in [0, num_train_timesteps), and ``v_target = scheduler.get_velocity(latents, noise, timesteps)``.
    Null-prompt dropout happens earlier, in the data transforms (``prompt_ids`` already holds the null
    prompt for the dropped reports).

    Args:
        autoencoder: frozen ``AutoencoderKL``.
        text_encoder: frozen ``CLIPTextModel``.
        scheduler: scheduler of the training noise schedule (``prediction_type="v_prediction"``).
        scale_factor: latent scale (1/std of the latents; 0.3 for the released model).
        sample_latents: encode to a sample of q(z | image), as the reference recipe does (True), or to its
            mean (False: deterministic latents).
        image_key / prompt_key: batch keys of images and token ids.
        cross_attention_dim: the UNet's context width; checked against the text encoder's when given.
    """

    def __init__(
        self,
        autoencoder: torch.nn.Module,
        text_encoder: torch.nn.Module,
        scheduler,
        scale_factor: float,
        sample_latents: bool = True,
        image_key: str = "image",
        prompt_key: str = "prompt_ids",
        cross_attention_dim: int | None = None,
    ) -> None:
        super().__init__(scheduler=scheduler, num_train_timesteps=scheduler.num_train_timesteps, condition_name=None)
        if float(scale_factor) <= 0:
            raise ValueError(f"scale_factor must be > 0, got {scale_factor}.")
        self.autoencoder = autoencoder.eval().requires_grad_(False)
        self.text_encoder = text_encoder.eval().requires_grad_(False)
        if cross_attention_dim is not None:
            check_context_width(text_encoder, cross_attention_dim)
        self.scale_factor = float(scale_factor)
        self.sample_latents = bool(sample_latents)
        self.image_key = image_key
        self.prompt_key = prompt_key

    @torch.no_grad()
    def encode(self, batchdata: dict, device: torch.device | str | None, non_blocking: bool = False):
        """Scaled latents (B, 3, h, w) and context (B, 77, C) of a data batch."""
        images = batchdata[self.image_key].to(device, non_blocking=non_blocking).float()
        if self.sample_latents:
            latents = self.autoencoder.encode_stage_2_inputs(images)
        else:
            latents = self.autoencoder.encode(images)[0]
        latents = latents * self.scale_factor
        context = encode_ids(self.text_encoder, batchdata[self.prompt_key]).to(device)
        return latents, context.clone()  # clone: encode_ids runs in inference mode

    def __call__(self, batchdata: dict, device=None, non_blocking: bool = False, **kwargs):
        latents, context = self.encode(batchdata, device, non_blocking)
        noise = self.get_noise(latents)
        timesteps = self.get_timesteps(latents)
        target = self.get_target(latents, noise, timesteps)
        return latents, target, (), {"noise": noise, "timesteps": timesteps, "condition": context}


class GuidedSampleImages:
    """Every ``interval`` epochs, sample a few guided images from the (EMA) UNet and log them to TensorBoard.

    Args:
        sampler: ``scripts.sampling.sampler.GuidedLatentSampler`` (the inference config's ``inferer``).
        network: the UNet to sample (the EMA copy).
        prompts: report texts of the images; seeds are ``seed``, ``seed + 1``, ...
        summary_writer: ``torch.utils.tensorboard.SummaryWriter`` (images go to tag ``samples``, prompts to
            ``samples/prompt_<i>``).
        interval: epochs between sample sets (<= 0: never).
        seed: seed of the first image, the same every time so that epochs compare.
    """

    def __init__(
        self,
        sampler,
        network: torch.nn.Module,
        prompts: Sequence[str],
        summary_writer,
        interval: int = 10,
        seed: int = 0,
    ) -> None:
        self.sampler = sampler
        self.network = network
        self.prompts = [str(p) for p in prompts]
        self.summary_writer = summary_writer
        self.interval = int(interval)
        self.seed = int(seed)

    def attach(self, engine: Engine) -> None:
        if self.interval > 0 and self.prompts:
            engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)

    def __call__(self, engine: Engine) -> None:
        jobs = {
            "prompt": self.prompts,
            "negative_prompt": [""] * len(self.prompts),
            "seed": [self.seed + i for i in range(len(self.prompts))],
        }
        was_training = self.network.training
        images = self.sampler(jobs, self.network).cpu()  # (N, 1, H, W) in [0, 1]
        self.last_images = images
        self.network.train(was_training)
        self.summary_writer.add_images("samples", images, engine.state.epoch, dataformats="NCHW")
        for i, prompt in enumerate(self.prompts):
            self.summary_writer.add_text(f"samples/prompt_{i}", prompt, engine.state.epoch)
        self.summary_writer.flush()
