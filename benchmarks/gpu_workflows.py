"""The workflows of the GPU run beside plain sampling: the few-step student, editing, a synthetic data set with its
filters, and the app's time to first image. Each runs through the bundle's own configs and code, on the networks
the run built (random weights unless the config's files exist; timing does not depend on them).

- ``student_part``: a distilled student (a UNet weights file, or the teacher's weights for timing) sampled with its
  settings (``STUDENT_SETTINGS``: PCM, 4 steps, guidance 1), eager and with the best lever combination, each with
  its parity against the student's own float32 run (``benchmarks.gpu_levers``).
- ``editing_part``: ``configs/edit.json`` on an edits file of ``batch_size`` edits (radiographs drawn by
  ``scripts.data.synthetic``, an edit and a keep mask), at ``batch_size``: a warm-up run, then a timed one.
- ``dataset_part``: ``configs/dataset.json`` end to end (plan, calibration, generation, every filter, Parquet
  shards, card) on synthetic MIMIC-format data; the label filter's classifier is the MONAI DenseNet-121 and the
  memorisation filter's extractor RAD-DINO, both with random weights (their cost, not their verdicts).
- ``app_part``: a new Python process builds the app's service from ``configs/app.json`` (weights read from files)
  and answers two generate requests with the page's defaults: seconds to imports, to a loaded service, to the
  first image and to the second. The page's web server (Gradio) is not started: its start does not depend on the
  device (``benchmarks/app_latency.py`` times it with the page on a CPU).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from scripts.common.configs import BUNDLE_ROOT, CONFIGS, INFERENCE_CONFIGS, TINY_OVERLAYS, load_parser

EDIT = str(CONFIGS / "edit.json")
APP = str(CONFIGS / "app.json")
DATASET = str(CONFIGS / "dataset.json")
#: How a distilled student samples (docs/distillation.md).
STUDENT_SETTINGS = {"scheduler_name": "pcm", "num_inference_steps": 4, "guidance_scale": 1}
#: The page's settings of a generate request that decide its time.
REQUEST_KEYS = ("num_inference_steps", "guidance_scale", "scheduler_name")


@dataclass
class Workflows:
    """What the workflow parts share: the run's networks, device, tiny or full size, a work folder, and config
    overrides every workflow gets (e.g. ``autocast_dtype``)."""

    networks: dict
    device: torch.device
    tiny: bool
    work: Path
    overrides: dict

    def files(self, *overlays: str) -> list[str]:
        return [*INFERENCE_CONFIGS, *overlays, *(TINY_OVERLAYS if self.tiny else ())]

    def injected(self) -> dict:
        """Overrides that hand a config the run's networks instead of loading weight files, and its device."""
        names = ("network", "autoencoder", "text_encoder")
        return {
            **{name: self.networks[name] for name in names},
            "device": str(self.device),
            "progress": False,
            **self.overrides,
        }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- the student --------------------------------------------------------------------------------------
def student_part(bench, weights: str | None, settings: dict | None, batch_size: int, combination) -> dict:
    """The student at ``batch_size``: eager (the default's switches) and with the lever ``combination``."""
    from benchmarks.gpu_levers import NO_LEVER, Bench, make_reference, measure, recipe_of
    from benchmarks.sampling_benchmark import unet_flops
    from scripts.networks.weights import load_weights

    student_settings = {**bench.settings, **STUDENT_SETTINGS, **(settings or {})}
    if weights:
        unet = (
            load_weights(bench.parser.get_parsed_content("network_def"), weights, load_old=False, device=bench.device)
            .eval()
            .requires_grad_(False)
        )
    else:
        unet = bench.unet or bench.networks["network"]
    passes = 1 if float(student_settings["guidance_scale"]) == 1.0 else 2
    flops = int(student_settings["num_inference_steps"]) * unet_flops(unet, bench.parser, bench.device, passes)
    student = Bench(
        **{
            **vars(bench),
            "settings": student_settings,
            "unet": unet,
            "flops_per_image": flops,
            "reference": None,
            "yardstick": None,
        }
    )
    make_reference(student)
    rows = [measure(student, NO_LEVER, batch_size)]
    if combination:
        rows.append(measure(student, recipe_of(combination), batch_size))
    return {
        "weights": weights or "the teacher's weights (the run's; the timing of a student does not depend on them)",
        "settings": {key: student_settings[key] for key in ("scheduler_name", "num_inference_steps", "guidance_scale")},
        "flops_per_image": flops,
        "bound_images_per_s": student.bound_images_per_s,
        "rows": rows,
    }


