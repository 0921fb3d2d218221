"""Text-guided latent sampling: prompts → context → denoised latents → decoded images.

``GuidedLatentSampler`` is the inferer of ``configs/inference.json``. One call follows the order of a
diffusers pipeline: check the inputs, encode the prompts and negative prompts, draw the initial latents
from one generator per image, set the scheduler's timesteps, run the guided denoising loop under a
progress bar, decode, and clip to [0, 1].
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
from monai.inferers import Inferer

from scripts.common.errors import CxrLdmError
from scripts.common.progress import progress
from scripts.networks.compilation import compile_unet, parse_compile
from scripts.networks.deep_cache import DeepCacheUNet
from scripts.networks.precision import autocast_dtype_of, precision_name
from scripts.networks.schedulers import is_stochastic, scheduler_name
from scripts.networks.text import check_context_width, encode_ids, prompt_ids


def number_as_given(value) -> int | float:
    """``value`` as a Python number, an int staying an int: the sampler's identity (the manifest) then records
    ``--guidance_scale 7`` as 7 and the default 7.0 as 7.0, while image names hash both alike."""
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else float(value)


def checked_steps(num_inference_steps) -> int:
    """``num_inference_steps`` as an int >= 1 (a one-line ``ValueError`` otherwise)."""
    if int(num_inference_steps) < 1:
        raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}.")
    return int(num_inference_steps)


def initial_latents(seeds: Sequence[int], latent_shape: Sequence[int]) -> torch.Tensor:
    """Initial noise (B, *latent_shape), image i drawn from its own CPU generator seeded with ``seeds[i]``.

    Drawing on the CPU makes an image depend only on its seed: not on the batch it is in, its position
    there, or the device.
    """
    return torch.stack(
        [torch.randn(tuple(latent_shape), generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    )


def step_noise_seed(seed: int) -> int:
    """Seed of the generator that draws image ``seed``'s per-step noise (stochastic schedulers).

    It must not be ``seed + k``: that is the initial-noise seed of another image of the same run, and the
    two images would share noise. A hash of the seed gives a stream unrelated to every initial-noise seed.
    """
    digest = hashlib.sha256(f"cxr-ldm step noise {int(seed)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class NonFiniteSampleError(CxrLdmError, FloatingPointError):
    """Sampling produced NaN or infinite latents; nothing is written for them."""


class GuidedLatentSampler(Inferer):
    """Classifier-free guided sampling of a latent diffusion UNet, as a MONAI inferer.

    Args:
        autoencoder: ``AutoencoderKL``; ``decode_stage_2_outputs`` maps latents (B, 3, h, w) to images.
        text_encoder: frozen ``CLIPTextModel``; its ``last_hidden_state`` (B, 77, C) is the context.
        tokenizer: the bundle's CLIP tokenizer.
        scheduler: a MONAI-interface scheduler (``scripts.networks.schedulers.build_scheduler``).
        num_inference_steps: denoising steps (>= 1).
        guidance_scale: g in ``out = out_uncond + g * (out_cond - out_uncond)``; 1 disables guidance
            (one UNet pass per step), 0 samples unconditionally.
        scale_factor: latents are divided by it before decoding.
        latent_shape: (3, 64, 64) for 512² images.
        null_prompt: style of the null prompt (``scripts.networks.text.NULL_PROMPT_STYLES``), the unconditional
            branch whenever the negative prompt is "".
        batched_guidance: run both guidance branches in one UNet call of batch 2B.
        autocast_dtype: ``"bfloat16"``/``"float16"`` to run the UNet under ``torch.autocast``;
            None or ``"float32"`` for float32 (the config resolves ``"auto"`` with
            ``scripts.networks.precision.resolve_precision``).
        decode_dtype: the same for the autoencoder's decoder (``decode``): None or ``"float32"`` (the default
            sampler's, at parity with DDIM-200), or ``"bfloat16"``, ~4x faster on CPUs with AMX and a move of
            ~0.7 grey levels (docs/performance.md).
        channels_last: use the channels-last memory format for the UNet and the autoencoder.
        compile: compile the UNet (``scripts.networks.compilation.compile_unet``: inductor with frozen weights
            on a CPU; the first call compiles, ~1 min; the config resolves ``"auto"`` with ``resolve_compile``).
        progress: show a progress bar over denoising steps.
        cross_attention_dim: the UNet's context width; checked against the text encoder's when given.
        guidance_interval: [lowest, highest] training timestep (0-999) at which guidance is applied;
            the other steps run the conditional branch alone. None: every step.
        cache_interval: a full UNet pass every ``cache_interval`` steps, the shallow branch on cached deep
            features in between (``scripts.networks.deep_cache``); 1: every step is a full pass. Takes the
            place of ``compile`` when > 1.
    """

    CONTEXT_CACHE_SIZE = 256

    def __init__(
        self,
        autoencoder: torch.nn.Module,
        text_encoder: torch.nn.Module,
        tokenizer,
        scheduler,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.0,
        scale_factor: float = 0.3,
        latent_shape: Sequence[int] = (3, 64, 64),
        null_prompt: str = "empty_prompt",
        batched_guidance: bool = True,
        autocast_dtype: str | None = None,
        channels_last: bool = False,
        compile: bool = False,
        progress: bool = True,
        cross_attention_dim: int | None = None,
        guidance_interval: Sequence[int] | None = None,
        cache_interval: int = 1,
        decode_dtype: str | None = None,
    ) -> None:
        super().__init__()
        try:
            self.precision = precision_name(autocast_dtype)
        except ValueError as error:
            raise ValueError(f"{error} (resolve 'auto' with scripts.networks.precision.resolve_precision)") from None
        self.autoencoder = autoencoder.eval()
        self.text_encoder = text_encoder.eval()
        self.tokenizer = tokenizer
        self.scheduler = scheduler
        self.num_inference_steps = checked_steps(num_inference_steps)
        self.guidance_scale = number_as_given(guidance_scale)
        self.scale_factor = number_as_given(scale_factor)
        self.latent_shape = tuple(int(s) for s in latent_shape)
        self.null_prompt = null_prompt
        self.batched_guidance = bool(batched_guidance)
        self.autocast_dtype = autocast_dtype_of(self.precision)
        try:
            self.decode_precision = precision_name(decode_dtype)
        except ValueError as error:
            raise ValueError(f"decode_dtype: {error} (resolve 'auto' with resolve_precision)") from None
        self.channels_last = bool(channels_last)
        self.compile = parse_compile(compile)
        if self.compile == "auto":
            raise ValueError("compile 'auto' is resolved by the config (scripts.networks.compilation.resolve_compile).")
        self.progress = bool(progress)
        if cross_attention_dim is not None:
            check_context_width(text_encoder, cross_attention_dim)
        if guidance_interval is not None:
            if len(guidance_interval) != 2 or float(guidance_interval[0]) > float(guidance_interval[1]):
                raise ValueError(f"guidance_interval must be [lowest, highest] timestep, got {guidance_interval!r}.")
            guidance_interval = [number_as_given(bound) for bound in guidance_interval]
        self.guidance_interval = guidance_interval
        if int(cache_interval) < 1:
            raise ValueError(f"cache_interval must be >= 1, got {cache_interval}.")
        self.cache_interval = int(cache_interval)
        self._context_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._wrapped_unets: dict[int, torch.nn.Module] = {}  # network id -> its DeepCache or compiled wrapper
        if self.channels_last:
            self.autoencoder.to(memory_format=torch.channels_last)

    #: settings that change an image only by float rounding: in the manifest (``speed_switches``), not in its name
    SPEED_SWITCHES = ("batched_guidance", "channels_last", "compile")

    def identity(self) -> dict:
        """The settings that decide this sampler's images beyond float rounding, besides prompt, seed and the
        model: what names and fingerprints an image (``scripts.sampling.jobs.image_settings``) and fills the
        manifest's columns. The ``SPEED_SWITCHES`` are left out (``speed_switches``).

        Read from the sampler's state, so a copy with another scheduler, step count or guidance
        (``with_settings``) identifies itself.
        """
        return {
            "num_inference_steps": self.num_inference_steps,
            "guidance_scale": self.guidance_scale,
            "scheduler": scheduler_name(self.scheduler),
            "null_prompt": self.null_prompt,
            "scale_factor": self.scale_factor,
            "latent_shape": list(self.latent_shape),
            "autocast_dtype": self.precision,
            "guidance_interval": self.guidance_interval,
            "cache_interval": self.cache_interval,
            "decode_dtype": self.decode_precision,
        }

    def speed_switches(self) -> dict:
        """The ``SPEED_SWITCHES`` of this sampler: how it runs, which moves pixels by float rounding only (at most
        one 8-bit grey level on a few pixels), so an image keeps its name whichever are on."""
        return {name: getattr(self, name) for name in self.SPEED_SWITCHES}

    def with_settings(
        self,
        scheduler=None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        progress: bool | None = None,
    ):
        """A copy of this sampler with another ``scheduler``, step count, guidance or progress bar (None keeps
        this one's); the app makes one per request.

        The copy shares the networks, the tokenizer, the prompt-embedding cache and the compiled or DeepCache
        UNet (a compile happens once, not once per copy); give it its own scheduler, which keeps per-run state.
        """
        variant = copy.copy(self)
        if scheduler is not None:
            variant.scheduler = scheduler
        if num_inference_steps is not None:
            variant.num_inference_steps = checked_steps(num_inference_steps)
        if guidance_scale is not None:
            variant.guidance_scale = number_as_given(guidance_scale)
        if progress is not None:
            variant.progress = bool(progress)
        return variant

    # -- pieces -------------------------------------------------------------------------------------
    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """Context (B, 77, C) of ``prompts``; "" is the null prompt.

        The embeddings of the most recent ``CONTEXT_CACHE_SIZE`` texts are kept (the null prompt and a
        prompt's repeated samples are encoded once; a 77×1024 embedding is 315 kB, so the cache is bounded
        for prompts files of any length).
        """
        missing = [p for p in dict.fromkeys(prompts) if p not in self._context_cache]
        if missing:
            ids = prompt_ids(self.tokenizer, missing, null_prompt=self.null_prompt)
            for text, context in zip(missing, encode_ids(self.text_encoder, ids)):
                self._context_cache[text] = context
        contexts = torch.stack([self._context_cache[p] for p in prompts])
        for text in prompts:
            self._context_cache.move_to_end(text)
        while len(self._context_cache) > self.CONTEXT_CACHE_SIZE:
            self._context_cache.popitem(last=False)
        return contexts

    def _unet(self, network: torch.nn.Module) -> torch.nn.Module:
        if self.channels_last:
            network.to(memory_format=torch.channels_last)
        if self.cache_interval > 1:
            if id(network) not in self._wrapped_unets:
                self._wrapped_unets[id(network)] = DeepCacheUNet(network, self.cache_interval)
            return self._wrapped_unets[id(network)]
        if not self.compile:
            return network
        if id(network) not in self._wrapped_unets:
            self._wrapped_unets[id(network)] = compile_unet(network, next(network.parameters()).device)
        return self._wrapped_unets[id(network)]

    def _autocast(self, device: torch.device):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.autocast_dtype)

    def guides_at(self, timestep) -> bool:
        """Whether guidance applies at ``timestep``: inside ``guidance_interval`` (every step without one).

        Outside the interval the step runs the conditional branch alone: one UNet pass instead of two
        (Kynkäänniemi et al. 2024, guidance in a limited interval).
        """
        if self.guidance_interval is None:
            return True
        low, high = self.guidance_interval
        return low <= float(timestep) <= high

    def guided_output(self, unet, latents, timestep, context, uncond_context) -> torch.Tensor:
        """Guided model output (B, 3, h, w) at one ``timestep`` (the scheduler's prediction type)."""
        batch = latents.shape[0]
        t = torch.full((batch,), int(timestep), device=latents.device, dtype=torch.long)
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        if self.guidance_scale == 1.0 or not self.guides_at(timestep):
            return unet(latents.contiguous(memory_format=memory_format), timesteps=t, context=context).float()
        if self.batched_guidance:
            both = torch.cat([latents, latents]).contiguous(memory_format=memory_format)
            output = unet(both, timesteps=torch.cat([t, t]), context=torch.cat([uncond_context, context])).float()
            out_uncond, out_cond = output.chunk(2)
        else:
            x = latents.contiguous(memory_format=memory_format)
            out_uncond = unet(x, timesteps=t, context=uncond_context).float()
            out_cond = unet(x, timesteps=t, context=context).float()
        return out_uncond + self.guidance_scale * (out_cond - out_uncond)

    def denoise(
        self,
        unet: torch.nn.Module,
        latents: torch.Tensor,
        context: torch.Tensor,
        uncond_context: torch.Tensor,
        seeds: Sequence[int] | None = None,
        start_index: int = 0,
        after_step: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Run the guided denoising loop from ``latents`` (B, *latent_shape) to clean latents (B, *latent_shape).

        Args:
            seeds: seed the per-image generators of stochastic schedulers (DDPM, LCM), so that their noise also
                depends on the image alone.
            start_index: the first step to run: ``latents`` are at the noise level of
                ``scheduler.timesteps[start_index]`` (0 for text-to-image; later for image-to-image).
            after_step: ``after_step(next_index, latents) -> latents`` is applied after each step, whose
                result is at the level of step ``next_index`` (``len(timesteps)``: clean); editing uses
                it to put back the latents that must not change.
        """
        device = latents.device
        self.scheduler.set_timesteps(self.num_inference_steps, device=device)
        if start_index and hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(start_index)  # multistep solvers: where their step count starts
        unet = self._unet(unet)
        if isinstance(unet, DeepCacheUNet):
            unet.reset()  # a new image: nothing cached yet
        stochastic = is_stochastic(self.scheduler)
        generators = [torch.Generator(device=device).manual_seed(step_noise_seed(s)) for s in (seeds or [])]
        if stochastic and len(generators) != latents.shape[0]:
            raise ValueError("a stochastic scheduler needs one seed per image.")
        timesteps = self.scheduler.timesteps
        steps = list(enumerate(timesteps))[int(start_index) :]
        for index, t in progress(steps, total=len(steps), description="denoising", enabled=self.progress):
            with self._autocast(device):
                output = self.guided_output(unet, latents, t, context, uncond_context)
            if stochastic:
                latents = torch.cat(
                    [
                        self.scheduler.step(output[i : i + 1], t, latents[i : i + 1], generator=g)[0]
                        for i, g in enumerate(generators)
                    ]
                )
            else:
                latents = self.scheduler.step(output, t, latents)[0]
            if after_step is not None:
                latents = after_step(index + 1, latents)
        return latents

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images (B, 1, H, W) in [0, 1] from clean latents (B, *latent_shape).

        The decoder runs in ``decode_dtype``: float32 by default (measured on the parity model, a bf16 decoder
        moves the default sampler's pixels further from DDIM-200 than DDIM-50 does), bf16 autocast when asked
        (a few-step student's images are far further from the teacher's than that: docs/distillation.md).
        """
        z = latents.float() / self.scale_factor
        if self.channels_last:
            z = z.contiguous(memory_format=torch.channels_last)
        dtype = autocast_dtype_of(self.decode_precision)
        with contextlib.nullcontext() if dtype is None else torch.autocast(z.device.type, dtype=dtype):
            images = self.autoencoder.decode_stage_2_outputs(z)
        return images.float().clamp(0.0, 1.0).contiguous()

    # -- the whole pipeline -------------------------------------------------------------------------
    def __call__(self, inputs: dict, network: torch.nn.Module, *args, **kwargs) -> torch.Tensor:
        """Images (B, 1, H, W) in [0, 1] for a batch of jobs.

        Args:
            inputs: ``{"prompt": [str]*B, "negative_prompt": [str]*B, "seed": [int]*B}`` (other keys ignored).
            network: the diffusion UNet.
        """
        prompts = [str(p) for p in inputs["prompt"]]
        negatives = [str(p) for p in inputs.get("negative_prompt", [""] * len(prompts))]
        seeds = [int(s) for s in inputs["seed"]]
        if not (len(prompts) == len(negatives) == len(seeds)):
            raise ValueError("prompt, negative_prompt and seed must have one entry per image.")
        device = next(network.parameters()).device
        network.eval()
        with torch.inference_mode():
            context, uncond_context = self.contexts(prompts, negatives, device)
            latents = initial_latents(seeds, self.latent_shape).to(device)
            latents = self.denoise(network, latents, context, uncond_context, seeds=seeds)
            self.check_finite(latents, prompts, seeds)
            return self.decode(latents)

    def contexts(
        self, prompts: Sequence[str], negatives: Sequence[str], device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(conditional, unconditional) contexts (B, 77, C) on ``device``; "" is the null prompt."""
        return self.encode_prompts(prompts).to(device), self.encode_prompts(negatives).to(device)

    def check_finite(self, latents: torch.Tensor, prompts: Sequence[str], seeds: Sequence[int]) -> None:
        """Refuse a batch whose clean latents (B, *latent_shape) hold NaN or inf (they decode to black images)."""
        finite = torch.isfinite(latents.flatten(1)).all(dim=1).tolist()
        bad = [f"seed {seed} of {prompt[:40]!r}" for seed, prompt, ok in zip(seeds, prompts, finite) if not ok]
        if bad:
            raise NonFiniteSampleError(
                f"Sampling gave NaN/inf latents for {len(bad)} image(s) ({'; '.join(bad[:3])}); nothing was written "
                "for them: check the weights (--diffusion_path, --load_old), --guidance_scale and --autocast_dtype."
            )
