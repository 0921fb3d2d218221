"""Filters of a synthetic data set: each a registered component with a name, a score function and a threshold.

A filter scores every image and gives a verdict; no image is dropped: each keeps its ``<name>_score``,
``<name>_pass`` and the filter's extra columns, and an image that fails any filter goes to the ``rejected`` split.
``configs/dataset.json`` defines each filter under ``filter#<name>`` and runs those named in ``filters``, in order.

- ``sanity``: score = the image's standard deviation (intensities in [0, 1]); rejected when below ``min_std``
  (blank), when more than ``max_saturated_fraction`` of its pixels are at 0 or 1 (saturated), or when the sampler
  produced non-finite pixels (recorded by ``scripts.datasets.writer.DatasetWriter``).
- ``label_agreement``: a label classifier (``scripts.datasets.classifiers``) against the prompt's labels, for the
  findings it covers: score = the number of findings where it disagrees at its operating point; kept when at most
  ``max_disagreements``. Positive findings are checked (is what was asked visible?), negatives too with
  ``check_negatives``. Operating point: per finding, the threshold maximising Youden's J (sensitivity +
  specificity - 1) on labelled real images when they are given (findings with fewer than
  ``min_calibration_positives`` positives or negatives there are not checked), else ``default_threshold``.
- ``memorisation``: score = cosine similarity of the image's features to its nearest training image (the
  evaluation's extractors and nearest-neighbour code); rejected when at or above the ``percentile`` of the
  training images' similarities to their own nearest other training image (99.9: closer than all but 0.1 % of
  real pairs).

A filter's life: ``load()`` (networks; missing weights fail before generation), ``calibrate(calibration)`` on rank
0 (its thresholds as a JSON record, stored in ``thresholds.json``), ``use_calibration(record)`` on every rank, then
``score(images, rows)`` per batch. A new filter is a subclass decorated with ``register_filter``, a ``filter#<name>``
component and its name in ``filters``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from scripts.common.errors import CxrLdmError
from scripts.data.images import iterate_images
from scripts.evaluation.adherence import auroc
from scripts.evaluation.labels import read_chexpert_labels

#: filter name -> its class
FILTERS: dict[str, type[ImageFilter]] = {}


class FilterError(CxrLdmError, ValueError):
    """A filter that is not registered or defined, or cannot run on the data given to it."""


def register_filter(cls):
    """Class decorator: make ``cls`` (an ``ImageFilter`` with a ``name``) usable in ``filters``."""
    FILTERS[cls.name] = cls
    return cls


def check_filter_names(names) -> list[str]:
    """``names`` as a list of registered filter names; an unknown one is an error naming the registered ones."""
    names = [names] if isinstance(names, str) else list(names or [])
    unknown = [n for n in names if n not in FILTERS]
    if unknown or len(set(names)) != len(names):
        raise FilterError(f"--filters {names}: each must be one of {list(FILTERS)}, at most once.")
    return names


@dataclass
class Calibration:
    """Real images for calibrating thresholds: datalist items (``image`` path, ``labels`` dict when a label table
    is given) loaded by ``transform`` as (1, H, W) in [0, 1]."""

    items: list[dict]
    transform: Callable
    batch_size: int = 16
    description: str = ""

    @property
    def labelled(self) -> list[dict]:
        return [item for item in self.items if item.get("labels")]

    def batches(self, items: Sequence[dict] | None = None):
        """(items, (B, 1, H, W) plain tensors) of ``items`` (default: all)."""
        for batch, images in iterate_images(self.items if items is None else items, self.transform, self.batch_size):
            yield batch, images.as_tensor() if hasattr(images, "as_tensor") else images


def calibration_set(
    datalist_file: str, dataset_dir: str, section: str, labels_file: str | None, limit: int, transform, batch_size=16
) -> Calibration | None:
    """The first ``limit`` real images of ``section`` (with their labels when ``labels_file`` is given), or None
    when there is no prepared datalist or ``limit`` is 0: filters then keep their documented defaults."""
    from scripts.data.images import datalist_items

    if not limit or not datalist_file or not os.path.isfile(os.fspath(datalist_file)):
        return None
    items = datalist_items(datalist_file, section, dataset_dir, int(limit))
    labels = read_chexpert_labels(labels_file) if labels_file else {}
    items = [{**item, "labels": labels.get(str(item.get("study_id", "")).lstrip("s"))} for item in items]
    description = f"{len(items)} real images of section '{section}' of {os.path.basename(os.fspath(datalist_file))}"
    return Calibration(items, transform, int(batch_size), description)


class ImageFilter:
    """Base class (module docstring). ``extra_columns`` maps each extra score column (named ``<name>_<key>``) to
    its type: ``"float"``, ``"int"`` or ``"string"``."""

    name = ""
    extra_columns: dict[str, str] = {}

    def load(self) -> None:
        """Load networks (before generation, so missing weights stop the run early)."""

    def identity(self) -> dict:
        """The settings that decide this filter's verdicts (with its calibration record)."""
        return {}

    def calibrate(self, calibration: Calibration | None) -> dict:
        """Thresholds and what they were derived from, as JSON (rank 0 only)."""
        return {}

    def use_calibration(self, record: Mapping) -> None:
        """Adopt the thresholds of ``record`` (every rank)."""

    def score(self, images: torch.Tensor, rows: Sequence[dict]) -> list[dict]:
        """Per image of (B, 1, H, W) ``images`` in [0, 1] and its plan ``rows``: ``{"score", "pass", **extra}``."""
        raise NotImplementedError

    def describe(self, record: Mapping) -> str:
        """One line for the data-set card: what the score is, the threshold and where it came from."""
        return json.dumps(dict(record))


