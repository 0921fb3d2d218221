"""A synthetic data set's utility, measured as CheXGenBench does: classifiers trained on real images, on synthetic
images and on both, each tested on the real test split (``configs/dataset_utility.json``).

Every *arm* trains a fresh classifier (the same seed, network and recipe) on its images: ``real`` (the prepared
training split with its CheXpert labels), ``synthetic`` (the data set's accepted split, labelled by the prompts it was
generated from), ``both``, and ``synthetic_unfiltered`` (accepted and rejected splits: what the filters bought).
Labels are trained as 14 independent sigmoids with binary cross-entropy: 1 is positive, 0 and blank negative, -1
(uncertain) is left out of the loss. Testing gives each finding's AUROC on the real test images (uncertain ones
left out; a finding without positive or negative test images has none), their mean over the findings every arm has,
and the ratio of each arm's AUROC to the real arm's. An arm whose result exists for the same images and settings is
not trained again (``<utility_dir>/<arm>/result.json``, with its weights ``classifier.pt``): the real arm trained
first serves as the data-set workflow's label classifier.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from scripts.common.errors import CxrLdmError
from scripts.common.files import atomic_path, atomic_write_json, atomic_write_text
from scripts.common.hashing import settings_digest
from scripts.data.layout import CHEXPERT_LABELS
from scripts.datasets import parquet
from scripts.datasets.classifiers import classifier_input
from scripts.evaluation.adherence import auroc
from scripts.evaluation.labels import read_chexpert_labels

logger = logging.getLogger(__name__)

#: arm -> the image sets it trains on
ARMS = {
    "real": ("real",),
    "synthetic": ("train",),
    "both": ("real", "train"),
    "synthetic_unfiltered": ("train", "rejected"),
}


class UtilityError(CxrLdmError, ValueError):
    """A utility run that cannot be made from its inputs."""


def label_vector(labels: Mapping[str, float]) -> list[float]:
    """14 training targets: 1 positive, 0 negative or blank, NaN uncertain (left out of the loss and of AUROC)."""
    values = []
    for name in CHEXPERT_LABELS:
        value = labels.get(name)
        values.append(1.0 if value == 1.0 else float("nan") if value == -1.0 else 0.0)
    return values


def real_items(datalist_file: str, section: str, dataset_dir: str, labels_file: str | None) -> list[dict]:
    """Prepared datalist items of ``section`` whose study has CheXpert labels: ``{"image", "label", "name"}``."""
    from scripts.data.images import datalist_items

    if not labels_file or not os.path.isfile(os.fspath(labels_file)):
        raise UtilityError(
            f"Label table '{labels_file}' not found: set --chexpert_labels_file to the CheXpert-format table of the "
            "prepared data (mimic-cxr-2.0.0-chexpert.csv.gz)."
        )
    labels = read_chexpert_labels(labels_file)
    try:
        items = datalist_items(datalist_file, section, dataset_dir)
    except (FileNotFoundError, ValueError) as error:
        raise UtilityError(f"{error} (--dataset_dir, --datalist_file)") from None
    found = [(item, labels.get(str(item.get("study_id", "")).lstrip("s"))) for item in items]
    return [
        {"image": item["image"], "label": label_vector(study), "name": item["name"]}
        for item, study in found
        if study is not None
    ]


def synthetic_items(dataset_dir: str, splits: Sequence[str]) -> list[dict]:
    """Rows of the data set's ``splits`` shards: ``{"png": bytes, "label", "name"}``."""
    files = [p for p in parquet.shard_files(dataset_dir) if os.path.basename(p).split("-")[0] in splits]
    if not files:
        raise UtilityError(
            f"No {'/'.join(splits)} shards in '{dataset_dir}/data': make the data set first "
            "(configs/dataset.json) and point --synthetic_dir at it."
        )
    rows = parquet.read_columns(files, ["image", "file", *CHEXPERT_LABELS])
    return [{"png": r["image"]["bytes"], "label": label_vector(r), "name": r["file"]} for r in rows]


