"""GPU measurements in one prepared run, written as one JSON file, part by part.

Parts, in the order they run (the most important figures first; ``--parts`` selects):

1. ``sampling``: whole runs on full-size networks (random weights unless the config's files exist; timing does not
   depend on them): the reference recipe (DDIM-50, float32, separate guidance branches, batch 1) and the default
   (``auto`` precision, batched guidance, channels-last, SDPA attention, eager) at each batch size: images/s, peak
   memory and the fraction of the bf16 bound (UNet FLOPs per image from torch's FLOP counter / the card's dense
   bf16 peak).
2. ``levers``: at ``lever_batch_size``, the default eager, each speed lever alone (``benchmarks.gpu_levers``:
   bf16 weights, bf16 decoding, twice the batch, cuDNN autotuning, FlashAttention / cuDNN / memory-efficient
   attention, compile, CUDA graphs, float8), then the best combination of those at parity at the batch and twice
   it; each row with its parity against float32 on the same seeds; the best recipe at parity, its fraction of the
   bound and where its time goes; where the UNet's FLOPs go (``flop_shares``).
3. ``student``: the distilled few-step student (``--student_weights``; PCM, 4 steps, guidance 1) eager and with
   the best combination.
4. ``editing``, 5. ``dataset``, 6. ``app``: the editing workflow at the lever batch, the data-set workflow with its
   filters, and the app's time to first image (``benchmarks.gpu_workflows``).
7. ``autotune``: ``torch.compile``'s max-autotune alone (minutes of tuning, so after everything else).
8. ``training``: iterations of each stage through the training configs at full size under bf16 autocast.

``summary`` (written after every part): the fastest recipe at parity of all rows, its fraction of the bound and
whether it reaches half of it.

Each part (and each lever row) is written to the JSON as soon as it ends, so a run cut short still returns what it
measured; a part or a lever that fails records its error and the others still run. A lever that needs what the
machine lacks (CUDA, float8 tensor cores, torchao) records why it was skipped. ``--budget_s`` skips what its
estimate (``ESTIMATES_S``, seconds on an H100/H200) would not leave time for, saying so.

    bash benchmarks/gpu.sh                               # on the GPU machine (installs the carried wheels)
    python -m benchmarks.gpu --output_dir gpu_out        # anywhere with the requirements installed
    python -m benchmarks.gpu --output_dir out --tiny True --device cpu   # tiny networks (the test suite)
"""

from __future__ import annotations

import json
import math
import os
import platform
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.gpu_levers import (
    LEVERS,
    Bench,
    Machine,
    best_summary,
    feature_extractor,
    flop_shares,
    late_levers_part,
    levers_part,
)
from benchmarks.sampling_benchmark import (
    REFERENCE,
    build_networks,
    capabilities,
    random_text_encoder,
    resolve_default,
    time_recipe,
    unet_flops,
)
from scripts.common.configs import (
    BUNDLE_ROOT,
    INFERENCE_CONFIGS,
    TINY_OVERLAYS,
    load_parser,
    tiny_training_overlay,
    training_configs,
)