@register_filter
class SanityFilter(ImageFilter):
    """Blank, saturated or non-finite images (module docstring)."""

    name = "sanity"
    extra_columns = {"saturated_fraction": "float", "non_finite_pixels": "int"}

    def __init__(self, min_std: float = 0.02, max_saturated_fraction: float = 0.5) -> None:
        self.min_std, self.max_saturated_fraction = float(min_std), float(max_saturated_fraction)

    def identity(self) -> dict:
        return {"min_std": self.min_std, "max_saturated_fraction": self.max_saturated_fraction}

    def measure(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(std, saturated fraction) per image."""
        x = images.float().flatten(1)
        return x.std(dim=1), ((x <= 0.5 / 255) | (x >= 1 - 0.5 / 255)).float().mean(dim=1)

    def calibrate(self, calibration: Calibration | None) -> dict:
        if calibration is None:
            return {"real_pass_rate": None}
        passed = total = 0
        for _, images in calibration.batches():
            std, saturated = self.measure(images)
            passed += int(((std >= self.min_std) & (saturated <= self.max_saturated_fraction)).sum())
            total += len(images)
        return {"real_pass_rate": passed / max(total, 1), "num_real": total}

    def describe(self, record: Mapping) -> str:
        real = record.get("real_pass_rate")
        tested = f"; {real:.1%} of {record['num_real']} real images pass" if real is not None else ""
        return (
            f"score = pixel standard deviation; kept when >= {self.min_std:g}, at most "
            f"{self.max_saturated_fraction:.0%} of pixels at 0 or 1, and no non-finite pixel{tested}"
        )

    def score(self, images: torch.Tensor, rows: Sequence[dict]) -> list[dict]:
        std, saturated = self.measure(images)
        results = []
        for row, deviation, fraction in zip(rows, std.tolist(), saturated.tolist()):
            non_finite = int(row.get("non_finite_pixels", 0))
            verdict = non_finite == 0 and deviation >= self.min_std and fraction <= self.max_saturated_fraction
            results.append(
                {"score": deviation, "pass": verdict, "saturated_fraction": fraction, "non_finite_pixels": non_finite}
            )
        return results


def youden_threshold(probabilities: np.ndarray, targets: np.ndarray) -> float:
    """The threshold t maximising sensitivity + specificity - 1 of ``probabilities >= t`` (the lowest such t)."""
    best, best_j = 0.5, -np.inf
    positives, negatives = max(int(targets.sum()), 1), max(int((1 - targets).sum()), 1)
    for threshold in np.unique(probabilities):
        predicted = probabilities >= threshold
        j = (predicted & (targets == 1)).sum() / positives - (predicted & (targets == 0)).sum() / negatives
        if j > best_j:
            best, best_j = float(threshold), j
    return best


@register_filter
class LabelAgreementFilter(ImageFilter):
    """The classifier's findings against the prompt's labels (module docstring)."""

    name = "label_agreement"
    extra_columns = {"disagreements": "string", "probabilities": "string"}

    def __init__(
        self,
        classifier,
        max_disagreements: int = 0,
        default_threshold: float = 0.5,
        check_negatives: bool = False,
        blank_as_negative: bool = True,
        min_calibration_positives: int = 10,
        labels: Sequence[str] | None = None,
    ) -> None:
        self.classifier, self.max_disagreements = classifier, int(max_disagreements)
        self.default_threshold, self.check_negatives = float(default_threshold), bool(check_negatives)
        self.blank_as_negative, self.min_positives = bool(blank_as_negative), int(min_calibration_positives)
        self.only = None if labels is None else list(labels)
        self.thresholds: dict[str, float] = {}

    def load(self) -> None:
        self.classifier.load()

    @property
    def covered(self) -> list[str]:
        return [name for name in self.classifier.labels if self.only is None or name in self.only]

    def identity(self) -> dict:
        settings = {"classifier": self.classifier.identity(), "max_disagreements": self.max_disagreements}
        settings.update(check_negatives=self.check_negatives, blank_as_negative=self.blank_as_negative)
        return {**settings, "default_threshold": self.default_threshold, "labels": self.covered}

    def target(self, value) -> int | None:
        """1 (positive), 0 (negative) or None (not checked) of a label value 1, 0, -1 or NaN."""
        if value == 1.0:
            return 1
        if value == 0.0 or (self.blank_as_negative and value is not None and np.isnan(value)):
            return 0
        return None

    def calibrate(self, calibration: Calibration | None) -> dict:
        items = calibration.labelled if calibration is not None else []
        if not items:
            thresholds = {name: self.default_threshold for name in self.covered}
            return {"operating_point": f"default threshold {self.default_threshold:g}", "thresholds": thresholds}
        probabilities = torch.cat([self.classifier.probabilities(images) for _, images in calibration.batches(items)])
        record = {"operating_point": f"Youden's J on {calibration.description}", "thresholds": {}, "auroc_real": {}}
        for column, name in enumerate(self.classifier.labels):
            if name not in self.covered:
                continue
            targets = [self.target(item["labels"].get(name, np.nan)) for item in items]
            known = [i for i, t in enumerate(targets) if t is not None]
            y, p = np.array([targets[i] for i in known]), probabilities[known, column].double().numpy()
            if min(int(y.sum()), int((1 - y).sum())) >= self.min_positives:
                record["thresholds"][name] = youden_threshold(p, y)
                record["auroc_real"][name] = auroc(p[y == 1], p[y == 0])
        record["not_checked"] = [name for name in self.covered if name not in record["thresholds"]]
        return record

    def use_calibration(self, record: Mapping) -> None:
        self.thresholds = {name: float(value) for name, value in record["thresholds"].items()}

    def describe(self, record: Mapping) -> str:
        checked = "positive and negative" if self.check_negatives else "positive"
        thresholds = ", ".join(f"{name} {value:.3f}" for name, value in record["thresholds"].items()) or "none"
        skipped = f"; not checked (too few real positives or negatives): {', '.join(record['not_checked'])}"
        return (
            f"score = number of the prompt's {checked} findings the classifier ({self.classifier.identity()}) "
            f"disagrees with; kept when <= {self.max_disagreements}; operating point: {record['operating_point']}; "
            f"thresholds: {thresholds}" + (skipped if record.get("not_checked") else "")
        )

    def score(self, images: torch.Tensor, rows: Sequence[dict]) -> list[dict]:
        probabilities = self.classifier.probabilities(images)
        columns = {name: self.classifier.labels.index(name) for name in self.thresholds}
        results = []
        for row, scores in zip(rows, probabilities.tolist()):
            wrong = []
            for name, threshold in self.thresholds.items():
                target = self.target(row["labels"].get(name, np.nan))
                if target is not None and (target == 1 or self.check_negatives):
                    if int(scores[columns[name]] >= threshold) != target:
                        wrong.append(name)
            shown = {name: round(scores[column], 4) for name, column in columns.items()}
            results.append(
                {"score": float(len(wrong)), "pass": len(wrong) <= self.max_disagreements,
                 "disagreements": ", ".join(wrong), "probabilities": json.dumps(shown)}
            )  # fmt: skip
        return results


@register_filter
class MemorisationFilter(ImageFilter):
    """Nearest training image in a feature space (module docstring).

    Args:
        extractor: ``"raddino"``, ``"xrv"`` or ``"inception"`` (``scripts.evaluation.extractors``), its weights from
            ``xrv_weights`` / ``raddino_source`` / ``inception_weights`` (``"random"``: seeded random weights); or a
            ``FeatureExtractor`` object (e.g. ``scripts.datasets.classifiers.NetworkFeatures``).
        datalist_file, dataset_dir, section, num_training_images: the training images (the first
            ``num_training_images`` of ``section``), loaded by ``transform``.
        percentile: of the training images' nearest-other similarities, the rejection threshold.
        autocast_dtype: the features' precision (``configs/dataset.json`` passes the sampler's: bfloat16 where the
            machine computes it fast), for the training and the generated images alike.
        cache_dir: where their features are cached (``scripts.evaluation.extractors.set_features``).
    """

    name = "memorisation"
    extra_columns = {"nearest_training": "string"}

    def __init__(
        self,
        extractor: str = "raddino",
        datalist_file: str = "",
        dataset_dir: str = "",
        section: str = "training",
        num_training_images: int = 20000,
        percentile: float = 99.9,
        transform: Callable | None = None,
        xrv_weights: str | None = None,
        raddino_source: str = "microsoft/rad-dino",
        inception_weights: str | None = None,
        cache_dir: str | None = None,
        batch_size: int = 16,
        device: str | torch.device = "cpu",
        autocast_dtype: str = "float32",
    ) -> None:
        self.autocast_dtype = str(autocast_dtype)
        self.extractor = None if isinstance(extractor, str) else extractor
        self.extractor_name = str(extractor) if isinstance(extractor, str) else extractor.name
        self.percentile = float(percentile)
        self.sources = {"xrv_weights": xrv_weights, "raddino_source": raddino_source}
        self.sources["inception_weights"] = inception_weights
        self.datalist = (datalist_file, dataset_dir, section, int(num_training_images))
        self.transform, self.cache_dir, self.batch_size, self.device = transform, cache_dir, int(batch_size), device
        self.training_items, self.features, self.threshold = [], None, None

    def load(self) -> None:
        from scripts.datasets.classifiers import seeded
        from scripts.evaluation import xrv
        from scripts.evaluation.extractors import load_extractors

        if not self.training_items:
            self.training_items = check_training_images(*self.datalist)
        if self.extractor is not None:
            if hasattr(self.extractor, "load"):
                self.extractor.load()
            return

        def build():
            model = None
            if self.extractor_name == "xrv":
                model = xrv.load_densenet(self.sources["xrv_weights"], device=self.device)
            raddino, inception = self.sources["raddino_source"], self.sources["inception_weights"]
            return load_extractors([self.extractor_name], model, raddino, inception, self.device)[self.extractor_name]

        self.extractor = seeded(build)

    def extract(self, images: torch.Tensor) -> torch.Tensor:
        """(B, D) float32 features of ``images``, under autocast in ``autocast_dtype`` unless it is float32."""
        if self.autocast_dtype == "float32":
            return self.extractor(images)
        device_type = torch.device(self.device).type
        with torch.autocast(device_type, dtype=getattr(torch, self.autocast_dtype)):
            return self.extractor(images).float()

    def identity(self) -> dict:
        extractor = self.extractor.identity() if self.extractor is not None else self.extractor_name
        return {"extractor": extractor, "sources": self.sources, "percentile": self.percentile,
                "autocast_dtype": self.autocast_dtype,
                "training": [os.fspath(item["image"]) for item in self.training_items]}  # fmt: skip

    def training_features(self) -> np.ndarray:
        from scripts.evaluation.extractors import set_features

        if self.features is None:
            self.features = set_features(
                PrecisionExtractor(self), self.training_items, "training", self.transform, self.cache_dir,
                self.batch_size,
            )  # fmt: skip
        return self.features

    def calibrate(self, calibration: Calibration | None) -> dict:
        from scripts.evaluation.memorisation import nearest_other_similarities

        similarities = nearest_other_similarities(self.training_features())
        return {
            "threshold": float(np.percentile(similarities, self.percentile)),
            "percentile": self.percentile,
            "extractor": f"{self.extractor_name} ({self.extractor.weights_source})",
            "num_training": len(self.training_items),
            "training_similarity_median": float(np.median(similarities)),
            "training_similarity_max": float(similarities.max()),
        }

    def use_calibration(self, record: Mapping) -> None:
        self.threshold = float(record["threshold"])
        self.training_features()

    def describe(self, record: Mapping) -> str:
        return (
            f"score = cosine similarity to the nearest of {record['num_training']} training images "
            f"({record['extractor']} features); rejected when >= {record['threshold']:.4f}, the "
            f"{record['percentile']:g}th percentile of the training images' similarities to their nearest other "
            f"training image (median {record['training_similarity_median']:.4f}, max "
            f"{record['training_similarity_max']:.4f})"
        )

    def score(self, images: torch.Tensor, rows: Sequence[dict]) -> list[dict]:
        from scripts.evaluation.memorisation import nearest_neighbours

        indices, similarities = nearest_neighbours(self.extract(images).numpy(), self.training_features())
        root = os.fspath(self.datalist[1])
        return [
            {"score": float(similarity), "pass": bool(similarity < self.threshold),
             "nearest_training": os.path.relpath(os.fspath(self.training_items[index]["image"]), root)}
            for index, similarity in zip(indices.tolist(), similarities.tolist())
        ]  # fmt: skip


class PrecisionExtractor:
    """The memorisation filter's extractor as ``set_features`` sees it: its precision is part of its identity, so
    cached float32 and bfloat16 features are never mixed."""

    def __init__(self, image_filter: MemorisationFilter) -> None:
        self.image_filter, inner = image_filter, image_filter.extractor
        self.name, self.random_weights = inner.name, inner.random_weights

    def identity(self) -> str:
        return f"{self.image_filter.extractor.identity()}|{self.image_filter.autocast_dtype}"

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.image_filter.extract(images)


def check_training_images(datalist_file: str, dataset_dir: str, section: str, limit: int) -> list[dict]:
    """The memorisation filter's training items, all present on disk; else one line naming the fix."""
    from scripts.data.images import datalist_items

    fix = "set --dataset_dir / --datalist_file to the prepared training data, or leave 'memorisation' out of --filters"
    if not datalist_file or not os.path.isfile(os.fspath(datalist_file)):
        raise FilterError(f"Memorisation filter: training datalist '{datalist_file}' not found: {fix}.")
    if not os.path.isdir(os.fspath(dataset_dir)):
        raise FilterError(f"Memorisation filter: training-image folder '{dataset_dir}' not found: {fix}.")
    try:
        items = datalist_items(datalist_file, section, dataset_dir, int(limit) if limit else None)
    except ValueError as error:
        raise FilterError(f"Memorisation filter: {error} ({fix}).") from None
    missing = [os.fspath(item["image"]) for item in items if not os.path.isfile(os.fspath(item["image"]))]
    if missing:
        raise FilterError(
            f"Memorisation filter: {len(missing)} of {len(items)} training images are missing (e.g. '{missing[0]}'): "
            f"{fix}."
        )
    return items


def load_filters(definitions: Mapping[str, ImageFilter], names: Sequence[str]) -> list[ImageFilter]:
    """The filters named in ``names`` (``filter#<name>`` components), loaded, in that order."""
    selected = []
    for name in check_filter_names(names):
        if name not in definitions or definitions[name] is None:
            raise FilterError(f"Filter {name!r} is in --filters but has no definition filter#{name} in the config.")
        definitions[name].load()
        selected.append(definitions[name])
    return selected
