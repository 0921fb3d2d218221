"""The distilled student's distance to its teacher, measured while it trains.

A distillation loss compares the student with a target that moves (θ⁻ is an EMA of the student) or with one
segment of the ODE; neither says how far the student's *images* are from the teacher's. ``TeacherDistance``
samples a fixed set of prompts and seeds with the student's sampler (the network being exported: the EMA) every
``interval`` iterations and compares the clean latents with the teacher's, sampled once from the same noise and
text with the teacher's own sampler and guidance: the latent RMSE, image by image. A run that converges shows it
falling and settling; one that drifts shows it rising.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from ignite.engine import Engine, Events

from scripts.sampling.sampler import initial_latents

logger = logging.getLogger(__name__)


class TeacherDistance:
    """Every ``interval`` iterations (and when training starts): latent RMSE of the student's samples to the teacher's.

    Args:
        sampler: the student's ``GuidedLatentSampler`` (its scheduler, steps and guidance are the student's).
        network: the student network to measure (the EMA copy that is exported).
        teacher: the teacher UNet.
        teacher_scheduler: the scheduler the teacher samples with (e.g. ``unipc_karras``).
        teacher_steps: the teacher's step count.
        teacher_guidance_scale: the teacher's guidance (the scale distilled into the student).
        prompts: report texts; each is sampled with seeds ``seed``, ``seed + 1``, ... (``images_per_prompt``).
        images_per_prompt: seeds per prompt.
        interval: iterations between measurements (<= 0: never).
        summary_writer: ``SummaryWriter`` for the scalar ``tag`` (None: logged only).
        batch_size: images per sampler call.

    ``history`` holds ``(iteration, latent RMSE)`` pairs.
    """

    def __init__(
        self,
        sampler,
        network: torch.nn.Module,
        teacher: torch.nn.Module,
        teacher_scheduler,
        teacher_steps: int,
        teacher_guidance_scale: float,
        prompts: Sequence[str],
        images_per_prompt: int = 4,
        interval: int = 200,
        summary_writer=None,
        seed: int = 0,
        batch_size: int = 32,
        tag: str = "teacher_distance",
    ) -> None:
        self.sampler = sampler
        self.teacher_sampler = sampler.with_settings(
            scheduler=teacher_scheduler, num_inference_steps=int(teacher_steps), guidance_scale=teacher_guidance_scale
        )
        self.network = network
        self.teacher = teacher
        self.prompts = [str(p) for p in prompts for _ in range(int(images_per_prompt))]
        self.seeds = [int(seed) + i for i in range(len(self.prompts))]
        self.interval = int(interval)
        self.summary_writer = summary_writer
        self.batch_size = int(batch_size)
        self.tag = tag
        self.history: list[tuple[int, float]] = []
        self._reference: torch.Tensor | None = None

    def attach(self, engine: Engine) -> None:
        if self.interval > 0 and self.prompts:
            engine.add_event_handler(Events.STARTED, self)
            engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.interval), self)

    def latents(self, sampler, network: torch.nn.Module) -> torch.Tensor:
        """Clean latents (N, *latent_shape), float32 on the CPU, of ``network`` sampled by ``sampler``."""
        device = next(network.parameters()).device
        was_training = network.training
        network.eval()
        chunks = []
        try:
            with torch.inference_mode():
                for start in range(0, len(self.prompts), self.batch_size):
                    prompts = self.prompts[start : start + self.batch_size]
                    seeds = self.seeds[start : start + self.batch_size]
                    context, uncond = sampler.contexts(prompts, [""] * len(prompts), device)
                    noise = initial_latents(seeds, sampler.latent_shape).to(device)
                    chunks.append(sampler.denoise(network, noise, context, uncond, seeds=seeds).float().cpu())
        finally:
            network.train(was_training)
        return torch.cat(chunks)

    def reference(self) -> torch.Tensor:
        """The teacher's clean latents (N, *latent_shape), sampled once."""
        if self._reference is None:
            self._reference = self.latents(self.teacher_sampler, self.teacher)
        return self._reference

    def measure(self) -> float:
        """Latent RMSE of the student's samples to the teacher's, over all images."""
        return float((self.latents(self.sampler, self.network) - self.reference()).pow(2).mean().sqrt())

    def __call__(self, engine: Engine) -> None:
        distance = self.measure()
        iteration = int(engine.state.iteration)
        self.history.append((iteration, distance))
        logger.info(f"iteration {iteration}: student-teacher latent RMSE {distance:.4f} ({len(self.prompts)} images)")
        if self.summary_writer is not None:
            self.summary_writer.add_scalar(self.tag, distance, iteration)