#: Dense bf16 peak of the H100 SXM (the H200 has the same tensor cores), TFLOP/s.
H100_BF16_TFLOPS = 989.0
PARTS = ("sampling", "levers", "student", "editing", "dataset", "app", "autotune", "training")
LEVER_NAMES = tuple(lever.name for lever in LEVERS)
#: Levers whose preparation takes minutes: measured in the autotune part, after the workflows.
LATE_LEVERS = ("max_autotune",)
DEFAULT_LEVERS = tuple(name for name in LEVER_NAMES if name not in LATE_LEVERS)
#: Seconds each part (its own work; "levers" and "autotune" without their rows) or row takes at full size on an
#: H100/H200 with 16 CPU cores, for ``--budget_s``. From the H200 run of docs/gpu_benchmark_h200.json: the sampling
#: part took 54 s with its network build (the build: ~25 s, now once per run, "setup"); a batch-32 default run
#: 2.4 s, so an eager row (a warm-up and 2 timed runs, parity) ~8 s; a compile 33-37 s, so a compiled row ~45 s;
#: training 31 s. Estimated: float8 (conversion, a larger graph) 60 s; max-autotune, which tunes each convolution
#: and matrix shape, 240 s; the workflows load or write networks (1.4 GB of weights for the app's process) and
#: run 32-64 images. All together ~550 s without max-autotune and training: with the default budget those two run
#: only when the others were quicker than estimated (``--parts`` runs them on their own).
ESTIMATES_S = {
    "setup": 25, "sampling": 30, "levers": 25, "lever:bf16_weights": 8, "lever:decode_bf16": 8,
    "lever:double_batch": 15, "lever:cudnn_benchmark": 8, "lever:sdpa_flash": 8, "lever:sdpa_cudnn": 8,
    "lever:sdpa_efficient": 8, "lever:compile": 45, "lever:cuda_graphs": 45, "lever:fp8": 60, "combination": 50,
    "student": 45, "editing": 20, "dataset": 45, "app": 45, "autotune": 5, "lever:max_autotune": 240,
    "training": 35,
}  # fmt: skip
#: What the JSON holds; the test checks every field is there.
SAMPLING_FIELDS = ("batch_size", "images_per_s", "per_image_s", "peak_memory_gib", "bound_fraction")
LEVER_FIELDS = (
    "recipe",
    "batch_size",
    "images_per_s",
    "per_image_s",
    "peak_memory_gib",
    "bound_fraction",
    "compile_s",
    "parity",
    "at_parity",
    "parity_note",
)
PARITY_FIELDS = (
    "latent_rmse",
    "pixel_rmse",
    "feature_distance",
    "latent_relative",
    "image_mean_abs",
    "image_p99_abs",
    "num_images",
)
TRAINING_FIELDS = ("stage", "iterations", "batch_size", "amp_dtype", "images_per_s", "peak_memory_gib", "loss_finite")


def environment(device: torch.device) -> dict:
    """The machine: device name, torch, CUDA and cuDNN versions, Python, optional packages of the levers."""
    machine = Machine.of(device)
    info = {
        **capabilities(device),
        "python": platform.python_version(),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "torchao": _version("torchao") if machine.torchao else None,
        "triton": _version("triton") if machine.triton else None,
    }
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info.update(
            gpu=properties.name,
            gpu_memory_gib=properties.total_memory / 2**30,
            compute_capability=f"{properties.major}.{properties.minor}",
        )
    return info


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _config_files(tiny: bool, *extra: str) -> list[str]:
    return [*INFERENCE_CONFIGS, *extra, *(TINY_OVERLAYS if tiny else ())]


class Budget:
    """``--budget_s`` seconds from the start of the run; ``check(key)`` says why a part or row must be skipped
    (its ``estimates[key]`` would not fit in what is left), or None."""

    def __init__(self, seconds: float | None, estimates: dict, clock: Callable[[], float] = time.perf_counter):
        self.seconds, self.estimates, self.clock = seconds, estimates, clock
        self.started = clock()

    def left(self) -> float:
        return math.inf if self.seconds is None else self.seconds - (self.clock() - self.started)

    def check(self, key: str) -> str | None:
        need, left = self.estimates.get(key, 0.0), self.left()
        if need <= left:
            return None
        return f"skipped: budget ({need:.0f} s estimated on an H100/H200, {max(0.0, left):.0f} s of --budget_s left)"


class Run:
    """One run's settings and what its parts share: the parser, the networks and the default recipe, built on
    first use (a part that fails to build them records the error; the next part tries again)."""

    def __init__(self, device: torch.device, tiny: bool, options: dict, work: Path) -> None:
        self.device, self.tiny, self.options, self.work = device, tiny, options, work
        self.overrides = {"use_flash_attention": True, "autocast_dtype": options["autocast_dtype"]}
        self._bench: Bench | None = None

    def bench(self) -> Bench:
        """The default recipe (eager) on the run's networks, its FLOPs per image and parity features."""
        if self._bench is None:
            from scripts.networks.weights import fill_zero_initialised

            parser = load_parser(_config_files(self.tiny), self.overrides)
            networks, sources = build_networks(parser, self.device)
            if sources["network"] == "random weights":  # a fresh UNet predicts exactly 0: parity would be trivial
                fill_zero_initialised(networks["network"])
            settings, precision = resolve_default(parser, self.device, run_images=1)
            settings["compile"] = False
            steps = int(settings["num_inference_steps"])
            flops = steps * unet_flops(networks["network"], parser, self.device, batch_size=2)
            self._bench = Bench(
                parser=parser,
                networks=networks,
                device=self.device,
                settings=settings,
                repeats=int(self.options["repeats"]),
                flops_per_image=flops,
                peak_tflops=float(self.options["peak_tflops"]),
                machine=Machine.of(self.device),
                parity_images=int(self.options["parity_images"]),
                features=feature_extractor(self.device, 64 if self.tiny else 224),
                log=lambda line: print(f"[gpu benchmark] {line}", flush=True),
            )
            self.sources, self.precision = sources, precision
        return self._bench


