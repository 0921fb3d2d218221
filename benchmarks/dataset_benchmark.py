"""``python -m benchmarks.dataset_benchmark``: the data-set workflow end to end on the parity model, timed, with the
utility of what it makes, and the filters' cost beside generation at full size.

    python -m benchmarks.dataset_benchmark --work_dir dataset_benchmark --parity_model_dir models/parity

1. synthetic MIMIC-format data (``num_subjects`` subjects, 80 px) prepared at 64 px (``scripts.data``);
2. the classifier trained on its real training images (``configs/dataset_utility.json``, arm ``real``): the label
   filter's classifier, and its pooled features the memorisation filter's (no pretrained RAD-DINO or torchxrayvision
   weights offline, and those would be of another image domain);
3. a ``plan_size``-image data set of the parity model (``configs/inference.json`` + ``dataset.json`` +
   ``tiny/inference.json``) with every filter, each step of the config's ``run`` timed; then the same plan without
   filters (the images reused) for the per-image cost without them;
4. its utility: real / synthetic / both / synthetic_unfiltered (``configs/dataset_utility.json``);
5. at full size (512 px, the released architecture with random weights: the time does not depend on them), seconds
   per image of generation (the default recipe, timed by ``benchmarks.sampling_benchmark.time_recipe``) and of each
   filter's network.

It is a pipeline check on a small model, not a claim about the released model. Writes
``<work_dir>/dataset_benchmark.json`` (and ``--report`` when given) and prints the figures.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from scripts.common.configs import CONFIGS, INFERENCE_CONFIG, TINY_CONFIGS, load_parser

DATASET = str(CONFIGS / "dataset.json")
UTILITY = str(CONFIGS / "dataset_utility.json")
TINY_INFERENCE = str(TINY_CONFIGS / "inference.json")


def prepare_data(work: Path, num_subjects: int) -> dict:
    """The synthetic MIMIC-format tree and its prepared folder (kept when present); their paths and sizes."""
    from scripts.data.prepare import prepare
    from scripts.data.synthetic import CHEXPERT_CSV, generate

    raw, prepared = work / "synthetic_mimic", work / "prepared"
    if not (raw / CHEXPERT_CSV).is_file():
        generate(str(raw), num_subjects=num_subjects, seed=0, image_size=80)
    if not (prepared / "datalist.json").is_file():
        prepare(str(raw), str(prepared), short_side=64, num_workers=0, progress=False)
    datalist = json.loads((prepared / "datalist.json").read_text())
    return {"raw": str(raw), "prepared": str(prepared), "labels": str(raw / CHEXPERT_CSV),
            "images": {split: len(items) for split, items in datalist.items()}}  # fmt: skip


def run_steps(files: list[str], overrides: dict) -> dict:
    """Run a workflow's ``run`` steps in this process, each timed (seconds), as ``monai.bundle run`` would."""
    parser = load_parser(files, overrides)
    seconds = {}
    for step in parser["run"]:
        start = time.perf_counter()
        parser.get_parsed_content(step.lstrip("@"))
        seconds[step.lstrip("@")] = time.perf_counter() - start
    return seconds


def utility_overrides(data: dict, work: Path, arms: list[str], epochs: int) -> dict:
    return {
        "dataset_dir": data["prepared"], "chexpert_labels_file": data["labels"], "synthetic_dir": str(work / "set"),
        "utility_dir": str(work / "utility"), "arms": arms, "image_size": 64, "classifier_image_size": 64,
        "train#max_epochs": epochs, "train#num_workers": 0,
        "report_note": "A pipeline check on a small model (the parity model, trained minutes on synthetic "
        "MIMIC-format images), not a claim about the released model.",
    }  # fmt: skip


def dataset_overrides(data: dict, work: Path, model_dir: str, plan_size: int, steps: int) -> dict:
    parity = json.loads((Path(model_dir) / "parity_model.json").read_text())
    return {
        "model_dir": model_dir, "load_old": False, "text_encoder_source": f"{model_dir}/text_encoder",
        "scale_factor": parity["scale_factor"], "num_inference_steps": steps, "compile": False, "batch_size": 16,
        "dataset_dir": data["prepared"], "chexpert_labels_file": data["labels"], "plan_size": plan_size,
        "synthetic_dir": str(work / "set"), "output_dir": str(work / "set" / "images"),
        "label_classifier": "@utility_classifier", "label_classifier_weights": str(work / "utility/real/classifier.pt"),
        "memorisation_extractor": "@classifier_features", "classifier_image_size": 64, "progress": False,
        "card#model": "the parity model of benchmarks/parity_model.py (tiny architecture, trained minutes on synthetic "
        "MIMIC-format images)",
        "card#license_name": "procedural-synthetic-data",
        "card#config_files": ["configs/inference.json", "configs/dataset.json", "configs/tiny/inference.json"],
        "card#data_terms": "Procedural synthetic MIMIC-format data (python -m scripts.data.synthetic): no patient "
        "data, no data use terms.",
    }  # fmt: skip