# -- editing ------------------------------------------------------------------------------------------
def editing_part(flows: Workflows, batch_size: int) -> dict:
    """``configs/edit.json`` on ``batch_size`` edits at ``batch_size`` per call, each step timed (a warm-up run
    first); images/s of its ``generate`` step (the edits, their figures and files)."""
    from benchmarks.dataset_benchmark import run_steps
    from benchmarks.editing_demo import write_inputs

    parser = load_parser(flows.files(EDIT), flows.overrides)
    size = int(parser["image_size"])
    edits = write_inputs(flows.work / "edit_inputs", max(1, int(batch_size) // 2), size, seed=0)
    overrides = {**flows.injected(), "edits_file": str(edits), "batch_size": int(batch_size)}
    warmup = run_steps(flows.files(EDIT), {**overrides, "output_dir": str(flows.work / "edits_warmup")})
    steps = run_steps(flows.files(EDIT), {**overrides, "output_dir": str(flows.work / "edits")})
    with open(flows.work / "edits" / "manifest.csv", encoding="utf-8") as manifest:
        count = sum(1 for _ in manifest) - 1
    strength, num_steps = float(parser["strength"]), int(parser["num_inference_steps"])
    return {
        "edits": count,
        "batch_size": int(batch_size),
        "strength": strength,
        "denoising_steps": round(strength * num_steps),
        "masks": "an edit mask (left lung base) and a keep mask (the other half of the chest)",
        "steps_s": steps,
        "warmup_generate_s": warmup["generate"],
        "generate_s": steps["generate"],
        "images_per_s": count / steps["generate"],
    }


# -- a synthetic data set -----------------------------------------------------------------------------
def dataset_overrides(flows: Workflows, data: dict, plan_size: int, batch_size: int) -> dict:
    """The data-set workflow's settings of this run: the synthetic data, the plan's size, the filters' networks
    with random weights (full size: RAD-DINO; tiny: the classifier's features, RAD-DINO takes seconds an image on
    a CPU), every training image for the memorisation filter and every validation image for calibration."""
    synthetic = flows.work / "synthetic_dataset"
    overrides = {
        **flows.injected(),
        "dataset_dir": data["prepared"],
        "chexpert_labels_file": data["labels"],
        "plan_size": int(plan_size),
        "batch_size": int(batch_size),
        "filter_batch_size": int(batch_size),
        "synthetic_dir": str(synthetic),
        "output_dir": str(synthetic / "images"),
        "label_classifier": "@utility_classifier",
        "label_classifier_weights": "random",
        "memorisation_training_images": data["images"]["training"],
        "calibration_images": data["images"]["validation"],
    }
    if flows.tiny:
        overrides.update(memorisation_extractor="@classifier_features", classifier_image_size=64)
    else:
        overrides.update(memorisation_extractor="raddino", raddino_source="random")
    return overrides


def dataset_part(flows: Workflows, plan_size: int, batch_size: int, num_subjects: int) -> dict:
    """``configs/dataset.json`` end to end, each step timed: images/s of generation alone and with the filters,
    shards and card (calibration, once per set, apart)."""
    from benchmarks.dataset_benchmark import prepare_data, run_steps

    started = time.perf_counter()
    data = prepare_data(flows.work / "dataset_data", int(num_subjects))
    data_s = time.perf_counter() - started
    overrides = dataset_overrides(flows, data, plan_size, batch_size)
    steps = run_steps(flows.files(DATASET), overrides)
    summary = json.loads((Path(overrides["synthetic_dir"]) / "dataset_summary.json").read_text())
    count = int(summary["num_images"])
    after_generation = steps["write_manifest"] + steps["score_blocks"] + steps["finalize_dataset"]
    return {
        "plan_size": int(plan_size),
        "num_images": count,
        "batch_size": int(batch_size),
        "filters": list(load_parser(flows.files(DATASET), {})["filters"]),
        "filter_networks": "label agreement: MONAI DenseNet-121, memorisation: "
        + ("the classifier's features" if flows.tiny else "RAD-DINO (ViT-B/14)")
        + ", random weights (their cost, not their verdicts)",
        "splits": summary["splits"],
        "synthetic_data_s": data_s,
        "real_images": data["images"],
        "steps_s": steps,
        "calibration_s": steps["thresholds"],
        "generation_images_per_s": count / steps["generate"],
        "images_per_s": count / (steps["generate"] + after_generation),
    }


# -- the app ------------------------------------------------------------------------------------------
def app_files(tiny: bool) -> list[str]:
    return [*INFERENCE_CONFIGS, EDIT, APP, *(TINY_OVERLAYS if tiny else ())]


def app_child(weights_dir: str, device: str, tiny: bool, output: str, overrides_json: str, started: float) -> None:
    """In a new process (``started``: ``time.time()`` at its first line): the app's service from its configs (weights
    from ``weights_dir``) and two generate requests with the page's defaults; ``time.time()`` after each stage,
    written to ``output`` (JSON)."""
    import monai.bundle  # noqa: F401  what the app imports before it reads its configs
    import transformers  # noqa: F401

    import scripts.app.service  # noqa: F401

    marks = {"process_start": started, "imports": time.time()}
    overrides = {
        "model_dir": weights_dir,
        "load_old": False,
        "text_encoder_source": f"{weights_dir}/text_encoder",
        "device": device,
        **json.loads(overrides_json),
    }
    parser = load_parser(app_files(tiny), overrides)
    # the page's server module (Gradio) is not what is timed, and the GPU machine has no Gradio
    parser["imports"] = [line for line in parser["imports"] if "scripts.app.server" not in line]
    service = parser.get_parsed_content("app_service")
    _sync(torch.device(device))
    marks["service_loaded"] = time.time()
    page = parser.get_parsed_content("app_defaults")
    results = []
    for name, seed in (("first_image", int(page["seed"])), ("second_image", int(page["seed"]) + 1)):
        folder = Path(output).parent / f"app_{name}"
        request = (page["num_inference_steps"], page["guidance_scale"], page["scheduler_name"])
        results.append(service.generate(str(folder), page["prompt"], page["negative_prompt"], seed, 1, *request))
        marks[name] = time.time()
    written = all(os.path.isfile(result[0]["image"]) and os.path.isfile(result[0]["dicom"]) for result in results)
    Path(output).write_text(json.dumps({"marks": marks, "written": written, "settings": dict(page)}, default=str))


def app_part(flows: Workflows, config_files) -> dict:
    """The app's time to first image from a new process (``app_child``), weights read from files written once."""
    from benchmarks.app_latency import write_random_weights

    started = time.perf_counter()
    weights = write_random_weights(flows.work / "app_weights", config_files)
    weights_s = time.perf_counter() - started
    output = flows.work / "app" / "app_marks.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    code = (
        "import time; started = time.time(); import sys; from benchmarks.gpu_workflows import app_child; "
        "app_child(*sys.argv[1:3], sys.argv[3] == 'True', *sys.argv[4:6], started)"
    )
    path = os.pathsep.join(dict.fromkeys([str(BUNDLE_ROOT), *os.environ.get("PYTHONPATH", "").split(os.pathsep)]))
    env = {**os.environ, "PYTHONPATH": path.strip(os.pathsep)}
    spawned = time.time()
    process = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            str(weights),
            str(flows.device),
            str(flows.tiny),
            str(output),
            json.dumps(flows.overrides),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if process.returncode != 0:
        raise RuntimeError(f"the app's process failed ({process.returncode}): {process.stderr[-2000:]}")
    result = json.loads(output.read_text())
    marks = result["marks"]
    return {
        "weights_written_s": weights_s,
        "process_start_s": marks["process_start"] - spawned,
        "imports_s": marks["imports"] - marks["process_start"],
        "load_s": marks["service_loaded"] - marks["imports"],
        "first_image_s": marks["first_image"] - marks["service_loaded"],
        "second_image_s": marks["second_image"] - marks["first_image"],
        "time_to_first_image_s": marks["first_image"] - spawned,
        "images_written": result["written"],
        "request": {key: result["settings"][key] for key in REQUEST_KEYS},
        "not_included": "the page's web server start (device-independent; benchmarks/app_latency.py)",
    }