def sampling(run: Run) -> dict:
    """The reference recipe at batch 1 and the default (eager) at each batch size, whole runs, beside the bound."""
    bench = run.bench()
    parser, networks, device = bench.parser, bench.networks, run.device
    reference_unet = networks["network"]
    if parser["use_flash_attention"] != REFERENCE["use_flash_attention"]:  # the reference's own attention
        reference_unet = load_parser(_config_files(run.tiny), {**run.overrides, "use_flash_attention": False})
        reference_unet = reference_unet.get_parsed_content("network_def").to(device).eval().requires_grad_(False)
        reference_unet.load_state_dict(networks["network"].state_dict())
    repeats, bound = bench.repeats, bench.bound_images_per_s

    def summary(row: dict) -> dict:
        keys = (
            "batch_size",
            "settings",
            "images_per_s",
            "per_image_s",
            "peak_memory_gib",
            "text_s",
            "step_s",
            "decode_s",
        )
        return {**{key: row[key] for key in keys}, "bound_fraction": row["images_per_s"] / bound}

    reference = summary(time_recipe(parser, networks, reference_unet, REFERENCE, 1, None, repeats, device, False))
    del reference_unet
    rows = [
        summary(
            time_recipe(parser, networks, networks["network"], bench.settings, int(size), None, repeats, device, True)
        )
        for size in run.options["batch_sizes"]
    ]
    return {
        "weights": run.sources,
        "precision": run.precision,
        "reference": reference,
        "default": rows,
        "flops_per_image": bench.flops_per_image,
        "peak_tflops": bench.peak_tflops,
        "bound_images_per_s": bound,
        "speed_up_over_reference": {str(r["batch_size"]): reference["per_image_s"] / r["per_image_s"] for r in rows},
    }


def levers(run: Run, budget: Budget, save: Callable[[dict], None]) -> dict:
    """``benchmarks.gpu_levers.levers_part`` at the lever batch, with where the UNet's FLOPs go."""
    bench = run.bench()
    shares = flop_shares(bench.networks["network"], bench.parser, run.device)
    names = list(run.options["levers"])
    unknown = sorted(set(names) - set(LEVER_NAMES))
    if unknown:
        raise ValueError(f"unknown levers {unknown}: choose from {list(LEVER_NAMES)}")

    def save_with_shares(partial: dict) -> None:
        save({**partial, "flop_shares": shares})

    report = levers_part(bench, names, int(run.options["lever_batch_size"]), budget.check, save_with_shares)
    return {**report, "flop_shares": shares}


def autotune(run: Run, budget: Budget) -> dict:
    """``benchmarks.gpu_levers.late_levers_part``: max-autotune alone at the lever batch."""
    names = list(run.options["late_levers"])
    unknown = sorted(set(names) - set(LEVER_NAMES))
    if unknown:
        raise ValueError(f"unknown levers {unknown}: choose from {list(LEVER_NAMES)}")
    return late_levers_part(run.bench(), names, int(run.options["lever_batch_size"]), budget.check)


def summarize(report: dict) -> dict | None:
    """The fastest recipe at parity among every row of the levers and autotune parts (``best_summary``)."""
    levers, late = report.get("levers") or {}, report.get("autotune") or {}
    bound = levers.get("bound_images_per_s") or (report.get("sampling") or {}).get("bound_images_per_s")
    rows = [levers.get("default"), *(levers.get("rows") or {}).values()]
    rows += [
        *(levers.get("combination") or {}).get("rows", []),
        late.get("default"),
        *(late.get("rows") or {}).values(),
    ]
    if not bound or not any(rows):
        return None
    return best_summary(rows, bound)


