"""Consistency distillation shown on the parity model: distil it through the bundle's config, then compare the
student's few-step images with the teacher's.

1. Distillation: ``configs/distill.json`` (over the training configs and the tiny overlay) on a synthetic
   MIMIC-format data set prepared like MIMIC-CXR, in-process, for ``iterations`` (or until the first epoch end
   after ``minutes``); the student is the run's ``model_final.pt`` (the target network). While it trains, every
   ``monitor_interval`` iterations, the config's teacher distance (latent RMSE of the student's 4-step samples to
   the teacher's default sampler from the same noise and text, ``scripts.training.teacher_distance``) and, every
   ``kid_every``-th time, the KID of its 4-step images against the teacher's (step 3's measure) are recorded.
2. Parity: from the same noise and text, the distance of the student at 2, 4 and 8 steps to the teacher's
   DDIM-200 (latent / pixel RMSE, relative DenseNet feature distance: ``sampling_benchmark``'s measures),
   next to the teacher's DDIM-50 and default (unipc_karras-20), all guided at the config's scale, and next
   to the control: the teacher's own weights sampled as a student ("undistilled", where distillation starts).
3. Distribution: KID on DenseNet-121 features between the student's images and a set of the teacher's
   (default sampler), next to the KID between two sets of the teacher's own images with different seeds
   (the floor: what sampling noise alone gives).
4. Prompt following, judged as ``scripts.evaluation.adherence`` judges it (a finding's score on its own
   prompt's images against the no-finding prompt's: difference of means and AUROC). The score is what the
   synthetic radiographs draw for the finding (the torchxrayvision classifier has no weights offline): the
   mean intensity of the lung base on the stated side (a basal opacity) and of the region an enlarged heart
   covers. For the effusions also: how often the stated side is brighter than the other, and how often an
   image's side agrees with the teacher's image from the same seed (a paired comparison). With
   ``student_guidance``, the student also at other guidance factors (its sampling-time knob).
5. Decoder: the student's and the teacher's latents decoded by the float32 decoder and by the decoder under
   bf16 autocast (``--decode_dtype bfloat16``): pixel RMSE (mean, median, max per image), largest pixel
   difference and DenseNet feature distance between the two.
6. With ``--parts "['phases']"``: where the side of a one-sided finding is kept or lost: from the same noise,
   each of the 4 phases solved by the teacher or by one student step (``compare_phases``).
7. With ``--full_size_timing``: seconds per image at full size (released weights when present, random
   otherwise) of the student's 4 steps (float32 and bf16 decoder) against the default and the reference
   recipe, decoder apart (``sampling_benchmark.time_recipe``).

    python -m benchmarks.parity_model --output_dir models/parity --minutes 8
    python -m benchmarks.distill_parity --parity_model_dir models/parity --iterations 1500 --threads 1 \\
        --output_json docs/distillation_parity.json
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.sampling_benchmark import (
    REFERENCE,
    _parity_recipe,
    build_networks,
    device_name,
    make_sampler,
    parity_distances,
    time_recipe,
)
from scripts.common.configs import (
    CONFIGS,
    INFERENCE_CONFIGS,
    TINY_OVERLAYS,
    load_parser,
    training_configs,
)
from scripts.common.files import atomic_write_json

#: distillation over stage 2, with the tiny networks (and nothing else of the tiny runs: this recipe is the benchmark's)
DISTILL_CONFIGS = training_configs("diffusion", str(CONFIGS / "distill.json"), *TINY_OVERLAYS)
TEACHER_REFERENCE = "ddim-200"
TEACHER_SAMPLERS = ("ddim-50", "unipc_karras-20")
STUDENT_STEPS = (2, 4, 8)
ADHERENCE_STEPS = 4
#: ``main``'s arguments that set the distillation run and the evaluation
RUN_KEYS = ("minutes", "iterations", "num_subjects", "batch_size", "lr", "seed", "monitor_interval", "kid_every")
EVALUATION_KEYS = (
    "seed",
    "parity_images",
    "adherence_images",
    "student_guidance",
    "kid_images",
    "kid_subset_size",
    "student_scheduler",
    "xrv_weights",
)
NO_FINDING = "No acute cardiopulmonary process."
#: finding prompt -> (box it brightens, box on the other side or None); boxes are fractions of the image
#: (left, top, right, bottom), radiological convention: the patient's left is the image's right
FINDINGS = {
    "Large left pleural effusion.": ((0.54, 0.50, 0.86, 0.78), (0.14, 0.50, 0.46, 0.78)),
    "Large right pleural effusion.": ((0.14, 0.50, 0.46, 0.78), (0.54, 0.50, 0.86, 0.78)),
    # an enlarged heart reaches x ~ 0.79 at mid-height; a normal one ends at ~0.67 (scripts.data.synthetic)
    "Moderate cardiomegaly.": ((0.70, 0.60, 0.78, 0.72), None),
}


def _prepared_data(work_dir: Path, num_subjects: int, seed: int) -> Path:
    """Synthetic radiographs drawn a quarter larger, then prepared like MIMIC-CXR (once per ``work_dir``)."""
    from scripts.data.prepare import prepare
    from scripts.data.synthetic import generate

    dataset_dir = work_dir / "prepared"
    if not (dataset_dir / "datalist.json").exists():
        generate(str(work_dir / "raw"), num_subjects=num_subjects, seed=seed + 7, image_size=80, reports="tree")
        prepare(str(work_dir / "raw"), str(dataset_dir), short_side=64, num_workers=0, progress=False)
    return dataset_dir


def _stop_when_done(trainer, iterations: int | None, minutes: float) -> None:
    """Stop after ``iterations``, or without them at the first epoch end that would pass ``minutes``."""
    from ignite.engine import Events

    if iterations:
        trainer.add_event_handler(Events.ITERATION_COMPLETED(once=int(iterations)), lambda engine: engine.terminate())
        return
    deadline = time.time() + 60 * minutes
    epoch_started = {"t": time.time()}

    def stop_in_time(engine) -> None:
        seconds = time.time() - epoch_started["t"]
        epoch_started["t"] = time.time()
        if time.time() + seconds > deadline:
            engine.terminate()

    trainer.add_event_handler(Events.EPOCH_COMPLETED, stop_in_time)


def distil(
    model_dir: Path,
    work_dir: Path,
    run: dict,
    monitor: TrainingMonitor | None = None,
) -> dict:
    """Run ``configs/distill.json`` on the parity model; returns what the run did.

    ``run``: ``minutes``, ``iterations`` (None: by ``minutes``), ``num_subjects``, ``batch_size``, ``lr``,
    ``seed``, ``overrides`` (more config keys, e.g. ``{"distill_method": "lcm", "teacher_steps": 1}``) and
    ``monitor_interval``; ``monitor`` records the KID during training (its prompts are the teacher distance's).
    """
    info = json.loads((model_dir / "parity_model.json").read_text())
    train_dir = work_dir / "student"
    settings = {
        "model_dir": str(model_dir),
        "load_old": False,
        "text_encoder_source": str(model_dir / "text_encoder"),
        "scale_factor": info["scale_factor"],
        "dataset_dir": str(_prepared_data(work_dir, run["num_subjects"], run["seed"])),
        "train_dir": str(train_dir),
        "train#batch_size": run["batch_size"],
        "lr": run["lr"],
        "lr_warmup_iterations": 50,
        "num_workers": 0,
        "use_mlflow": False,
        "max_epochs": 100000,
        "val_interval": 20,
        "sample_interval": 0,
        "seed": run["seed"],
        "teacher_distance_interval": run["monitor_interval"],
        "teacher_distance_images_per_prompt": 1,
        **({"teacher_distance_prompts": monitor.prompts} if monitor is not None else {}),
        **run["overrides"],
    }
    parser = load_parser(DISTILL_CONFIGS, settings)
    trainer = parser.get_parsed_content("train#trainer")
    _stop_when_done(trainer, run["iterations"], run["minutes"])
    if monitor is not None:
        monitor.attach(trainer, parser.get_parsed_content("ema_model"), run["monitor_interval"])
    started = time.time()
    parser.get_parsed_content("run")
    parser.get_parsed_content("finalize")
    losses = trainer.state.output["loss"] if isinstance(trainer.state.output, dict) else None
    return {
        "student": str(train_dir / "model_final.pt"),
        "method": parser["distill_method"],
        "settings": {key: parser[key] for key in ("distill_method", "num_phases", "teacher_steps", "ema_decay")},
        "overrides": run["overrides"],
        "seconds": round(time.time() - started, 1),
        "epochs": trainer.state.epoch,
        "iterations": trainer.state.iteration,
        "batch_size": run["batch_size"],
        "lr": run["lr"],
        "seed": run["seed"],
        "training_images": len(parser.get_parsed_content("train#datalist")),
        "last_loss": None if losses is None else float(losses.detach()),
        "teacher_distance": parser.get_parsed_content("teacher_distance").history,
        "kid_during_training": None if monitor is None else monitor.history,
    }


#: evaluation seeds' noise blocks are this far apart (a comparison uses fewer images than this)
SEED_STRIDE = 100_000


def evaluation_seeds(seed: int, offset: int, count: int) -> list[int]:
    """The noise seeds of one comparison (``offset`` tells comparisons apart) for evaluation ``seed``: seed 0 gives
    offset, offset + 1, ...; seed s starts s · ``SEED_STRIDE`` further, so two evaluation seeds never share an
    image (``count`` < 10,000)."""
    if not 0 <= int(count) < 10_000:
        raise ValueError(f"at most 9,999 images per comparison, got {count}.")
    start = int(offset) + int(seed) * SEED_STRIDE
    return list(range(start, start + int(count)))


def _sample(parser, networks, entry, prompts, seeds, feature_network, batch: int = 128, settings=None):
    """(latents, images, features) of one sampler ("scheduler-steps") on ``prompts`` × ``seeds``, in batches
    (features None without ``feature_network``); ``settings`` override the sampler's (e.g. ``decode_dtype``)."""
    from scripts.evaluation import xrv
    from scripts.sampling.sampler import initial_latents

    _, recipe = _parity_recipe(entry)
    sampler = make_sampler(parser, networks, {**recipe, **(settings or {})}, int(recipe["num_inference_steps"]))
    latents, images = [], []
    with torch.inference_mode():
        for start in range(0, len(prompts), batch):
            chunk, chunk_seeds = prompts[start : start + batch], seeds[start : start + batch]
            context = sampler.encode_prompts(chunk)
            uncond = sampler.encode_prompts([""] * len(chunk))
            noise = initial_latents(chunk_seeds, sampler.latent_shape)
            clean = sampler.denoise(networks["network"], noise, context, uncond, seeds=chunk_seeds)
            latents.append(clean.float())
            images.append(sampler.decode(clean))
        images = torch.cat(images)
        features = None if feature_network is None else xrv.image_features(feature_network, images)
        return torch.cat(latents), images, features


def _box_mean(images: torch.Tensor, box) -> np.ndarray:
    size = images.shape[-1]
    left, top, right, bottom = (round(v * size) for v in box)
    return images[:, 0, top:bottom, left:right].mean(dim=(1, 2)).numpy()


def _stated_side(images: torch.Tensor, box, other_box) -> np.ndarray:
    """(N,) bool: the stated side's base is brighter than the other side's."""
    return _box_mean(images, box) > _box_mean(images, other_box)


def prompt_following(images_by_prompt: dict, teacher_images_by_prompt: dict | None = None) -> list[dict]:
    """Per finding: its score on its own images vs the no-finding prompt's (difference, AUROC), and for
    one-sided findings the fraction of images whose stated side is brighter than the other and, given the
    teacher's images from the same seeds, the fraction whose side agrees with the teacher's image's (paired)."""
    from scripts.evaluation.adherence import auroc

    rows = []
    for prompt, (box, other_box) in FINDINGS.items():
        own, base = _box_mean(images_by_prompt[prompt], box), _box_mean(images_by_prompt[NO_FINDING], box)
        row = {
            "prompt": prompt,
            "mean_score": float(own.mean()),
            "no_finding_mean_score": float(base.mean()),
            "difference": float(own.mean() - base.mean()),
            "auroc": auroc(own.tolist(), base.tolist()),
        }
        if other_box is not None:
            side = _stated_side(images_by_prompt[prompt], box, other_box)
            row["stated_side_brighter"] = float(np.mean(side))
            if teacher_images_by_prompt is not None:
                teacher_side = _stated_side(teacher_images_by_prompt[prompt], box, other_box)
                row["stated_side_agrees_with_teacher"] = float(np.mean(side == teacher_side))
        rows.append(row)
    return rows


def _with_spread(reference_images: torch.Tensor, images: torch.Tensor, row: dict) -> dict:
    per_image = ((images - reference_images) ** 2).flatten(1).mean(dim=1).sqrt()
    return {**row, "pixel_rmse_median": float(per_image.median()), "pixel_rmse_max": float(per_image.max())}


class ParityModels:
    """The networks the comparisons sample: the teacher (the parity model), the student, and the DenseNet
    whose features the distances and KID use, on the CPU.

    Each sampling method returns ``_sample``'s (latents, images, features) for ``prompts`` × ``seeds``:
    images (N, 1, ``image_size``, ``image_size``) in [0, 1], DenseNet features (N, 1024). ``student_scheduler``
    names the student's sampler (``pcm`` or ``lcm``); the student is set by ``load_student`` or
    ``use_student`` (a network being trained).
    """

    def __init__(self, model_dir: Path, xrv_weights: str | None, student_scheduler: str = "pcm") -> None:
        from scripts.evaluation import xrv

        info = json.loads((model_dir / "parity_model.json").read_text())
        base = {
            "model_dir": str(model_dir),
            "load_old": False,
            "text_encoder_source": str(model_dir / "text_encoder"),
            "scale_factor": info["scale_factor"],
        }
        device = torch.device("cpu")
        self.teacher_parser = load_parser([*INFERENCE_CONFIGS, *TINY_OVERLAYS], base)
        # the student is sampled unguided: distillation folded the teacher's guidance into its weights
        self.student_parser = load_parser([*INFERENCE_CONFIGS, *TINY_OVERLAYS], {**base, "guidance_scale": 1.0})
        self.teacher_networks, _ = build_networks(self.teacher_parser, device)
        self.student_networks = dict(self.teacher_networks)
        self.student_scheduler = str(student_scheduler)
        self.densenet = xrv.load_densenet(xrv_weights, device=device)
        self.image_size = int(self.teacher_parser["image_size"])

    def load_student(self, student_path: str) -> None:
        """Sample the weights file ``student_path`` as the student."""
        from scripts.networks.weights import load_weights

        definition = self.student_parser.get_parsed_content("network_def")
        self.use_student(load_weights(definition, student_path, load_old=False, device=torch.device("cpu")))

    def use_student(self, network: torch.nn.Module) -> None:
        self.student_networks = {**self.teacher_networks, "network": network}

    def teacher(self, entry: str, prompts: list[str], seeds: list[int], **settings):
        """The teacher with the sampler ``entry`` ("scheduler-steps"), guided at the config's scale."""
        return _sample(self.teacher_parser, self.teacher_networks, entry, prompts, seeds, self.densenet, **settings)

    def student(self, steps: int, prompts: list[str], seeds: list[int], features: bool = True, **settings):
        """The student at ``steps`` steps of its sampler."""
        entry, densenet = f"{self.student_scheduler}-{steps}", self.densenet if features else None
        return _sample(self.student_parser, self.student_networks, entry, prompts, seeds, densenet, **settings)

    def undistilled(self, steps: int, prompts: list[str], seeds: list[int]):
        """The control: the teacher's own weights sampled as a student (where distillation starts)."""
        entry = f"{self.student_scheduler}-{steps}"
        return _sample(self.student_parser, self.teacher_networks, entry, prompts, seeds, self.densenet)


class KidReference:
    """The teacher's default-sampler images (seeds A) of ``kid_images`` held-out prompts, as KID's reference.

    Features are centred on the teacher set's mean and divided by one scale, its RMS deviation: KID's cubic
    kernel is not scale-invariant, and a random-weight DenseNet's raw features are large enough to overflow it
    (one scale for all dimensions: a per-dimension one blows up the nearly constant ones). Other sets are drawn
    with seeds B (``seeds_b``) for the same prompts.
    """

    def __init__(self, models: ParityModels, kid_images: int, seed: int, subset_size: int) -> None:
        from benchmarks.parity_model import synthetic_set

        _, self.prompts = synthetic_set(kid_images, models.image_size, seed=seed + 2000)
        self.seeds_a = evaluation_seeds(seed, 10_000, kid_images)
        self.seeds_b = evaluation_seeds(seed, 20_000, kid_images)
        self.seed, self.subset_size = seed, subset_size
        self.features = models.teacher(TEACHER_SAMPLERS[-1], self.prompts, self.seeds_a)[2]
        self.mean = self.features.mean(dim=0)
        self.scale = (self.features - self.mean).pow(2).mean().sqrt().clamp(min=1e-12)
        #: the teacher's own images with seeds B: what sampling noise alone gives
        self.floor = self.kid(models.teacher(TEACHER_SAMPLERS[-1], self.prompts, self.seeds_b)[2])

    def kid(self, features: torch.Tensor) -> dict:
        """KID (mean and spread over subsets) of ``features`` (N, 1024) against the teacher's set."""
        from scripts.evaluation.fidelity import kid

        def standardised(values):
            return ((values - self.mean) / self.scale).double()

        return kid(standardised(self.features), standardised(features), seed=self.seed, subset_size=self.subset_size)


class TrainingMonitor:
    """During distillation: the KID of the trained network's ``steps``-step images against the teacher's, at the
    start and every ``kid_every``-th of the teacher distance's measurements; ``prompts`` (held out) are the
    teacher distance's. ``history`` holds ``{"iteration", "kid_mean", "kid_std", "above_floor"}`` rows."""

    def __init__(self, models: ParityModels, reference: KidReference, prompts, kid_every: int, steps: int = 4):
        self.models, self.reference, self.prompts = models, reference, list(prompts)
        self.kid_every, self.steps = max(1, int(kid_every)), int(steps)
        self.history: list[dict] = []
        self._calls = 0

    def attach(self, trainer, network: torch.nn.Module, interval: int) -> None:
        from ignite.engine import Events

        self.network = network
        trainer.add_event_handler(Events.STARTED, self)
        trainer.add_event_handler(Events.ITERATION_COMPLETED(every=int(interval)), self)

    def __call__(self, engine) -> None:
        self._calls += 1
        if (self._calls - 1) % self.kid_every:
            return
        training = self.network.training
        self.models.use_student(self.network.eval())
        try:
            features = self.models.student(self.steps, self.reference.prompts, self.reference.seeds_b)[2]
        finally:
            self.network.train(training)
        row = self.reference.kid(features)
        above = row["kid_mean"] - self.reference.floor["kid_mean"]
        self.history.append({"iteration": int(engine.state.iteration), **row, "above_floor": above})
        print(
            f"iteration {engine.state.iteration}: KID of {self.steps} steps "
            f"{row['kid_mean']:.3f} ± {row['kid_std']:.3f}"
        )


def compare_parity(models: ParityModels, parity_images: int, seed: int) -> dict:
    """The report's "parity" section: each teacher sampler, student and undistilled step count's distance
    (latent / pixel RMSE with the pixel RMSE's median and max per image, feature distance) to the teacher's
    ``TEACHER_REFERENCE`` from the same noise and text."""
    from benchmarks.parity_model import synthetic_set

    # the same noise and text as the teacher's DDIM-200; prompts not used in training
    _, prompts = synthetic_set(parity_images, models.image_size, seed=seed + 1000)
    seeds = evaluation_seeds(seed, 0, parity_images)
    reference = models.teacher(TEACHER_REFERENCE, prompts, seeds)
    distances = {}
    for entry in TEACHER_SAMPLERS:
        result = models.teacher(entry, prompts, seeds)
        distances[f"teacher {entry}"] = _with_spread(reference[1], result[1], parity_distances(result, reference))
    name = models.student_scheduler
    for steps in STUDENT_STEPS:
        result = models.student(steps, prompts, seeds)
        distances[f"student {name}-{steps}"] = _with_spread(
            reference[1], result[1], parity_distances(result, reference)
        )
        result = models.undistilled(steps, prompts, seeds)
        distances[f"undistilled {name}-{steps}"] = _with_spread(
            reference[1], result[1], parity_distances(result, reference)
        )
    return {
        "reference": f"teacher {TEACHER_REFERENCE}",
        "num_images": parity_images,
        "guidance_scale": float(models.teacher_parser["guidance_scale"]),
        "feature_network": models.densenet.weights_source,
        "distances": distances,
    }


def compare_distributions(models: ParityModels, reference: KidReference) -> dict:
    """The report's "kid" section: KID (mean and spread over subsets, excess over the floor in the floor's standard
    deviations) of the student's and the undistilled control's images (seeds B) against the teacher's default
    sampler's (seeds A), next to the floor: the teacher's own images with seeds B against seeds A."""
    name, prompts, seeds = models.student_scheduler, reference.prompts, reference.seeds_b
    kids = {"teacher vs teacher (floor)": dict(reference.floor)}
    for steps in STUDENT_STEPS:
        kids[f"student {name}-{steps} vs teacher"] = reference.kid(models.student(steps, prompts, seeds)[2])
    features = models.undistilled(ADHERENCE_STEPS, prompts, seeds)[2]
    kids[f"undistilled {name}-{ADHERENCE_STEPS} vs teacher"] = reference.kid(features)
    floor = reference.floor
    for value in kids.values():
        value["ratio_to_floor"] = value["kid_mean"] / floor["kid_mean"] if floor["kid_mean"] > 0 else None
        value["above_floor"] = value["kid_mean"] - floor["kid_mean"]
        value["above_floor_in_floor_std"] = value["above_floor"] / floor["kid_std"]
    return {
        "num_images": len(prompts),
        "teacher_sampler": TEACHER_SAMPLERS[-1],
        "feature_network": models.densenet.weights_source,
        "features": "centred on the teacher set (seeds A) and divided by its RMS deviation",
        "sets": kids,
    }


def compare_prompt_following(models: ParityModels, adherence_images: int, seed: int, student_guidance=(1.0,)) -> dict:
    """The report's "prompt_following" section: ``prompt_following``'s rows for the teacher's default
    sampler, the student (at each of ``student_guidance``'s factors) and the undistilled control, each finding
    prompt and the no-finding prompt sampled with the same seeds."""
    default = TEACHER_SAMPLERS[-1]
    student = f"{models.student_scheduler}-{ADHERENCE_STEPS}"
    seeds = evaluation_seeds(seed, 30_000, adherence_images)
    runs = [(f"teacher {default}", models.teacher_parser, models.teacher_networks, default, {})]
    for factor in student_guidance:
        label = f"student {student}" + ("" if float(factor) == 1.0 else f" guidance {float(factor):g}")
        runs.append((label, models.student_parser, models.student_networks, student, {"guidance_scale": factor}))
    runs.append((f"undistilled {student}", models.student_parser, models.teacher_networks, student, {}))
    following, teacher_images = {}, None
    for label, parser, networks, entry, settings in runs:
        images = {
            prompt: _sample(parser, networks, entry, [prompt] * adherence_images, seeds, None, settings=settings)[1]
            for prompt in [*FINDINGS, NO_FINDING]
        }
        following[label] = prompt_following(images, teacher_images)
        if teacher_images is None:  # the first run is the teacher's
            teacher_images = images
    return {"num_images_per_prompt": adherence_images, "no_finding_prompt": NO_FINDING, **following}


#: "phases" part: which of the 4 phases (999 | 759 | 499 | 259 | clean) the guided teacher (T) or one student
#: step (S) solves, in order
PHASE_PATTERNS = ("TTTT", "SSSS", "STTT", "TSSS", "SSTT", "TTSS", "SSST", "TTTS")


def compare_phases(models: ParityModels, adherence_images: int, seed: int, patterns=PHASE_PATTERNS) -> dict:
    """The report's "phases" section: where along the ODE a one-sided finding's side is kept or lost.

    From prompt following's noise (same seeds), each pattern solves the phases of a 4-phase student in turn
    with the teacher (its guided DDIM steps of 20 timesteps to the phase edge) or the student (one step), then
    decodes. Per one-sided finding and pattern: the stated-side rate, the mean margin (stated-side base minus
    other-side base intensity) and the share of images whose side agrees with the all-teacher pattern's.
    """
    from scripts.networks.pcm import CLEAN, ddim_move, sampling_timesteps
    from scripts.sampling.sampler import initial_latents

    if models.student_scheduler != "pcm":
        raise ValueError(f"the phases part needs a pcm student, got {models.student_scheduler!r}.")
    _, teacher_recipe = _parity_recipe("ddim-50")
    teacher = make_sampler(models.teacher_parser, models.teacher_networks, teacher_recipe, 50)
    _, student_recipe = _parity_recipe("pcm-4")
    student = make_sampler(models.student_parser, models.student_networks, student_recipe, 4)
    alphas_cumprod, prediction = teacher.scheduler.alphas_cumprod, teacher.scheduler.prediction_type
    edges = [*sampling_timesteps(4), CLEAN]
    seeds = evaluation_seeds(seed, 30_000, adherence_images)

    def move(sampler, unet, x, t, s, context, uncond):
        output = sampler.guided_output(unet, x, t, context, uncond)
        batch = len(x)
        t, s = torch.full((batch,), t, dtype=torch.long), torch.full((batch,), s, dtype=torch.long)
        return ddim_move(output, x, t, s, alphas_cumprod, prediction)

    rows = {}
    with torch.inference_mode():
        for prompt, (box, other_box) in FINDINGS.items():
            if other_box is None:
                continue
            context = teacher.encode_prompts([prompt] * len(seeds))
            uncond = teacher.encode_prompts([""] * len(seeds))
            margins = {}
            for pattern in patterns:
                x = initial_latents(seeds, teacher.latent_shape)
                for solver, upper, lower in zip(pattern, edges[:-1], edges[1:]):
                    if solver == "S":
                        x = move(student, models.student_networks["network"], x, upper, lower, context, uncond)
                        continue
                    t = upper
                    while t > lower:
                        following = t - 20 if t - 20 > lower else lower
                        x = move(teacher, models.teacher_networks["network"], x, t, following, context, uncond)
                        t = following
                images = teacher.decode(x)
                margins[pattern] = _box_mean(images, box) - _box_mean(images, other_box)
            teacher_side = margins[patterns[0]] > 0
            rows[prompt] = {
                pattern: {
                    "stated_side_brighter": float(np.mean(margin > 0)),
                    "mean_margin": float(margin.mean()),
                    "side_agrees_with_teacher": float(np.mean((margin > 0) == teacher_side)),
                }
                for pattern, margin in margins.items()
            }
    return {
        "num_images_per_prompt": adherence_images,
        "phases": [f"{upper} -> {'clean' if lower < 0 else lower}" for upper, lower in zip(edges[:-1], edges[1:])],
        "patterns": "T: the teacher's guided DDIM steps solve the phase; S: one student step",
        "rows": rows,
    }


def compare_decoders(models: ParityModels, parity_images: int, seed: int) -> dict:
    """The report's "decoder" section: the same latents (the student's and the teacher's default sampler's)
    decoded in float32 and under bf16 autocast: pixel RMSE (mean, median and max per image), the largest pixel
    difference, and the relative DenseNet feature distance of the bf16 images to the float32 ones."""
    from benchmarks.parity_model import synthetic_set

    _, prompts = synthetic_set(parity_images, models.image_size, seed=seed + 1000)
    seeds = evaluation_seeds(seed, 0, parity_images)
    default = TEACHER_SAMPLERS[-1]
    runs = {
        f"student {models.student_scheduler}-4": lambda **settings: models.student(4, prompts, seeds, **settings),
        f"teacher {default}": lambda **settings: models.teacher(default, prompts, seeds, **settings),
    }
    rows = {}
    for label, sample in runs.items():
        latents, images, features = sample()
        bf16_latents, bf16_images, bf16_features = sample(settings={"decode_dtype": "bfloat16"})
        if not torch.equal(bf16_latents, latents):
            raise RuntimeError(f"{label}: the latents differ between the two runs; only the decoder may.")
        per_image = ((bf16_images - images) ** 2).flatten(1).mean(dim=1).sqrt()
        rows[label] = {
            "pixel_rmse": float(((bf16_images - images) ** 2).mean().sqrt()),
            "pixel_rmse_median": float(per_image.median()),
            "pixel_rmse_max": float(per_image.max()),
            "max_abs": float((bf16_images - images).abs().max()),
            "grey_levels_rmse": float(((bf16_images - images) ** 2).mean().sqrt() * 255),
            "feature_distance": float((bf16_features - features).norm(dim=1).mean() / features.norm(dim=1).mean()),
        }
    return {"num_images": parity_images, "against": "the float32 decoder, same latents", "rows": rows}


def evaluate(models: ParityModels, reference: KidReference | None, options: dict) -> dict:
    """Steps 2-6 of the module docstring for ``options["parts"]``: the report's "parity", "kid",
    "prompt_following", "decoder" and "phases" sections (``options``: ``parity_images``, ``adherence_images``, ``seed``,
    ``student_guidance``, ``kid_images``, ``kid_subset_size``)."""
    parts, seed = options["parts"], options["seed"]
    report: dict = {}
    if "parity" in parts:
        report["parity"] = compare_parity(models, options["parity_images"], seed)
    if "kid" in parts:
        if reference is None:
            reference = KidReference(models, options["kid_images"], seed, options["kid_subset_size"])
        report["kid"] = compare_distributions(models, reference)
    if "following" in parts:
        report["prompt_following"] = compare_prompt_following(
            models, options["adherence_images"], seed, options["student_guidance"]
        )
    if "decoder" in parts:
        report["decoder"] = compare_decoders(models, options["parity_images"], seed)
    if "phases" in parts:
        report["phases"] = compare_phases(models, options["adherence_images"], seed)
    return report


def time_full_size(timed_steps: int | None, repeats: int, device: str = "cpu", config_files=INFERENCE_CONFIGS) -> dict:
    """Seconds per image at full size: reference recipe, default, student at 4 steps with the float32 and the bf16
    decoder (decoder apart).

    ``timed_steps`` None times whole runs; ``config_files`` (the full-size inference config) can take an
    overlay, e.g. the tiny one for a quick check of this function.
    """
    from scripts.networks.compilation import resolve_compile
    from scripts.networks.precision import resolve_precision

    device = torch.device(device)
    parser = load_parser(list(config_files), {})
    student_parser = load_parser(list(config_files), {"guidance_scale": 1.0})
    networks, sources = build_networks(parser, device)
    student = networks["network"]  # a full-size student has the teacher's class: timing does not depend on weights
    default = {key: parser[key] for key in REFERENCE}
    default["autocast_dtype"] = resolve_precision(default["autocast_dtype"], device)
    default["compile"] = resolve_compile(default["compile"], device, default["autocast_dtype"], 1, 10**9)
    pcm = {**default, "scheduler_name": "pcm", "num_inference_steps": 4}
    rows = {
        "reference (ddim-50, separate guidance branches, fp32)": time_recipe(
            parser, networks, networks["network"], REFERENCE, 1, timed_steps, repeats, device, cache_null=False
        ),
        "default (unipc_karras-20, guided)": time_recipe(
            parser, networks, networks["network"], default, 1, timed_steps, repeats, device, cache_null=True
        ),
        "student (pcm-4, one pass per step, float32 decoder)": time_recipe(
            student_parser, networks, student, pcm, 1, timed_steps, repeats, device, cache_null=True
        ),
        "student (pcm-4, one pass per step, bf16 decoder)": time_recipe(
            student_parser,
            networks,
            student,
            {**pcm, "decode_dtype": "bfloat16"},
            1,
            timed_steps,
            repeats,
            device,
            True,
        ),
    }
    reference_s = next(iter(rows.values()))["per_image_s"]
    for row in rows.values():
        row["speed_up"] = reference_s / row["per_image_s"]
        row["decoder_share"] = row["decode_s"] / row["per_image_s"]
    return {"device": device_name(device), "threads": torch.get_num_threads(), "weights": sources, "rows": rows}


def _print_training(report: dict) -> None:
    d = report["distillation"]
    print(
        f"distilled {d['iterations']} iterations ({d['epochs']} epochs, batch {d['batch_size']}, "
        f"{d['settings']}) in {d['seconds']} s"
    )
    for iteration, distance in d.get("teacher_distance") or []:
        print(f"  iteration {iteration:>6}: teacher distance {distance:.4f}")
    for row in d.get("kid_during_training") or []:
        print(
            f"  iteration {row['iteration']:>6}: KID {row['kid_mean']:.3f} ± {row['kid_std']:.3f} "
            f"({row['above_floor']:+.3f} over the floor)"
        )


def print_report(report: dict) -> None:
    if "distillation" in report:
        _print_training(report)
    if "parity" in report:
        p = report["parity"]
        print(
            f"distance to {p['reference']} ({p['num_images']} images)  latent RMSE  pixel RMSE (median, max)  feature"
        )
        for name, row in p["distances"].items():
            print(
                f"  {name:<28}{row['latent_rmse']:>10.4f}{row['pixel_rmse']:>11.4f} ({row['pixel_rmse_median']:.4f}, "
                f"{row['pixel_rmse_max']:.4f}){row['feature_distance']:>10.4f}"
            )
    if "kid" in report:
        print(f"KID ({report['kid']['num_images']} vs {report['kid']['num_images']} images)")
        for name, row in report["kid"]["sets"].items():
            print(
                f"  {name:<34}{row['kid_mean']:>10.4f} ± {row['kid_std']:.4f}  above floor {row['above_floor']:+.4f} "
                f"({row['above_floor_in_floor_std']:+.2f} floor std)"
            )
    for label, rows in (report.get("prompt_following") or {}).items():
        if isinstance(rows, list):
            print(f"prompt following, {label}")
            for row in rows:
                side, agrees = row.get("stated_side_brighter"), row.get("stated_side_agrees_with_teacher")
                print(
                    f"  {row['prompt']:<32} difference {row['difference']:+.3f}  AUROC {row['auroc']:.2f}"
                    + ("" if side is None else f"  stated side brighter {side:.0%}")
                    + ("" if agrees is None else f" (agrees with the teacher's image {agrees:.0%})")
                )
    for prompt, rows in ((report.get("phases") or {}).get("rows") or {}).items():
        print(f"phases (T teacher, S student; {report['phases']['phases']}), {prompt}")
        for pattern, row in rows.items():
            print(
                f"  {pattern}  stated side brighter {row['stated_side_brighter']:.0%}  margin "
                f"{row['mean_margin']:+.4f}  side agrees with TTTT {row['side_agrees_with_teacher']:.0%}"
            )
    for label, row in ((report.get("decoder") or {}).get("rows") or {}).items():
        print(f"bf16 decoder vs float32, {label}: {row}")
    if isinstance(report.get("full_size_timing"), dict):
        for name, row in report["full_size_timing"]["rows"].items():
            print(
                f"{name:<56}{row['per_image_s']:>8.2f} s/image "
                f"(decode {row['decode_s']:.2f} s, text {row['text_s']:.2f} s)"
                f"  {row['speed_up']:.1f}x"
            )


def main(
    parity_model_dir: str,
    work_dir: str = "/tmp/distill_parity",
    minutes: float = 10.0,
    iterations: int | None = None,
    overrides: dict | None = None,
    num_subjects: int = 300,
    batch_size: int = 16,
    lr: float = 1e-4,
    student: str | None = None,
    student_scheduler: str | None = None,
    student_guidance=(1.0,),
    monitor_interval: int = 250,
    kid_every: int = 2,
    parity_images: int = 64,
    kid_images: int = 256,
    adherence_images: int = 32,
    full_size_timing: bool = False,
    timed_steps: int = 2,
    repeats: int = 1,
    threads: int | None = None,
    xrv_weights: str | None = None,
    seed: int = 0,
    parts=("parity", "kid", "following", "decoder"),
    kid_subset_size: int = 128,
    output_json: str = "docs/distillation_parity.json",
) -> dict:
    """Distil the parity model (unless ``student`` names a distilled one), measure, write ``output_json``.

    Args:
        parity_model_dir: folder written by ``benchmarks.parity_model`` (the teacher).
        work_dir: the prepared synthetic data and the distillation run (``student/``).
        minutes, iterations: distillation length: ``iterations`` when given, else until the first epoch end
            that would pass ``minutes``.
        overrides: more ``configs/distill.json`` keys (``"{'distill_method': 'lcm', 'teacher_steps': 1}"``).
        num_subjects, batch_size, lr: synthetic subjects prepared, and the run's batch and learning rate.
        student: an already distilled ``model_final.pt``: skip distillation.
        student_scheduler: the student's sampler (default: the distillation's method, else ``pcm``).
        student_guidance: the student's guidance factors in the prompt-following part (1: as distilled).
        monitor_interval, kid_every: iterations between teacher distances during training; KID every
            ``kid_every``-th of them (and at the start).
        parity_images, kid_images, adherence_images: images per comparison (per prompt for adherence).
        full_size_timing: also time the full-size networks (``--full_size_timing True``).
        timed_steps, repeats: as ``sampling_benchmark`` (steps timed per run, timed runs after a warm-up).
        threads: torch threads (None: torch's default); 1 on cores other work shares.
        xrv_weights: torchxrayvision DenseNet weights (random weights without: distances between sets still
            compare, absolute values mean little).
        parts: which comparisons to run ("parity", "kid", "following", "decoder", and "phases", which is not
            run by default); with other than the default four, the others are kept from an existing
            ``output_json``.
        kid_subset_size: images per KID subset (100 subsets; the mean and spread over them are reported).
    """
    if threads:
        torch.set_num_threads(int(threads))
    torch.manual_seed(seed)
    model_dir, work = Path(parity_model_dir), Path(work_dir)
    report: dict = {
        "device": device_name(torch.device("cpu")),
        "threads": torch.get_num_threads(),
        "teacher": str(model_dir),
    }
    parts = tuple(parts) if isinstance(parts, (list, tuple)) else (parts,)
    if set(parts) != {"parity", "kid", "following", "decoder"} and Path(output_json).is_file():
        report = {**json.loads(Path(output_json).read_text()), **report}
    if student is not None and (Path(student).parent / "distillation.json").is_file():  # distilled here before
        report["distillation"] = json.loads((Path(student).parent / "distillation.json").read_text())
    values = dict(locals())
    run = {key: values[key] for key in RUN_KEYS} | {"overrides": dict(overrides or {})}
    options = {key: values[key] for key in EVALUATION_KEYS} | {"parts": parts}
    if not isinstance(student_guidance, (list, tuple)):
        options["student_guidance"] = [student_guidance]
    report = distil_and_evaluate(model_dir, work, report, student, run, options)
    if full_size_timing:
        report["full_size_timing"] = time_full_size(timed_steps, repeats)
    else:
        report["full_size_timing"] = "not run (--full_size_timing True runs it)"
    atomic_write_json(output_json, report)
    print_report(report)
    print(f"report written to {output_json}")
    return report


def distil_and_evaluate(model_dir: Path, work: Path, report: dict, student: str | None, run: dict, options: dict):
    """Steps 1-6: distil (unless ``student`` is given; ``run``: ``distil``'s settings and ``kid_every``), then
    ``evaluate`` with ``options`` (and ``student_scheduler``, ``xrv_weights``); returns ``report`` completed."""
    method = (
        options["student_scheduler"]
        or (report.get("distillation") or {}).get("method")
        or run["overrides"].get("distill_method", "pcm")
    )
    models = ParityModels(model_dir, options["xrv_weights"], method)
    seed, parts = options["seed"], options["parts"]
    reference = None
    if student is None or "kid" in parts:
        reference = KidReference(models, options["kid_images"], seed, options["kid_subset_size"])
    if student is None:
        monitor = TrainingMonitor(
            models, reference, _monitor_prompts(models, options["parity_images"], seed), run["kid_every"]
        )
        report["distillation"] = distil(model_dir, work, run, monitor)
        atomic_write_json(str(work / "student" / "distillation.json"), report["distillation"])
        student = report["distillation"]["student"]
    report["student"] = str(student)
    models.load_student(student)
    started = time.time()
    report.update(evaluate(models, reference, options))
    report["evaluation_seconds"] = round(time.time() - started, 1)
    return report


def _monitor_prompts(models: ParityModels, num_images: int, seed: int) -> list[str]:
    """Held-out prompts of the teacher distance during training (the parity part's)."""
    from benchmarks.parity_model import synthetic_set

    return synthetic_set(num_images, models.image_size, seed=seed + 1000)[1]


if __name__ == "__main__":
    import fire

    fire.Fire(main, serialize=lambda report: None)