def load_item(item: dict, real_transform: Callable, image_size: int) -> dict:
    """``{"image": (1, S, S) in [0, 1] as ``classifier_input`` makes it, "label": (14,)}`` of a real or synthetic
    item."""
    from PIL import Image

    if "png" in item:
        with Image.open(io.BytesIO(item["png"])) as picture:
            scale = 65535.0 if picture.mode.startswith("I") else 255.0
            image = torch.from_numpy(np.asarray(picture, dtype=np.float32) / scale)[None]
    else:
        image = real_transform({"image": item["image"]})["image"]
        image = (image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(image)).float()
    image = classifier_input(image[None], image_size)[0]
    return {"image": image, "label": torch.tensor(item["label"], dtype=torch.float32)}


def masked_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy over the targets that are not NaN."""
    known = ~torch.isnan(targets)
    if not known.any():
        return logits.sum() * 0.0
    return torch.nn.functional.binary_cross_entropy_with_logits(logits[known], targets[known])


def _loader(items, real_transform, image_size, batch_size, shuffle, num_workers=0):
    from monai.data import DataLoader, Dataset

    dataset = Dataset(list(items), transform=lambda item: load_item(item, real_transform, image_size))
    return DataLoader(dataset, batch_size=int(batch_size), shuffle=shuffle, num_workers=int(num_workers))


def train_classifier(network, items, real_transform, image_size, device, settings: Mapping) -> torch.nn.Module:
    """Train ``network`` on ``items`` with MONAI's ``SupervisedTrainer`` (Adam, masked BCE) for ``max_epochs``."""
    from monai.engines import SupervisedTrainer

    loader = _loader(items, real_transform, image_size, settings["batch_size"], True, settings.get("num_workers", 0))
    network = network.to(device)
    trainer = SupervisedTrainer(
        device=device,
        max_epochs=int(settings["max_epochs"]),
        train_data_loader=loader,
        network=network,
        optimizer=torch.optim.Adam(network.parameters(), lr=float(settings["learning_rate"])),
        loss_function=masked_bce,
    )
    trainer.run()
    return network.eval()


def predict(network, items, real_transform, image_size, device, batch_size) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities (N, 14), targets (N, 14)) of ``items`` with MONAI's ``SupervisedEvaluator``."""
    from ignite.engine import Events
    from monai.engines import SupervisedEvaluator

    loader = _loader(items, real_transform, image_size, batch_size, False)
    outputs: list[tuple[np.ndarray, np.ndarray]] = []
    evaluator = SupervisedEvaluator(device=device, val_data_loader=loader, network=network, decollate=False)

    @evaluator.on(Events.ITERATION_COMPLETED)
    def keep(engine):
        output = engine.state.output
        outputs.append((torch.sigmoid(output["pred"].float()).cpu().numpy(), output["label"].cpu().numpy()))

    evaluator.run()
    return np.concatenate([p for p, _ in outputs]), np.concatenate([t for _, t in outputs])


def per_finding_auroc(probabilities: np.ndarray, targets: np.ndarray) -> dict[str, float | None]:
    """Finding -> AUROC over the test images whose target is known (None without both classes)."""
    result = {}
    for column, name in enumerate(CHEXPERT_LABELS):
        known = ~np.isnan(targets[:, column])
        y, p = targets[known, column], probabilities[known, column].astype(np.float64)
        result[name] = auroc(p[y == 1], p[y == 0])
    return result


def run_arm(arm, items, test_items, network_factory, real_transform, image_size, device, settings, arm_dir) -> dict:
    """Train one arm (or read its result when the same images and settings were trained before) and test it."""
    identity = settings_digest(
        {"arm": arm, "train": [i["name"] for i in items], "test": [i["name"] for i in test_items],
         "settings": dict(settings), "image_size": image_size, "network": repr(network_factory)}, length=16,
    )  # fmt: skip
    path = os.path.join(arm_dir, "result.json")
    if os.path.isfile(path):
        import json

        with open(path, encoding="utf-8") as f:
            stored = json.load(f)
        if stored.get("identity") == identity:
            logger.info("Utility arm %s: trained before (%s)", arm, path)
            return stored
    logger.info("Utility arm %s: training on %d images", arm, len(items))
    from monai.utils import set_determinism

    set_determinism(int(settings["seed"]))
    network = train_classifier(network_factory(), items, real_transform, image_size, device, settings)
    set_determinism(None)
    with atomic_path(os.path.join(arm_dir, "classifier.pt")) as temporary:
        torch.save(network.state_dict(), temporary)
    probabilities, targets = predict(network, test_items, real_transform, image_size, device, settings["batch_size"])
    result = {"identity": identity, "arm": arm, "num_training_images": len(items)}
    result["auroc"] = per_finding_auroc(probabilities, targets)
    atomic_write_json(path, result)
    return result