def best_levers(levers_report: dict | None) -> list[str]:
    """The levers of the best recipe at parity of the levers part (none when it is the default or missing)."""
    best = (levers_report or {}).get("best") or {}
    recipe = best.get("recipe", "default")
    return [] if recipe == "default" else [name for name in recipe.split("+") if name != "double_batch"]


def synthetic_training_set(folder: Path, image_size: int, num_images: int, seed: int = 0) -> Path:
    """``num_images`` synthetic radiographs (``image_size``², JPEG) with report sentences, and a ``datalist.json``
    in the prepared layout (every image in "training" and "validation").

    Drawn directly rather than through ``scripts.data.prepare``, which needs pandas (not on the GPU machine);
    timing does not depend on the data.
    """
    import numpy as np
    from PIL import Image

    from scripts.data.synthetic import draw_findings, draw_radiograph, write_report

    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    items = []
    for index in range(int(num_images)):
        findings = draw_findings(rng)
        pixels = draw_radiograph(findings, int(image_size), int(image_size), rng)
        name = f"images/{index:04d}.jpg"
        Image.fromarray(pixels, mode="L").save(folder / name, quality=95)
        items.append({"image": name, "sentences": write_report(findings, "PA", rng)[1]})
    (folder / "datalist.json").write_text(json.dumps({"training": items, "validation": items[:2], "test": []}))
    return folder


def stage_config_files(stage: str, tiny: bool) -> list[str]:
    """The config files of a training stage ("autoencoder" or "diffusion"), with the tiny overlays when ``tiny``."""
    return training_configs(stage, *([tiny_training_overlay(stage)] if tiny else []))


def random_diffusion_inputs(tiny: bool, work_dir: Path) -> dict:
    """A random-weight autoencoder (``work_dir/autoencoder.pt``) and text encoder (``work_dir/text_encoder``,
    kept when there) for the diffusion stage, whose timing does not depend on their weights; returns the
    overrides that load them (and keep the stage from sampling)."""
    parser = load_parser(_config_files(tiny), {})
    autoencoder_path = work_dir / "autoencoder.pt"
    torch.save(parser.get_parsed_content("autoencoder_def").state_dict(), autoencoder_path)
    text_encoder = work_dir / "text_encoder"
    if not text_encoder.is_dir():
        random_text_encoder(int(parser["network_def"]["cross_attention_dim"])).save_pretrained(text_encoder)
    return {
        "autoencoder_path": str(autoencoder_path),
        "autoencoder_load_old": False,
        "text_encoder_source": str(text_encoder),
        "sample_interval": 1000,
    }


def stage_overrides(
    stage: str, device: torch.device, tiny: bool, dataset_dir: Path, work_dir: Path, batch_size: int, amp_dtype: str
) -> dict:
    """Config overrides of a one-epoch run of ``stage`` on ``dataset_dir``, writing to ``work_dir/<stage>``:
    no validation, samples or MLflow; autocast to ``amp_dtype`` on CUDA."""
    overrides = {
        "bundle_root": str(BUNDLE_ROOT),
        "device": str(device),
        "dataset_dir": str(dataset_dir),
        "train_dir": str(work_dir / stage),
        "max_epochs": 1,
        "train#batch_size": int(batch_size),
        "val_interval": 1000,  # no validation within the one epoch
        "use_mlflow": False,
        "num_workers": min(8, os.cpu_count() or 1),
        "amp": device.type == "cuda",
        "amp_dtype": amp_dtype,
    }
    if stage == "autoencoder":
        overrides.update(perceptual_random_backbone=True, adversarial_start_epoch=1)  # the discriminator trains too
    else:
        overrides.update(random_diffusion_inputs(tiny, work_dir))
    return overrides


def run_timed(trainer, device: torch.device) -> tuple[list[float], list[float], float]:
    """Run ``trainer`` and return ``(marks, losses, total_s)``: the ``time.perf_counter()`` at the end of each
    iteration (after the device finished it), each iteration's loss, and the seconds of the whole run."""
    from ignite.engine import Events

    marks, losses = [], []

    @trainer.on(Events.ITERATION_COMPLETED)
    def _record(engine) -> None:
        _sync(device)
        marks.append(time.perf_counter())
        output = engine.state.output
        losses.append(float(output["loss"]))

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    start = time.perf_counter()
    trainer.run()
    return marks, losses, time.perf_counter() - start