def full_size_costs(device: torch.device, images: int = 8) -> dict:
    """Seconds per 512-px image: generation (default recipe, random weights) and each filter's network."""
    from benchmarks.sampling_benchmark import build_networks, time_recipe
    from scripts.datasets.classifiers import XrvLabelClassifier
    from scripts.datasets.filters import SanityFilter
    from scripts.evaluation.extractors import XrvExtractor, load_raddino
    from scripts.networks.precision import resolve_precision

    parser = load_parser([INFERENCE_CONFIG], {"model_dir": "/nonexistent", "device": str(device)})
    networks, _ = build_networks(parser, device)
    precision = resolve_precision("auto", device)
    settings = {"num_inference_steps": 20, "scheduler_name": "unipc_karras", "autocast_dtype": precision,
                "batched_guidance": True, "channels_last": True, "compile": False}  # fmt: skip
    unet = networks["network"]
    generation = time_recipe(parser, networks, unet, settings, 1, 2, 1, device, True)
    del networks, unet
    batch = torch.rand(images, 1, 512, 512)
    xrv_classifier = XrvLabelClassifier("random", device)
    xrv_classifier.load()
    costs = {"generation_per_image_s": generation["per_image_s"], "generation_precision": str(precision)}
    timed = {
        "sanity": lambda: SanityFilter().score(batch, [{}] * images),
        "label_agreement_xrv": lambda: xrv_classifier.probabilities(batch),
        "memorisation_xrv_features": lambda: XrvExtractor(xrv_classifier.model)(batch),
    }
    raddino = load_raddino("random", device)
    timed["memorisation_raddino_float32"] = lambda: raddino(batch)
    if precision != "float32":  # what the memorisation filter runs: the sampler's precision

        def raddino_autocast():
            with torch.autocast(device.type, dtype=getattr(torch, precision)):
                return raddino(batch).float()

        timed[f"memorisation_raddino_{precision}"] = raddino_autocast
    for name, function in timed.items():
        function()  # warm-up
        start = time.perf_counter()
        function()
        costs[f"{name}_per_image_s"] = (time.perf_counter() - start) / images
    return costs


def main(
    work_dir: str = "dataset_benchmark",
    parity_model_dir: str = "models/parity",
    num_subjects: int = 600,
    plan_size: int = 500,
    num_inference_steps: int = 20,
    utility_epochs: int = 10,
    full_size: bool = True,
    report: str | None = None,
) -> None:
    """Run the benchmark (module docstring) and print its report."""
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    result = {"cpu": os.popen("lscpu | grep 'Model name'").read().strip(), "threads": torch.get_num_threads()}
    result["data"] = data = prepare_data(work, num_subjects)
    start = time.perf_counter()
    run_steps([UTILITY], utility_overrides(data, work, ["real"], utility_epochs))
    result["real_classifier_s"] = time.perf_counter() - start
    files = [INFERENCE_CONFIG, DATASET, TINY_INFERENCE]
    overrides = dataset_overrides(data, work, parity_model_dir, plan_size, num_inference_steps)
    result["with_filters_steps_s"] = run_steps(files, overrides)
    unfiltered = {**overrides, "synthetic_dir": str(work / "set_unfiltered"), "filters": []}
    result["without_filters_steps_s"] = run_steps(files, unfiltered)
    summary = json.loads((work / "set" / "dataset_summary.json").read_text())
    result["dataset"] = {k: summary[k] for k in ("num_images", "splits", "filters", "findings")}
    arms = ["real", "synthetic", "both", "synthetic_unfiltered"]
    run_steps([UTILITY], utility_overrides(data, work, arms, utility_epochs))
    result["utility"] = json.loads((work / "utility" / "utility.json").read_text())["comparison"]
    result["per_image_s"] = per_image(result, plan_size)
    if full_size:
        result["full_size"] = full_size_costs(torch.device("cpu"))
    text = json.dumps(result, indent=2, default=str)
    (work / "dataset_benchmark.json").write_text(text + "\n")
    if report:
        Path(report).write_text(text + "\n")
    print(text)


def per_image(result: dict, plan_size: int) -> dict:
    """Seconds per image: generation, the filters (calibration + scoring), Parquet and card without filters."""
    with_filters, without = result["with_filters_steps_s"], result["without_filters_steps_s"]
    generation = with_filters["generate"] / plan_size
    filters = (with_filters["thresholds"] + with_filters["score_blocks"] - without["score_blocks"]) / plan_size
    export = (without["score_blocks"] + without["finalize_dataset"]) / plan_size
    return {
        "generation": generation,
        "filters": filters,
        "shards_and_card": export,
        "total_without_filters": generation + export,
        "total_with_filters": generation + export + filters,
        "filters_share_of_generation": filters / generation,
    }


if __name__ == "__main__":
    import fire

    fire.Fire(main)
