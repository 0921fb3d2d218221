"""Latent consistency distillation shown on the parity model: distil it through the bundle's config, then
compare the student's few-step images with the teacher's.

1. Distillation: ``configs/distill.json`` (over the training configs and the tiny overlay) on a synthetic
   MIMIC-format data set prepared like MIMIC-CXR, in-process, stopped at the first epoch end after
   ``minutes``; the student is the run's ``model_final.pt`` (the target network).
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
   covers. For the effusions also: how often the stated side is brighter than the other.
5. With ``--full_size_timing``: seconds per image at full size (released weights when present, random
   otherwise) of the student's 4 steps against the default and the reference recipe, decoder apart
   (``sampling_benchmark.time_recipe``).

    python -m benchmarks.parity_model --output_dir models/parity --minutes 8
    python -m benchmarks.distill_parity --parity_model_dir models/parity --minutes 10 \\
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
NO_FINDING = "No acute cardiopulmonary process."
#: finding prompt -> (box it brightens, box on the other side or None); boxes are fractions of the image
#: (left, top, right, bottom), radiological convention: the patient's left is the image's right
FINDINGS = {
    "Large left pleural effusion.": ((0.54, 0.50, 0.86, 0.78), (0.14, 0.50, 0.46, 0.78)),
    "Large right pleural effusion.": ((0.14, 0.50, 0.46, 0.78), (0.54, 0.50, 0.86, 0.78)),
    # an enlarged heart reaches x ~ 0.79 at mid-height; a normal one ends at ~0.67 (scripts.data.synthetic)
    "Moderate cardiomegaly.": ((0.70, 0.60, 0.78, 0.72), None),
}


def distil(
    model_dir: Path, work_dir: Path, minutes: float, num_subjects: int, batch_size: int, lr: float, seed: int
) -> dict:
    """Run ``configs/distill.json`` on the parity model for about ``minutes``; returns what the run did."""
    from ignite.engine import Events

    from scripts.data.prepare import prepare
    from scripts.data.synthetic import generate

    info = json.loads((model_dir / "parity_model.json").read_text())
    dataset_dir = work_dir / "prepared"
    if not (dataset_dir / "datalist.json").exists():  # synthetic radiographs drawn a quarter larger, then prepared
        generate(str(work_dir / "raw"), num_subjects=num_subjects, seed=seed + 7, image_size=80, reports="tree")
        prepare(str(work_dir / "raw"), str(dataset_dir), short_side=64, num_workers=0, progress=False)
    train_dir = work_dir / "student"
    parser = load_parser(
        DISTILL_CONFIGS,
        {
            "model_dir": str(model_dir),
            "load_old": False,
            "text_encoder_source": str(model_dir / "text_encoder"),
            "scale_factor": info["scale_factor"],
            "dataset_dir": str(dataset_dir),
            "train_dir": str(train_dir),
            "train#batch_size": batch_size,
            "lr": lr,
            "lr_warmup_iterations": 50,
            "num_workers": 0,
            "use_mlflow": False,
            "max_epochs": 100000,
            "val_interval": 20,
            "sample_interval": 0,
            "seed": seed,
        },
    )
    trainer = parser.get_parsed_content("train#trainer")
    deadline = time.time() + 60 * minutes
    epoch_started = {"t": time.time()}

    def stop_in_time(engine) -> None:
        seconds = time.time() - epoch_started["t"]
        epoch_started["t"] = time.time()
        if time.time() + seconds > deadline:
            engine.terminate()

    trainer.add_event_handler(Events.EPOCH_COMPLETED, stop_in_time)
    started = time.time()
    parser.get_parsed_content("run")
    parser.get_parsed_content("finalize")
    losses = trainer.state.output["loss"] if isinstance(trainer.state.output, dict) else None
    return {
        "student": str(train_dir / "model_final.pt"),
        "seconds": round(time.time() - started, 1),
        "epochs": trainer.state.epoch,
        "iterations": trainer.state.iteration,
        "batch_size": batch_size,
        "lr": lr,
        "training_images": len(parser.get_parsed_content("train#datalist")),
        "last_loss": None if losses is None else float(losses.detach()),
    }


def _sample(parser, networks, entry, prompts, seeds, feature_network, batch: int = 128):
    """(latents, images, features) of one sampler ("scheduler-steps") on ``prompts`` × ``seeds``, in batches
    (features None without ``feature_network``)."""
    from scripts.evaluation import xrv
    from scripts.sampling.sampler import initial_latents

    _, settings = _parity_recipe(entry)
    sampler = make_sampler(parser, networks, settings, int(settings["num_inference_steps"]))
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


def prompt_following(images_by_prompt: dict) -> list[dict]:
    """Per finding: its score on its own images vs the no-finding prompt's (difference, AUROC), and for
    one-sided findings the fraction of images whose stated side is brighter than the other."""
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
            row["stated_side_brighter"] = float(np.mean(own > _box_mean(images_by_prompt[prompt], other_box)))
        rows.append(row)
    return rows


def _with_spread(reference_images: torch.Tensor, images: torch.Tensor, row: dict) -> dict:
    per_image = ((images - reference_images) ** 2).flatten(1).mean(dim=1).sqrt()
    return {**row, "pixel_rmse_median": float(per_image.median()), "pixel_rmse_max": float(per_image.max())}


class ParityModels:
    """The networks the comparisons sample: the teacher (the parity model), the student, and the DenseNet
    whose features the distances and KID use, on the CPU.

    Each sampling method returns ``_sample``'s (latents, images, features) for ``prompts`` × ``seeds``:
    images (N, 1, ``image_size``, ``image_size``) in [0, 1], DenseNet features (N, 1024).
    """

    def __init__(self, model_dir: Path, student_path: str, xrv_weights: str | None) -> None:
        from scripts.evaluation import xrv
        from scripts.networks.weights import load_weights

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
        student = load_weights(
            self.student_parser.get_parsed_content("network_def"), student_path, load_old=False, device=device
        )
        self.student_networks = {**self.teacher_networks, "network": student.eval().requires_grad_(False)}
        self.densenet = xrv.load_densenet(xrv_weights, device=device)
        self.image_size = int(self.teacher_parser["image_size"])

    def teacher(self, entry: str, prompts: list[str], seeds: list[int]):
        """The teacher with the sampler ``entry`` ("scheduler-steps"), guided at the config's scale."""
        return _sample(self.teacher_parser, self.teacher_networks, entry, prompts, seeds, self.densenet)

    def student(self, steps: int, prompts: list[str], seeds: list[int]):
        """The student at ``steps`` LCM steps."""
        return _sample(self.student_parser, self.student_networks, f"lcm-{steps}", prompts, seeds, self.densenet)

    def undistilled(self, steps: int, prompts: list[str], seeds: list[int]):
        """The control: the teacher's own weights sampled as a student (where distillation starts)."""
        return _sample(self.student_parser, self.teacher_networks, f"lcm-{steps}", prompts, seeds, self.densenet)