def train_stage(
    stage: str,
    device: torch.device,
    tiny: bool,
    dataset_dir: Path,
    work_dir: Path,
    iterations: int,
    batch_size: int,
    amp_dtype: str,
    warmup_iterations: int,
) -> dict:
    """``iterations`` iterations of one stage through its configs (no validation, samples or MLflow)."""
    overrides = stage_overrides(stage, device, tiny, dataset_dir, work_dir, batch_size, amp_dtype)
    parser = load_parser(stage_config_files(stage, tiny), overrides)
    parser["train#trainer"]["epoch_length"] = int(iterations)
    trainer = parser.get_parsed_content("train#trainer")
    for step in parser["run"]:
        if step != "@train_model":
            parser.get_parsed_content(step[1:])  # join_process_group, set_determinism, attach_ema
    marks, losses, total_s = run_timed(trainer, device)
    warm = min(int(warmup_iterations), len(marks) - 1)
    timed = len(marks) - 1 - warm
    images_per_s = timed * int(batch_size) / (marks[-1] - marks[warm]) if timed > 0 else None
    return {
        "stage": stage,
        "iterations": len(marks),
        "batch_size": int(batch_size),
        "amp_dtype": amp_dtype if device.type == "cuda" else "float32 (autocast is CUDA-only here)",
        "warmup_iterations": warm,
        "images_per_s": images_per_s,
        "total_s": total_s,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
        "loss_finite": bool(losses) and all(math.isfinite(v) for v in losses),
    }


