"""GPU measurements in one prepared run, written as one JSON file.

1. Sampling, full-size networks with random weights (timing does not depend on them), whole runs: the
   reference recipe (DDIM-50, float32, separate guidance branches, batch 1) and the default (``auto``
   precision, batched guidance, channels-last, SDPA attention) at each batch size: images/s, peak memory
   and the fraction of the bf16 bound (UNet FLOPs per image from torch's FLOP counter ÷ the card's dense
   bf16 peak).
2. The default compiled with each ``torch.compile`` mode (``reduce-overhead`` adds CUDA graphs) at the
   largest batch: compile seconds, images/s, fraction of the bound; the fastest path is named.
3. Training: ``train_iterations`` iterations of each stage through the bundle's own training configs, at
   full size under bf16 autocast, on a small synthetic data set made on the spot: images/s after a
   warm-up, peak memory, whether every loss was finite.

Each part is written to the JSON as soon as it ends, so a run cut short still returns what it measured;
a part that fails records its error and the others still run.

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
from pathlib import Path

import torch

from benchmarks.sampling_benchmark import (
    REFERENCE,
    build_networks,
    capabilities,
    random_text_encoder,
    time_recipe,
    unet_flops,
)
from benchmarks.sampling_benchmark import main as sampling_benchmark
from scripts.common.configs import (
    BUNDLE_ROOT,
    INFERENCE_CONFIGS,
    TINY_OVERLAYS,
    load_parser,
    tiny_training_overlay,
    training_configs,
)
from scripts.networks.precision import resolve_precision

#: Dense bf16 peak of the H100 SXM (the H200 has the same tensor cores), TFLOP/s.
H100_BF16_TFLOPS = 989.0
#: What the JSON holds; the test checks every field is there.
SAMPLING_FIELDS = ("batch_size", "images_per_s", "per_image_s", "peak_memory_gib", "bound_fraction")
COMPILE_FIELDS = ("mode", "batch_size", "compile_s", "images_per_s", "per_image_s", "peak_memory_gib", "bound_fraction")
TRAINING_FIELDS = ("stage", "iterations", "batch_size", "amp_dtype", "images_per_s", "peak_memory_gib", "loss_finite")


def environment(device: torch.device) -> dict:
    """The machine: device name, torch, CUDA and cuDNN versions, Python."""
    info = {
        **capabilities(device),
        "python": platform.python_version(),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
    }
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info.update(
            gpu=properties.name,
            gpu_memory_gib=properties.total_memory / 2**30,
            compute_capability=f"{properties.major}.{properties.minor}",
        )
    return info


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _config_files(tiny: bool, *extra: str) -> list[str]:
    return [*INFERENCE_CONFIGS, *extra, *(TINY_OVERLAYS if tiny else ())]


def sampling(device: torch.device, tiny: bool, batch_sizes, repeats: int, peak_tflops: float, output_dir: Path) -> dict:
    """The reference recipe at batch 1 and the default at ``batch_sizes``, whole runs, beside the bf16 bound."""
    report = sampling_benchmark(
        config_file=_config_files(tiny),
        device=str(device),
        batch_sizes=list(batch_sizes),
        full_steps=True,
        repeats=repeats,
        levers=False,
        peak_tflops=peak_tflops,
        output_json=str(output_dir / "sampling_benchmark.json"),
        autocast_dtype="auto",
        use_flash_attention=True,
        compile=False,
    )
    timing = report["timing"]
    bound = timing["bound_images_per_s"]

    def summary(row: dict) -> dict:
        return {
            "batch_size": row["batch_size"],
            "settings": row["settings"],
            "images_per_s": row["images_per_s"],
            "per_image_s": row["per_image_s"],
            "peak_memory_gib": row["peak_memory_gib"],
            "bound_fraction": row["images_per_s"] / bound,
        }

    reference, *ours = timing["rows"]
    rows = [summary(row) for row in ours]
    return {
        "reference": summary(reference),
        "default": rows,
        "flops_per_image": timing["flops_per_image"],
        "peak_tflops": peak_tflops,
        "bound_images_per_s": bound,
        "speed_up_over_reference": {str(r["batch_size"]): reference["per_image_s"] / r["per_image_s"] for r in rows},
    }


def compiled_paths(
    device: torch.device, tiny: bool, batch_size: int, modes, repeats: int, peak_tflops: float, eager: dict | None
) -> dict:
    """The default at ``batch_size`` with its UNet compiled in each ``torch.compile`` mode (whole runs)."""
    parser = load_parser(_config_files(tiny), {"use_flash_attention": True})
    networks, _ = build_networks(parser, device)
    settings = {key: parser[key] for key in REFERENCE}
    settings.update(
        autocast_dtype=resolve_precision(parser["autocast_dtype"], device), compile=False, use_flash_attention=True
    )
    per_image_flops = int(settings["num_inference_steps"]) * unet_flops(
        networks["network"], parser, device, batch_size=2
    )
    bound = peak_tflops * 1e12 / per_image_flops
    rows = []
    for mode in modes:
        torch._dynamo.reset()
        try:
            compiled = torch.compile(networks["network"], mode=None if mode == "default" else mode, dynamic=False)
            row = time_recipe(parser, networks, compiled, settings, int(batch_size), None, repeats, device, True)
            steady_loop_s = row["step_s"] * row["timed_steps"]
            rows.append(
                {
                    "mode": mode,
                    "batch_size": row["batch_size"],
                    "compile_s": max(0.0, row["warmup_loop_s"] - steady_loop_s),
                    "images_per_s": row["images_per_s"],
                    "per_image_s": row["per_image_s"],
                    "peak_memory_gib": row["peak_memory_gib"],
                    "bound_fraction": row["images_per_s"] / bound,
                }
            )
        except Exception as error:  # one mode failing (e.g. CUDA graphs) must not lose the others
            rows.append({"mode": mode, "error": f"{type(error).__name__}: {error}"})
    candidates = [r for r in rows if "error" not in r]
    if eager is not None:
        candidates.append({"mode": "eager", **{k: eager[k] for k in ("images_per_s", "bound_fraction")}})
    best = max(candidates, key=lambda r: r["images_per_s"]) if candidates else None
    return {"modes": rows, "best": None if best is None else {"mode": best["mode"], **best}}


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


def run_part(report: dict, path: Path, name: str, function) -> None:
    """``report[name] = function()`` with its wall time, or the error and traceback if it raises; then save."""
    started = time.perf_counter()
    try:
        report[name] = function()
    except Exception as error:  # record it and go on: one failing part must not lose the others
        report[name] = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
    report[name]["wall_s"] = time.perf_counter() - started
    save_report(report, path)
    print(f"[gpu benchmark] {name}: {json.dumps(report[name], default=str)[:2000]}", flush=True)


def main(
    output_dir: str,
    device: str | None = None,
    tiny: bool = False,
    batch_sizes=(1, 8, 32),
    repeats: int = 2,
    compile_modes=("default", "reduce-overhead"),
    train_iterations: int = 20,
    train_batch_size: int = 8,
    train_amp_dtype: str = "bfloat16",
    train_image_size: int | None = None,
    peak_tflops: float = H100_BF16_TFLOPS,
    parts=("sampling", "compile", "training"),
) -> dict:
    """Measure and write ``<output_dir>/gpu_benchmark.json`` (see the module docstring).

    Args:
        output_dir: where the JSON (and the sampling benchmark's own JSON) go.
        device: default: cuda when present, else cpu.
        tiny: the test suite's tiny networks and 64-pixel images (so the script runs on a CPU in a minute).
        batch_sizes: the default's batch sizes; the compiled modes run at the largest.
        repeats: timed whole runs per measurement (median), after a warm-up run.
        compile_modes: ``torch.compile`` modes ("default", "reduce-overhead" = CUDA graphs, "max-autotune").
        train_iterations / train_batch_size / train_amp_dtype: the training part.
        train_image_size: image size of the training data (default: the config's, 512; 64 when tiny).
        peak_tflops: the card's dense bf16 peak, TFLOP/s (H100 SXM and H200: 989).
        parts: which of "sampling", "compile", "training" to run.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    report_path = out / "gpu_benchmark.json"
    parts = [parts] if isinstance(parts, str) else list(parts)
    report: dict = {
        "command": {"device": str(device), "tiny": bool(tiny), "batch_sizes": list(batch_sizes), "parts": parts},
        "environment": environment(device),
    }
    save_report(report, report_path)
    print(f"[gpu benchmark] {json.dumps(report['environment'], default=str)}", flush=True)
    if "sampling" in parts:
        run_part(
            report, report_path, "sampling", lambda: sampling(device, tiny, batch_sizes, repeats, peak_tflops, out)
        )
    if "compile" in parts:
        eager = None  # the eager default at the largest batch, to compare the compiled modes with
        if "error" not in report.get("sampling", {"error": "not run"}):
            eager = max(report["sampling"]["default"], key=lambda r: r["batch_size"])
        run_part(
            report,
            report_path,
            "compile",
            lambda: compiled_paths(device, tiny, max(batch_sizes), compile_modes, repeats, peak_tflops, eager),
        )
    if "training" in parts:
        run_part(
            report,
            report_path,
            "training",
            lambda: training_part(device, tiny, train_image_size, train_iterations, train_batch_size, train_amp_dtype),
        )
    print(f"[gpu benchmark] written {report_path}", flush=True)
    return report


if __name__ == "__main__":
    import fire

    fire.Fire(main, serialize=lambda report: None)