def compare_parity(models: ParityModels, parity_images: int, seed: int) -> dict:
    """The report's "parity" section: each teacher sampler, student and undistilled step count's distance
    (latent / pixel RMSE with the pixel RMSE's median and max per image, feature distance) to the teacher's
    ``TEACHER_REFERENCE`` from the same noise and text."""
    from benchmarks.parity_model import synthetic_set

    # the same noise and text as the teacher's DDIM-200; prompts not used in training
    _, prompts = synthetic_set(parity_images, models.image_size, seed=seed + 1000)
    seeds = [seed + i for i in range(parity_images)]
    reference = models.teacher(TEACHER_REFERENCE, prompts, seeds)
    distances = {}
    for entry in TEACHER_SAMPLERS:
        result = models.teacher(entry, prompts, seeds)
        distances[f"teacher {entry}"] = _with_spread(reference[1], result[1], parity_distances(result, reference))
    for steps in STUDENT_STEPS:
        result = models.student(steps, prompts, seeds)
        distances[f"student lcm-{steps}"] = _with_spread(reference[1], result[1], parity_distances(result, reference))
        result = models.undistilled(steps, prompts, seeds)
        distances[f"undistilled lcm-{steps}"] = _with_spread(
            reference[1], result[1], parity_distances(result, reference)
        )
    return {
        "reference": f"teacher {TEACHER_REFERENCE}",
        "num_images": parity_images,
        "guidance_scale": float(models.teacher_parser["guidance_scale"]),
        "feature_network": models.densenet.weights_source,
        "distances": distances,
    }


