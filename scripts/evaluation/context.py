"""What every metric of an evaluation reads: the generated and real sets, and their features computed once.

``EvaluationContext.features`` keeps each set's features per extractor identity for the whole run (and in
``<evaluation_dir>/feature_cache`` across runs), so metrics that look at the same set through the same network
share one computation: the FID's torchxrayvision features under the ``"xrv"`` protocol are those of the
``xrv`` extractor of the fidelity, per-pathology and memorisation metrics.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from scripts.data.images import iterate_images
from scripts.evaluation import extractors as extractors_lib
from scripts.evaluation.plan import REPORTS, UNCONDITIONAL, set_files

#: name of the real test set among the evaluated sets (the generated ones are named after their kind)
REAL_TEST = "real_test"


def load_images(items: Sequence[dict], transform: Callable | None = None, batch_size: int = 16) -> torch.Tensor:
    """(N, 1, H, W) images in [0, 1] of ``items``."""
    return torch.cat([images for _, images in iterate_images(items, transform, batch_size=batch_size)])


class EvaluationContext:
    """The sets of one evaluation run and the features computed from them.

    Args:
        evaluation_dir: where the evaluation writes its files (summary, report, CSV, figures, ``feature_cache/``).
        samples_dir: the generated images and their ``manifest.csv``.
        sets: the planned sample sets (``scripts.evaluation.plan.plan_sample_sets``).
        real_items: real test datalist items, loaded with ``real_transform`` as (1, H, W) in [0, 1].
        xrv_model: torchxrayvision DenseNet (FID and prompt adherence).
        extractors: name -> ``scripts.evaluation.extractors.FeatureExtractor`` (fidelity, per pathology,
            memorisation).

    Attributes:
        by_kind: kind -> its sample set.
        warnings: the summary's warnings, in the order the metrics raise them.
        figures: name -> PNG path of pictures metrics drew for the report.
    """

    def __init__(
        self,
        evaluation_dir: str,
        samples_dir: str,
        sets: Sequence[dict],
        real_items: Sequence[dict],
        real_transform: Callable,
        xrv_model,
        extractors: Mapping[str, extractors_lib.FeatureExtractor] | None = None,
        seed: int = 0,
        batch_size: int = 16,
        device: str | torch.device = "cpu",
    ) -> None:
        self.evaluation_dir, self.samples_dir = evaluation_dir, samples_dir
        self.sets, self.real_items, self.real_transform = sets, real_items, real_transform
        self.xrv_model, self.extractors = xrv_model, dict(extractors or {})
        self.seed, self.batch_size, self.device = seed, batch_size, device
        self.by_kind = {s["kind"]: s for s in sets}
        self.generated = {
            kind: set_files(self.by_kind[kind], samples_dir)
            for kind in (UNCONDITIONAL, REPORTS)
            if kind in self.by_kind
        }
        self.cache_dir = os.path.join(evaluation_dir, "feature_cache")
        self.warnings: list[str] = []
        self.figures: dict[str, str] = {}
        self._features: dict[tuple[str, str], np.ndarray] = {}
        self._random_extractors_noted = False

    @functools.cached_property
    def generated(self) -> dict[str, list[dict]]:
        """``"unconditional"`` / ``"reports"`` -> items of their generated images (read from the sampling manifest
        on first use: the context is built before generation)."""
        return {
            kind: set_files(self.by_kind[kind], self.samples_dir)
            for kind in (UNCONDITIONAL, REPORTS)
            if kind in self.by_kind
        }

    def warn(self, text: str, once: bool = False) -> None:
        """Add ``text`` to the summary's warnings (``once``: unless it is there already)."""
        if not (once and text in self.warnings):
            self.warnings.append(text)

    def features(
        self,
        extractor: extractors_lib.FeatureExtractor,
        set_name: str,
        items: Sequence[dict] = (),
        transform: Callable | None = None,
    ) -> np.ndarray:
        """(N, D) float32 features of one set, computed once per run and extractor identity.

        ``set_name`` ``REAL_TEST`` and the generated kinds name the context's own sets; any other set is given by
        its ``items`` and ``transform``.
        """
        if set_name == REAL_TEST:
            items, transform = self.real_items, self.real_transform
        elif set_name in self.generated:
            items, transform = self.generated[set_name], None
        key = (set_name, extractor.identity())
        if key not in self._features:
            self._features[key] = extractors_lib.set_features(
                extractor, items, set_name, transform, self.cache_dir, self.batch_size, True
            )
        return self._features[key]

    def extractor_features(self) -> dict[str, dict[str, np.ndarray]]:
        """extractor name -> set name (``REAL_TEST`` and each generated kind) -> (N, D) features."""
        return {
            name: {key: self.features(extractor, key) for key in (REAL_TEST, *self.generated)}
            for name, extractor in self.extractors.items()
        }

    def note_random_extractors(self) -> None:
        """Warn once per run about each feature extractor with random weights (the torchxrayvision network is
        warned about by the workflow itself)."""
        if self._random_extractors_noted:
            return
        self._random_extractors_noted = True
        for name, extractor in self.extractors.items():
            if extractor.random_weights and name != "xrv":
                self.warn(f"Feature extractor '{name}' has RANDOM weights: its numbers are not meaningful.")
