"""Consistency distillation of the diffusion UNet into a few-step student: phased (PCM) or latent (LCM).

A frozen teacher (the trained diffusion UNet) is distilled into a student of the same class. Both methods work
on the skipping-step (DDIM) schedule of N = 50 timesteps t_n = 19, 39, ..., 999 (skip k = 20 of 1000) and
teach the student a *consistency function* f_θ(x_t, t): where the teacher's guided probability-flow ODE through
x_t arrives at the lower edge of t's segment of the ODE.

- ``"pcm"`` (Wang et al. 2024, "Phased Consistency Model"): the ODE is split into ``num_phases`` phases at
  edges of the schedule (4: 999 | 759 | 499 | 259 | clean); f maps x_t to its phase's lower edge s by the DDIM
  formula on the student's output (``scripts.networks.pcm``). Sampling is deterministic, one step per phase.
- ``"lcm"`` (Luo et al. 2023, "Latent Consistency Models", Algorithm 1): one segment, f = c_skip(t) · x_t +
  c_out(t) · x̂0 maps x_t to the clean end (``scripts.networks.lcm``); sampling re-noises between steps.

One training iteration, for a batch of latents z and text contexts c:

1. draw n from 1..N (uniformly; with ``emphasised_timestep_fraction`` > 0 that share of the batch is drawn from
   ``emphasised_timesteps``, the timesteps the student samples at) and noise z to x_{t_n} = √ᾱ · z + √(1−ᾱ) · ε;
   with ``rollout_fraction`` > 0 (``"pcm"``), that share of the batch instead starts at a lower phase edge e
   (759, 499 or 259) from the latent the target network's own sampler reaches there: z noised to the top edge
   (999), then one θ⁻ step per phase down to e, as the few-step sampler will feed the student;
2. teacher: up to ``teacher_steps`` guided DDIM steps of skip k from t_n towards the segment's lower edge s
   (o = o_∅ + w · (o_c − o_∅), w from ``guidance_scale_range``), stopping at s;
3. target: where the teacher stopped above s, the target network θ⁻ (an EMA of the student) evaluates f there
   without gradient (LCM's bootstrapped target); where it reached s, the target is the teacher's own latent at s
   (f is the identity at an edge), and no target network is involved;
4. student: f_θ(x_{t_n}, t_n), and the loss is the pseudo-Huber distance √((f_θ − target)² + c²) − c (with
   ``phase_loss_weights``, f_θ and the target both multiplied by the factor of t_n's phase).

``teacher_steps`` 1 is the published recipes' (one teacher step, then θ⁻); ``"phase"`` lets the teacher solve
the whole segment, so that every target is the teacher's own ODE solution on the schedule and nothing bootstraps
(docs/distillation.md explains why the phased recipe uses it). Steps 1-3 happen in
``ConsistencyDistillationPrepareBatch`` (no gradient), step 4 in ``ConsistencyInferer`` and ``PseudoHuberLoss``:
a plain MONAI ``SupervisedTrainer`` runs the iteration, with AMP, checkpoints and handlers exactly as the
diffusion stage (``configs/distill.json``).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Sequence

import torch
from monai.inferers import Inferer

from scripts.networks.lcm import ORIGINAL_INFERENCE_STEPS, SIGMA_DATA, TIMESTEP_SCALING, boundary_scalings
from scripts.networks.pcm import clean_and_noise, ddim_move, lower_edges, noise_levels, phase_edges
from scripts.networks.text import encode_ids
from scripts.training.diffusion import LatentVPredictionPrepareBatch

#: distillation methods (``distill_method``): their student samples with the scheduler of the same name
METHODS = ("pcm", "lcm")


def student_from_teacher(teacher: torch.nn.Module) -> torch.nn.Module:
    """A trainable copy of ``teacher`` (same class and weights, so the bundle's loaders load the student)."""
    return copy.deepcopy(teacher).requires_grad_(True).train()


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) values shaped (B, 1, ..., 1) to broadcast over ``like`` (B, C, ...)."""
    return values.reshape(-1, *([1] * (like.dim() - 1))).to(like.device, torch.float32)


def consistency_function(
    output: torch.Tensor,
    sample: torch.Tensor,
    timesteps: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    prediction_type: str,
    timestep_scaling: float = TIMESTEP_SCALING,
    sigma_data: float = SIGMA_DATA,
) -> torch.Tensor:
    """LCM's f = c_skip(t) · x_t + c_out(t) · x̂0 (B, C, h, w) of a UNet ``output`` at ``sample`` x_t at
    ``timesteps`` (B,)."""
    alpha, sigma = noise_levels(alphas_cumprod, timesteps, sample)
    clean, _ = clean_and_noise(output, sample, alpha, sigma, prediction_type)
    c_skip, c_out = boundary_scalings(timesteps, sigma_data, timestep_scaling)
    return _per_sample(c_skip, sample) * sample.float() + _per_sample(c_out, sample) * clean


class LatentConsistency:
    """LCM's consistency function: one segment from t to the clean end (its lower edge is timestep 0, where
    c_skip = 1 and c_out = 0, so f is the identity there).

    Args:
        scheduler: the training noise schedule (``alphas_cumprod``, ``prediction_type``).
        timestep_scaling, sigma_data: the boundary-condition constants (10, 0.5).
    """

    method = "lcm"

    def weighted(self, values: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """``values`` unchanged: one segment, one loss weight."""
        return values

    def __init__(self, scheduler, timestep_scaling: float = TIMESTEP_SCALING, sigma_data: float = SIGMA_DATA) -> None:
        self.scheduler = scheduler
        self.timestep_scaling = float(timestep_scaling)
        self.sigma_data = float(sigma_data)

    def lower_edges(self, timesteps: torch.Tensor) -> torch.Tensor:
        """Where each timestep's segment ends (B,): 0."""
        return torch.zeros_like(timesteps)

    def __call__(self, output: torch.Tensor, sample: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """f (B, C, h, w), float32, of a UNet ``output`` at ``sample`` x_t and ``timesteps`` (B,)."""
        return consistency_function(
            output,
            sample,
            timesteps,
            self.scheduler.alphas_cumprod,
            self.scheduler.prediction_type,
            self.timestep_scaling,
            self.sigma_data,
        )


class PhasedConsistency:
    """PCM's consistency function: the DDIM move from t to its phase's lower edge (``scripts.networks.pcm``).

    Args:
        scheduler: the training noise schedule (``alphas_cumprod``, ``prediction_type``, ``num_train_timesteps``).
        num_phases: phases of the ODE; the student samples best with that many steps (or twice as many).
        num_ddim_timesteps: N of the skipping-step schedule (50).
        phase_loss_weights: one positive factor per phase, the noisiest phase first (None: all 1); the student's
            f and its target are both multiplied by their phase's factor before the loss compares them.
    """

    method = "pcm"

    def __init__(
        self,
        scheduler,
        num_phases: int = 4,
        num_ddim_timesteps: int = ORIGINAL_INFERENCE_STEPS,
        phase_loss_weights: Sequence[float] | None = None,
    ) -> None:
        self.scheduler = scheduler
        self.num_phases = int(num_phases)
        self.edges = phase_edges(self.num_phases, int(num_ddim_timesteps), int(scheduler.num_train_timesteps))
        weights = [1.0] * self.num_phases if phase_loss_weights is None else [float(w) for w in phase_loss_weights]
        if len(weights) != self.num_phases or min(weights) <= 0:
            raise ValueError(
                f"phase_loss_weights must be {self.num_phases} positive factors (one per phase, the noisiest "
                f"first), got {list(phase_loss_weights)}."
            )
        # ascending like ``edges``: the weight of the phase whose lower edge is edges[i]
        self.loss_weights = torch.tensor(weights[::-1], dtype=torch.float32)

    def weighted(self, values: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """``values`` (B, C, h, w) times the loss weight of each sample's phase (``timesteps`` (B,))."""
        if bool((self.loss_weights == 1.0).all()):
            return values
        edges = torch.as_tensor(self.edges, device=timesteps.device)
        phase = torch.searchsorted(edges, self.lower_edges(timesteps))  # index of the lower edge, ascending
        return values * _per_sample(self.loss_weights.to(timesteps.device)[phase], values)

    def lower_edges(self, timesteps: torch.Tensor) -> torch.Tensor:
        """The lower phase edge of each timestep (B,) (``scripts.networks.pcm.CLEAN`` for the last phase)."""
        return lower_edges(timesteps, self.edges)

    def __call__(self, output: torch.Tensor, sample: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """f (B, C, h, w), float32, of a UNet ``output`` at ``sample`` x_t and ``timesteps`` (B,)."""
        return ddim_move(
            output,
            sample,
            timesteps,
            self.lower_edges(timesteps),
            self.scheduler.alphas_cumprod,
            self.scheduler.prediction_type,
        )


def consistency_parameterisation(
    method: str,
    scheduler,
    num_phases: int = 4,
    num_ddim_timesteps: int = ORIGINAL_INFERENCE_STEPS,
    timestep_scaling: float = TIMESTEP_SCALING,
    sigma_data: float = SIGMA_DATA,
    phase_loss_weights: Sequence[float] | None = None,
):
    """The consistency function of distillation ``method`` ("pcm" or "lcm"), shared by the target and the student
    (``phase_loss_weights``: ``PhasedConsistency``'s; ignored by "lcm")."""
    name = str(method).lower()
    if name == "pcm":
        if not 1 <= int(num_phases) <= int(num_ddim_timesteps):
            raise ValueError(f"num_phases must be in [1, {num_ddim_timesteps}], got {num_phases}.")
        return PhasedConsistency(scheduler, num_phases, num_ddim_timesteps, phase_loss_weights)
    if name == "lcm":
        return LatentConsistency(scheduler, timestep_scaling, sigma_data)
    raise ValueError(f"distill_method must be one of {METHODS}, got {method!r}.")


def _teacher_steps(teacher_steps, num_ddim_timesteps: int) -> int:
    """``teacher_steps`` as a count: an int >= 1, or "phase" (every step of a segment: the schedule's length)."""
    if str(teacher_steps).lower() == "phase":
        return int(num_ddim_timesteps)
    if isinstance(teacher_steps, bool) or int(teacher_steps) < 1:
        raise ValueError(f"teacher_steps must be an integer >= 1 or 'phase', got {teacher_steps!r}.")
    return int(teacher_steps)


class ConsistencyDistillationPrepareBatch(LatentVPredictionPrepareBatch):
    """``prepare_batch`` of consistency distillation: the noisy input and its target.

    From a batch ``{"image": (B, 1, H, W) in [0, 1], "prompt_ids": (B, 77)}`` it returns
    ``(x_t (B, 3, h, w), target (B, 3, h, w), (), {"timesteps": t (B,), "condition": context (B, 77, C)})``:
    x_t is the scaled latent noised to a timestep t of the skipping-step schedule, and the target is where the
    teacher's guided ODE through x_t arrives at the lower edge of t's segment (``targets``).

    Args:
        autoencoder, text_encoder, scale_factor, sample_latents, cross_attention_dim: as
            ``LatentVPredictionPrepareBatch`` (frozen first stage and text encoder).
        scheduler: the training noise schedule (``alphas_cumprod``, ``prediction_type``).
        teacher: the frozen diffusion UNet.
        target_network: θ⁻, the EMA of the student (updated by the trainer's EMA handler).
        null_prompt_ids: (77,) token ids of the null prompt, the teacher's unconditional branch.
        consistency: ``consistency_parameterisation``'s function (``PhasedConsistency`` or ``LatentConsistency``).
        guidance_scale_range: [w_min, w_max]; each sample's teacher guidance is uniform in it (equal: fixed).
        num_ddim_timesteps: N of the skipping-step schedule (50: skip k = 20 of 1000 timesteps); it must be
            the sampler's ``original_inference_steps``.
        teacher_steps: teacher DDIM steps per target before θ⁻ takes over (1: LCM's and PCM's published
            recipes), or "phase": the teacher solves to the segment's lower edge.
        emphasised_timesteps: timesteps of the schedule drawn more often than the others: the student's sampling
            timesteps (``scripts.networks.pcm.sampling_timesteps``), where its few steps are evaluated.
        emphasised_timestep_fraction: the expected share of a batch drawn uniformly from ``emphasised_timesteps``
            (0: every timestep of the schedule equally often; 1: only those); the rest is uniform over all N.
        rollout_fraction: the expected share of a batch (``"pcm"`` only) whose input is the target network's own
            sample at a lower phase edge (``rollout``) instead of the data noised there: the sampler's later steps
            start from the earlier steps' outputs, not from noised data, and this trains them on those inputs
            (0: none, the published recipe).
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
        consistency,
        guidance_scale_range: Sequence[float] = (7.0, 7.0),
        num_ddim_timesteps: int = ORIGINAL_INFERENCE_STEPS,
        teacher_steps: int | str = 1,
        emphasised_timesteps: Sequence[int] = (),
        emphasised_timestep_fraction: float = 0.0,
        rollout_fraction: float = 0.0,
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
        self.consistency = consistency
        self.guidance_scale_range = (low, high)
        self.skip = num_train // int(num_ddim_timesteps)
        # t_n = k·(n+1) − 1: 19, 39, ..., 999, the timesteps of diffusers' LCMScheduler (leading spacing)
        self.ddim_timesteps = torch.arange(1, int(num_ddim_timesteps) + 1) * self.skip - 1
        self.teacher_steps = _teacher_steps(teacher_steps, int(num_ddim_timesteps))
        self.emphasised_timesteps = torch.as_tensor([int(t) for t in emphasised_timesteps], dtype=torch.long)
        self.emphasised_timestep_fraction = float(emphasised_timestep_fraction)
        if not 0.0 <= self.emphasised_timestep_fraction <= 1.0:
            raise ValueError(f"emphasised_timestep_fraction must be in [0, 1], got {emphasised_timestep_fraction}.")
        off_schedule = sorted(set(self.emphasised_timesteps.tolist()) - set(self.ddim_timesteps.tolist()))
        if off_schedule:
            raise ValueError(
                f"emphasised_timesteps {off_schedule} are not on the {int(num_ddim_timesteps)}-timestep schedule "
                f"(k·j − 1 for k = {self.skip}); use scripts.networks.pcm.sampling_timesteps."
            )
        if self.emphasised_timestep_fraction > 0 and not len(self.emphasised_timesteps):
            raise ValueError("emphasised_timestep_fraction > 0 needs emphasised_timesteps; give them or set it to 0.")
        self.rollout_fraction = float(rollout_fraction)
        if not 0.0 <= self.rollout_fraction <= 1.0:
            raise ValueError(f"rollout_fraction must be in [0, 1], got {rollout_fraction}.")
        # where the phased sampler's steps after the first start: the lower phase edges except the clean end
        self.rollout_edges = torch.as_tensor([int(e) for e in getattr(consistency, "edges", ()) if int(e) >= 0])
        if self.rollout_fraction > 0 and not len(self.rollout_edges):
            raise ValueError(
                f"rollout_fraction > 0 needs the phased method with 2 or more phases (distill_method 'pcm', "
                f"num_phases >= 2), got {getattr(consistency, 'method', consistency)!r}; set rollout_fraction to 0."
            )
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

    def guidance_scales(self, batch: int, device: torch.device) -> torch.Tensor:
        """(B,) teacher guidance scales, uniform in ``guidance_scale_range``."""
        low, high = self.guidance_scale_range
        return low + (high - low) * torch.rand(batch, device=device)

    @torch.no_grad()
    def teacher_step(
        self,
        noisy: torch.Tensor,
        timesteps: torch.Tensor,
        previous: torch.Tensor,
        context: torch.Tensor,
        scales: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The teacher's guided DDIM step (B, 3, h, w) from ``noisy`` at ``timesteps`` (B,) to ``previous`` (B,).

        ``scales`` (B,): each sample's guidance (drawn by ``guidance_scales`` when None).
        """
        batch, device = noisy.shape[0], noisy.device
        scale = _per_sample(self.guidance_scales(batch, device) if scales is None else scales, noisy)
        uncond = self.null_context(device).expand(batch, -1, -1)
        with self._autocast(device):
            output = self.teacher(
                torch.cat([noisy, noisy]),
                timesteps=torch.cat([timesteps, timesteps]),
                context=torch.cat([uncond, context]),
            ).float()
        out_uncond, out_cond = output.chunk(2)
        guided = out_uncond + scale * (out_cond - out_uncond)
        return ddim_move(guided, noisy, timesteps, previous, self.scheduler.alphas_cumprod, self.prediction_type)

    @torch.no_grad()
    def targets(self, noisy: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """The distillation target (B, 3, h, w), float32, of ``noisy`` x_t at ``timesteps`` (B,) with ``context``.

        The teacher takes up to ``teacher_steps`` guided DDIM steps of skip k towards each sample's lower edge;
        the target network's f finishes the samples that have not reached it.
        """
        edges = self.consistency.lower_edges(timesteps)
        scales = self.guidance_scales(len(timesteps), noisy.device)
        current, latents = timesteps.clone(), noisy.float().clone()
        for _ in range(self.teacher_steps):
            active = (current > edges).nonzero().flatten()
            if len(active) == 0:
                break
            previous = torch.maximum(current[active] - self.skip, edges[active])
            latents[active] = self.teacher_step(
                latents[active], current[active], previous, context[active], scales[active]
            )
            current[active] = previous
        pending = (current > edges).nonzero().flatten()
        if len(pending):
            with self._autocast(noisy.device):
                output = self.target_network(latents[pending], timesteps=current[pending], context=context[pending])
            latents[pending] = self.consistency(output, latents[pending], current[pending])
        return latents

    def draw_timesteps(self, batch: int, device: torch.device) -> torch.Tensor:
        """(B,) training timesteps: each one of ``emphasised_timesteps`` with probability
        ``emphasised_timestep_fraction`` (uniformly among them), else uniform over the whole schedule."""
        schedule = self.ddim_timesteps.to(device)
        timesteps = schedule[torch.randint(0, len(schedule), (batch,), device=device)]
        if self.emphasised_timestep_fraction > 0:
            emphasised = self.emphasised_timesteps.to(device)
            chosen = emphasised[torch.randint(0, len(emphasised), (batch,), device=device)]
            emphasise = torch.rand(batch, device=device) < self.emphasised_timestep_fraction
            timesteps = torch.where(emphasise, chosen, timesteps)
        return timesteps

    @torch.no_grad()
    def rollout(self, latents: torch.Tensor, noise: torch.Tensor, edges: torch.Tensor, context: torch.Tensor):
        """The target network's own phased sample (B, 3, h, w), float32, at lower phase ``edges`` (B,).

        ``latents`` (B, 3, h, w) noised with ``noise`` to the schedule's top timestep (999), then one step of f_θ⁻
        per phase (θ⁻ with ``context`` only: the student's sampler at guidance 1) until each sample is at its edge:
        the input the few-step sampler gives the student there.
        """
        top = self.ddim_timesteps[-1].to(latents.device)
        current = top.expand(latents.shape[0]).clone()
        sample = self.scheduler.add_noise(original_samples=latents, noise=noise, timesteps=current).float()
        while True:
            active = (current > edges).nonzero().flatten()
            if len(active) == 0:
                return sample
            with self._autocast(latents.device):
                output = self.target_network(sample[active], timesteps=current[active], context=context[active])
            sample[active] = self.consistency(output, sample[active], current[active])
            current[active] = self.consistency.lower_edges(current[active])

    def __call__(self, batchdata: dict, device=None, non_blocking: bool = False, **kwargs):
        latents, context = self.encode(batchdata, device, non_blocking)
        # plain tensors: MONAI's MetaTensor (what the data loader gives) costs a Python hook on every operation,
        # which dominates small networks' many teacher passes
        latents, context = latents.as_subclass(torch.Tensor), context.as_subclass(torch.Tensor)
        noise = self.get_noise(latents)
        timesteps = self.draw_timesteps(latents.shape[0], latents.device)
        noisy = self.scheduler.add_noise(original_samples=latents, noise=noise, timesteps=timesteps)
        if self.rollout_fraction > 0:
            edges = self.rollout_edges.to(latents.device)
            edges = edges[torch.randint(0, len(edges), (latents.shape[0],), device=latents.device)]
            rolled = (torch.rand(latents.shape[0], device=latents.device) < self.rollout_fraction).nonzero().flatten()
            if len(rolled):
                timesteps = timesteps.clone()
                timesteps[rolled] = edges[rolled]
                noisy = noisy.clone()
                noisy[rolled] = self.rollout(latents[rolled], noise[rolled], edges[rolled], context[rolled]).to(
                    noisy.dtype
                )
        target = self.consistency.weighted(self.targets(noisy, timesteps, context), timesteps)
        return noisy, target, (), {"timesteps": timesteps, "condition": context}


class ConsistencyInferer(Inferer):
    """The student's consistency function f_θ(x_t, t) (B, 3, h, w), float32, times its phase's loss weight
    (``PhasedConsistency.weighted``; the targets carry the same factor), as a MONAI inferer.

    Args:
        consistency: ``consistency_parameterisation``'s function, the one the targets use.
    """

    def __init__(self, consistency) -> None:
        super().__init__()
        self.consistency = consistency

    def __call__(self, inputs: torch.Tensor, network, timesteps: torch.Tensor, condition: torch.Tensor, **kwargs):
        f = self.consistency(network(inputs, timesteps=timesteps, context=condition), inputs, timesteps)
        return self.consistency.weighted(f, timesteps)


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