def compare_distributions(models: ParityModels, kid_images: int, seed: int, kid_subset_size: int) -> dict:
    """The report's "kid" section: KID (mean and spread over subsets, ratio to and excess over the floor) of
    the student's and the undistilled control's images (seeds B) against the teacher's default sampler's
    (seeds A), next to the floor: the teacher's own images with seeds B against seeds A."""
    from benchmarks.parity_model import synthetic_set
    from scripts.evaluation.fidelity import kid

    default = TEACHER_SAMPLERS[-1]
    _, prompts = synthetic_set(kid_images, models.image_size, seed=seed + 2000)
    seeds_a = [seed + 10_000 + i for i in range(kid_images)]
    seeds_b = [seed + 20_000 + i for i in range(kid_images)]
    teacher_a = models.teacher(default, prompts, seeds_a)[2]
    # features centred on the teacher set's mean and divided by one scale, its RMS deviation: KID's cubic
    # kernel is not scale-invariant, and a random-weight DenseNet's raw features are large enough to overflow
    # it (one scale for all dimensions: a per-dimension one blows up the nearly constant ones)
    mean = teacher_a.mean(dim=0)
    scale = (teacher_a - mean).pow(2).mean().sqrt().clamp(min=1e-12)

    def standardised(features):
        return ((features - mean) / scale).double()

    kid_args = {"seed": seed, "subset_size": kid_subset_size}
    floor = kid(standardised(teacher_a), standardised(models.teacher(default, prompts, seeds_b)[2]), **kid_args)
    kids = {"teacher vs teacher (floor)": floor}
    for steps in STUDENT_STEPS:
        features = standardised(models.student(steps, prompts, seeds_b)[2])
        kids[f"student lcm-{steps} vs teacher"] = kid(standardised(teacher_a), features, **kid_args)
    features = standardised(models.undistilled(ADHERENCE_STEPS, prompts, seeds_b)[2])
    kids[f"undistilled lcm-{ADHERENCE_STEPS} vs teacher"] = kid(standardised(teacher_a), features, **kid_args)
    for value in kids.values():
        value["ratio_to_floor"] = value["kid_mean"] / floor["kid_mean"] if floor["kid_mean"] > 0 else None
        value["above_floor"] = value["kid_mean"] - floor["kid_mean"]
    return {
        "num_images": kid_images,
        "teacher_sampler": default,
        "feature_network": models.densenet.weights_source,
        "features": "centred on the teacher set (seeds A) and divided by its RMS deviation",
        "sets": kids,
    }


def compare_prompt_following(models: ParityModels, adherence_images: int, seed: int) -> dict:
    """The report's "prompt_following" section: ``prompt_following``'s rows for the teacher's default
    sampler, the student and the undistilled control, each finding prompt and the no-finding prompt sampled
    with the same seeds."""
    default = TEACHER_SAMPLERS[-1]
    lcm = f"lcm-{ADHERENCE_STEPS}"
    seeds = [seed + 30_000 + i for i in range(adherence_images)]
    following = {}
    for label, parser, networks, entry in [
        (f"teacher {default}", models.teacher_parser, models.teacher_networks, default),
        (f"student {lcm}", models.student_parser, models.student_networks, lcm),
        (f"undistilled {lcm}", models.student_parser, models.teacher_networks, lcm),
    ]:
        images = {
            prompt: _sample(parser, networks, entry, [prompt] * adherence_images, seeds, None)[1]
            for prompt in [*FINDINGS, NO_FINDING]
        }
        following[label] = prompt_following(images)
    return {"num_images_per_prompt": adherence_images, "no_finding_prompt": NO_FINDING, **following}


def evaluate(
    model_dir: Path,
    student_path: str,
    parity_images: int,
    kid_images: int,
    adherence_images: int,
    seed: int,
    xrv_weights: str | None,
    parts=("parity", "kid", "following"),
    kid_subset_size: int = 128,
) -> dict:
    """Steps 2-4 of the module docstring for the ``parts`` asked for: the report's "parity", "kid" and
    "prompt_following" sections."""
    models = ParityModels(model_dir, student_path, xrv_weights)
    report: dict = {}
    if "parity" in parts:
        report["parity"] = compare_parity(models, parity_images, seed)
    if "kid" in parts:
        report["kid"] = compare_distributions(models, kid_images, seed, kid_subset_size)
    if "following" in parts:
        report["prompt_following"] = compare_prompt_following(models, adherence_images, seed)
    return report