def training_part(
    device: torch.device, tiny: bool, image_size: int | None, iterations: int, batch_size: int, amp_dtype: str
) -> dict:
    """The training part: both stages on a synthetic set of ``4 * batch_size`` images of ``image_size``² (default:
    the config's 512, 64 when ``tiny``) in a temporary folder, a quarter of the iterations (at most 5) as warm-up."""
    size = int(image_size or (64 if tiny else 512))
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        dataset = synthetic_training_set(work / "data", size, num_images=4 * int(batch_size))
        return {
            "image_size": size,
            "stages": [
                train_stage(
                    stage,
                    device,
                    tiny,
                    dataset,
                    work,
                    iterations,
                    batch_size,
                    amp_dtype,
                    warmup_iterations=min(5, iterations // 4),
                )
                for stage in ("autoencoder", "diffusion")
            ],
        }


def save_report(report: dict, path: Path) -> None:
    """Write the report so far (a run cut short still leaves what it measured)."""
    path.write_text(json.dumps(report, indent=2, default=str))


def run_part(report: dict, path: Path, name: str, function, budget: Budget | None = None) -> None:
    """``report[name] = function()`` with its wall time, or why it was skipped (``budget``), or the error and
    traceback if it raises; then save."""
    started = time.perf_counter()
    reason = budget.check(name) if budget is not None else None
    if reason:
        report[name] = {"skipped": reason}
    else:
        try:
            report[name] = function()
        except Exception as error:  # record it and go on: one failing part must not lose the others
            report[name] = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
    report[name]["wall_s"] = time.perf_counter() - started
    save_report(report, path)
    print(f"[gpu benchmark] {name}: {json.dumps(report[name], default=str)[:2000]}", flush=True)


def part_functions(run: Run, report: dict, path: Path, budget: Budget) -> dict[str, Callable[[], dict]]:
    """What each part of ``PARTS`` runs (the levers part saves the report after each of its rows)."""
    from benchmarks.gpu_workflows import Workflows, app_part, dataset_part, editing_part, student_part

    options = run.options
    batch = int(options["lever_batch_size"])

    def save_levers(partial: dict) -> None:
        report["levers"] = partial
        save_report(report, path)

    def flows() -> Workflows:
        return Workflows(run.bench().networks, run.device, run.tiny, run.work, run.overrides)

    return {
        "sampling": lambda: sampling(run),
        "levers": lambda: levers(run, budget, save_levers),
        "student": lambda: student_part(
            run.bench(),
            options["student_weights"],
            options["student_settings"],
            batch,
            best_levers(report.get("levers")),
        ),
        "editing": lambda: editing_part(flows(), batch),
        "dataset": lambda: dataset_part(flows(), options["dataset_images"], batch, options["dataset_subjects"]),
        "app": lambda: app_part(flows(), _config_files(run.tiny)),
        "autotune": lambda: autotune(run, budget),
        "training": lambda: training_part(
            run.device,
            run.tiny,
            options["train_image_size"],
            options["train_iterations"],
            options["train_batch_size"],
            options["train_amp_dtype"],
        ),
    }


def main(
    output_dir: str,
    device: str | None = None,
    tiny: bool = False,
    parts=PARTS,
    batch_sizes=(1, 8, 32),
    lever_batch_size: int = 32,
    levers=DEFAULT_LEVERS,
    late_levers=LATE_LEVERS,
    repeats: int = 2,
    parity_images: int = 8,
    autocast_dtype: str = "auto",
    student_weights: str | None = None,
    student_settings: dict | None = None,
    dataset_images: int = 64,
    dataset_subjects: int = 100,
    train_iterations: int = 20,
    train_batch_size: int = 8,
    train_amp_dtype: str = "bfloat16",
    train_image_size: int | None = None,
    peak_tflops: float = H100_BF16_TFLOPS,
    budget_s: float | None = 560.0,
    work_dir: str | None = None,
) -> dict:
    """Measure and write ``<output_dir>/gpu_benchmark.json`` (see the module docstring).

    Args:
        output_dir: where the JSON goes.
        device: default: cuda when present, else cpu.
        tiny: the test suite's tiny networks and 64-pixel images (so the script runs on a CPU in a minute).
        parts: which of ``PARTS`` to run, in ``PARTS``' order.
        batch_sizes: the default's batch sizes in the sampling part.
        lever_batch_size: the batch of the levers (and of the combination, with twice it), the student, editing
            and the data set.
        levers: which of ``LEVER_NAMES`` the levers part measures alone, in that order (default: all but
            ``LATE_LEVERS``); late_levers: those the autotune part measures.
        repeats: timed whole runs per measurement (median), after a warm-up run.
        parity_images: images (seeds 0, 1, ...) of each row compared with float32.
        autocast_dtype: the default's precision setting ("auto": bf16 on a GPU).
        student_weights: the distilled student's UNet weights (this bundle's layout); default: the run's UNet.
        student_settings: sampler settings of the student (default ``STUDENT_SETTINGS``: pcm, 4 steps, guidance 1).
        dataset_images: images of the data set; dataset_subjects: synthetic subjects of its real data.
        train_iterations / train_batch_size / train_amp_dtype / train_image_size: the training part (image size
            default: the config's, 512; 64 when tiny).
        peak_tflops: the card's dense bf16 peak, TFLOP/s (H100 SXM and H200: 989).
        budget_s: seconds the run may take; a part or lever row whose ``ESTIMATES_S`` (full size on an H100/H200)
            would not fit in what is left is skipped and says so. None: no limit.
        work_dir: where the workflows write (weights, data, images); default: a temporary folder, removed after.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "gpu_benchmark.json"
    parts = [parts] if isinstance(parts, str) else list(parts)
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise ValueError(f"unknown parts {unknown}: choose from {list(PARTS)}")
    options = {key: value for key, value in locals().items() if key not in ("device", "out", "path", "unknown")}
    for key in ("levers", "late_levers"):
        options[key] = [options[key]] if isinstance(options[key], str) else list(options[key])
    report: dict = {"command": {**options, "device": str(device)}, "environment": environment(device)}
    save_report(report, path)
    print(f"[gpu benchmark] {json.dumps(report['environment'], default=str)}", flush=True)
    budget = Budget(budget_s, ESTIMATES_S)
    with tempfile.TemporaryDirectory() if work_dir is None else _folder(work_dir) as work:
        run = Run(device, bool(tiny), options, Path(work))
        functions = part_functions(run, report, path, budget)
        for name in [part for part in PARTS if part in parts]:
            run_part(report, path, name, functions[name], budget)
            if name in ("levers", "autotune"):
                report["summary"] = summarize(report)
                save_report(report, path)
    print(f"[gpu benchmark] written {path}", flush=True)
    return report


def _folder(path: str):
    """A context whose value is ``path`` (made if missing), kept afterwards."""
    import contextlib

    Path(path).mkdir(parents=True, exist_ok=True)
    return contextlib.nullcontext(str(path))


if __name__ == "__main__":
    import fire

    fire.Fire(main, serialize=lambda report: None)