def compare_arms(results: Mapping[str, dict]) -> dict:
    """Per finding each arm's AUROC and its ratio to the real arm's; the means over the findings every arm has."""
    common = [n for n in CHEXPERT_LABELS if all(r["auroc"][n] is not None for r in results.values())]
    table = {"findings": common, "mean_auroc": {}, "ratio_to_real": {}, "per_finding": {}}
    for arm, result in results.items():
        table["mean_auroc"][arm] = float(np.mean([result["auroc"][n] for n in common])) if common else None
    for name in CHEXPERT_LABELS:
        table["per_finding"][name] = {arm: result["auroc"][name] for arm, result in results.items()}
    if "real" in results:
        real = table["mean_auroc"]["real"]
        for arm, mean in table["mean_auroc"].items():
            table["ratio_to_real"][arm] = mean / real if mean is not None and real else None
    return table


def report_text(table: Mapping, results: Mapping[str, dict], note: str) -> str:
    """Markdown report: per-finding AUROC of each arm and, beside the non-real arms, the ratio to real."""
    arms = list(results)
    lines = ["# Utility of the synthetic data set", "", note, ""]
    lines += [
        "Classifiers trained per arm, tested on the real test split (AUROC; ratio = arm / real).", "",
        "| arm | training images | mean AUROC | ratio to real |", "| --- | --- | --- | --- |",
    ]  # fmt: skip
    for arm in arms:
        mean, ratio = table["mean_auroc"][arm], table["ratio_to_real"].get(arm)
        cells = [f"{mean:.3f}" if mean is not None else "-", f"{ratio:.3f}" if ratio is not None else "-"]
        lines.append(f"| {arm} | {results[arm]['num_training_images']} | {cells[0]} | {cells[1]} |")
    lines += ["", f"Mean over the findings every arm can be scored on: {', '.join(table['findings']) or 'none'}.", ""]
    lines += ["| finding | " + " | ".join(arms) + " |", "|" + " --- |" * (len(arms) + 1)]
    for name, by_arm in table["per_finding"].items():
        cells = [f"{value:.3f}" if value is not None else "-" for value in by_arm.values()]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run_utility(
    arms: Sequence[str],
    real_training_items: Callable[[], list[dict]],
    real_test_items: Callable[[], list[dict]],
    synthetic_dir: str,
    network_factory: Callable[[], torch.nn.Module],
    real_transform: Callable,
    image_size: int,
    utility_dir: str,
    device,
    settings: Mapping,
    note: str = "",
) -> dict:
    """Train and test every arm of ``arms`` (module docstring); write ``utility.json`` and ``report.md``."""
    unknown = [arm for arm in arms if arm not in ARMS]
    if unknown or not arms:
        raise UtilityError(f"--arms {list(arms)}: choose from {list(ARMS)}.")
    test = real_test_items()
    sets: dict[str, list[dict]] = {}
    for part in dict.fromkeys(part for arm in arms for part in ARMS[arm]):
        sets[part] = real_training_items() if part == "real" else synthetic_items(synthetic_dir, (part,))
    results = {}
    for arm in arms:
        items = [item for part in ARMS[arm] for item in sets[part]]
        arm_dir = os.path.join(utility_dir, arm)
        results[arm] = run_arm(arm, items, test, network_factory, real_transform, image_size, device, settings, arm_dir)
    table = compare_arms(results)
    summary = {"arms": results, "comparison": table, "num_test_images": len(test), "settings": dict(settings)}
    atomic_write_json(os.path.join(utility_dir, "utility.json"), summary)
    atomic_write_text(os.path.join(utility_dir, "report.md"), report_text(table, results, note))
    logger.info("Utility report written to %s", os.path.join(utility_dir, "report.md"))
    return summary