def time_full_size(timed_steps: int | None, repeats: int, device: str = "cpu", config_files=INFERENCE_CONFIGS) -> dict:
    """Seconds per image at full size: reference recipe, default, student at 4 LCM steps (decoder apart).

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
    lcm = {**default, "scheduler_name": "lcm", "num_inference_steps": 4}
    rows = {
        "reference (ddim-50, separate guidance branches, fp32)": time_recipe(
            parser, networks, networks["network"], REFERENCE, 1, timed_steps, repeats, device, cache_null=False
        ),
        "default (unipc_karras-20, guided)": time_recipe(
            parser, networks, networks["network"], default, 1, timed_steps, repeats, device, cache_null=True
        ),
        "student (lcm-4, one pass per step)": time_recipe(
            student_parser, networks, student, lcm, 1, timed_steps, repeats, device, cache_null=True
        ),
    }
    reference_s = next(iter(rows.values()))["per_image_s"]
    for row in rows.values():
        row["speed_up"] = reference_s / row["per_image_s"]
        row["decoder_share"] = row["decode_s"] / row["per_image_s"]
    return {"device": device_name(device), "weights": sources, "rows": rows}


def print_report(report: dict) -> None:
    if "distillation" in report:
        d = report["distillation"]
        print(
            f"distilled {d['iterations']} iterations ({d['epochs']} epochs, batch {d['batch_size']}) "
            f"in {d['seconds']} s"
        )
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
        print(f"KID ({report['kid']['num_images']} vs {report['kid']['num_images']} images)")
        for name, row in report["kid"]["sets"].items():
            ratio = row["ratio_to_floor"]
            print(
                f"  {name:<34}{row['kid_mean']:>10.5f} ± {row['kid_std']:.5f}  "
                f"x{ratio if ratio is None else round(ratio, 2)}"
            )
        following = report["prompt_following"]
        for label, rows in following.items():
            if isinstance(rows, list):
                print(f"prompt following, {label}")
                for row in rows:
                    side = row.get("stated_side_brighter")
                    print(
                        f"  {row['prompt']:<32} difference {row['difference']:+.3f}  AUROC {row['auroc']:.2f}"
                        + ("" if side is None else f"  stated side brighter {side:.0%}")
                    )
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
    num_subjects: int = 300,
    batch_size: int = 32,
    lr: float = 1e-4,
    student: str | None = None,
    parity_images: int = 64,
    kid_images: int = 256,
    adherence_images: int = 32,
    full_size_timing: bool = False,
    timed_steps: int = 2,
    repeats: int = 1,
    xrv_weights: str | None = None,
    seed: int = 0,
    parts=("parity", "kid", "following"),
    kid_subset_size: int = 128,
    output_json: str = "docs/distillation_parity.json",
) -> dict:
    """Distil the parity model (unless ``student`` names a distilled one), measure, write ``output_json``.

    Args:
        parity_model_dir: folder written by ``benchmarks.parity_model`` (the teacher).
        work_dir: the prepared synthetic data and the distillation run (``student/``).
        minutes: distillation budget; the run stops at the first epoch end that would pass it.
        num_subjects, batch_size, lr: synthetic subjects prepared, and the run's batch and learning rate.
        student: an already distilled ``model_final.pt``: skip distillation.
        parity_images, kid_images, adherence_images: images per comparison (per prompt for adherence).
        full_size_timing: also time the full-size networks (``--full_size_timing True``).
        timed_steps, repeats: as ``sampling_benchmark`` (steps timed per run, timed runs after a warm-up).
        xrv_weights: torchxrayvision DenseNet weights (random weights without: distances between sets still
            compare, absolute values mean little).
        parts: which comparisons to run ("parity", "kid", "following"); with fewer than all, the others are
            kept from an existing ``output_json``.
        kid_subset_size: images per KID subset (100 subsets; the mean and spread over them are reported).
    """
    torch.manual_seed(seed)
    model_dir, work = Path(parity_model_dir), Path(work_dir)
    report: dict = {"device": device_name(torch.device("cpu")), "teacher": str(model_dir)}
    parts = tuple(parts) if isinstance(parts, (list, tuple)) else (parts,)
    if set(parts) != {"parity", "kid", "following"} and Path(output_json).is_file():
        report = {**json.loads(Path(output_json).read_text()), **report}
    if student is None:
        report["distillation"] = distil(model_dir, work, minutes, num_subjects, batch_size, lr, seed)
        atomic_write_json(str(work / "student" / "distillation.json"), report["distillation"])
        student = report["distillation"]["student"]
    elif (Path(student).parent / "distillation.json").is_file():  # a student this benchmark distilled before
        report["distillation"] = json.loads((Path(student).parent / "distillation.json").read_text())
    report["student"] = str(student)
    started = time.time()
    report.update(
        evaluate(
            model_dir, student, parity_images, kid_images, adherence_images, seed, xrv_weights, parts, kid_subset_size
        )
    )
    report["evaluation_seconds"] = round(time.time() - started, 1)
    if full_size_timing:
        report["full_size_timing"] = time_full_size(timed_steps, repeats)
    else:
        report["full_size_timing"] = "not run (--full_size_timing True runs it)"
    atomic_write_json(output_json, report)
    print_report(report)
    print(f"report written to {output_json}")
    return report


if __name__ == "__main__":
    import fire

    fire.Fire(main, serialize=lambda report: None)
