"""Label classifiers: images → probabilities of CheXpert findings, for the label-agreement filter and the utility
workflow.

A label classifier has ``labels`` (the CheXpert findings it has an output for), ``load()`` (its weights; a missing
file is a one-line error, raised before generation), ``probabilities(images)`` ((B, 1, H, W) in [0, 1] → (B,
len(labels)) in [0, 1]) and ``identity()`` (what decides its outputs). Two kinds ship:

- ``XrvLabelClassifier``: the torchxrayvision DenseNet-121 of the evaluation (``scripts.evaluation.xrv``), 13 of the
  14 findings (it has no output for No Finding or Support Devices) under its own input protocol;
- ``NetworkLabelClassifier``: any network with one logit per finding, e.g. the MONAI DenseNet-121 that
  ``configs/dataset_utility.json`` trains (``<utility_dir>/real/classifier.pt``), fed ``classifier_input``.

The torchxrayvision network's random weights (``"random"``, for trials) are drawn from a fixed seed, so every process
of a run builds the same network.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from scripts.common.errors import CxrLdmError
from scripts.data.layout import CHEXPERT_LABELS
from scripts.evaluation import xrv

#: CheXpert finding -> torchxrayvision output name (the evaluation's adherence uses the same pairs)
XRV_LABELS = {
    "Atelectasis": "Atelectasis",
    "Cardiomegaly": "Cardiomegaly",
    "Consolidation": "Consolidation",
    "Edema": "Edema",
    "Enlarged Cardiomediastinum": "Enlarged Cardiomediastinum",
    "Fracture": "Fracture",
    "Lung Lesion": "Lung Lesion",
    "Lung Opacity": "Lung Opacity",
    "Pleural Effusion": "Effusion",
    "Pleural Other": "Pleural_Thickening",
    "Pneumonia": "Pneumonia",
    "Pneumothorax": "Pneumothorax",
}
RANDOM_SEED = 0


class ClassifierWeightsError(CxrLdmError, RuntimeError):
    """A label classifier's weights are missing or do not fit its network."""


def classifier_input(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """(B, 1, S, S) in [0, 1]: centre square crop, resized to ``image_size`` (area averaging when shrinking), as
    torchxrayvision prepares images but without its [-1024, 1024] scaling."""
    protocol = xrv.XrvProtocol("classifier", int(image_size), False, 1.0, True)
    return xrv.to_network_input(images, protocol, xrv.REAL)


def seeded(build, seed: int = RANDOM_SEED):
    """``build()`` with the global random generator seeded (and restored afterwards)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


class XrvLabelClassifier:
    """torchxrayvision DenseNet-121 (``densenet121-res224-all``) as a label classifier."""

    def __init__(self, weights_path: str | None, device: str | torch.device = "cpu") -> None:
        self.weights_path, self.device, self.model = weights_path, device, None

    def load(self) -> None:
        if self.model is None:
            self.model = seeded(lambda: xrv.load_densenet(self.weights_path, device=self.device))

    @property
    def labels(self) -> list[str]:
        self.load()
        outputs = set(self.model.pathologies)
        return [name for name in CHEXPERT_LABELS if XRV_LABELS.get(name) in outputs]

    def identity(self) -> str:
        return f"xrv|{self.weights_path}"

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        self.load()
        scores = xrv.pathology_probabilities(self.model, images)
        columns = [self.model.pathologies.index(XRV_LABELS[name]) for name in self.labels]
        return scores[:, columns]


class NetworkLabelClassifier:
    """A network with one logit per finding of ``labels`` (default: the 14 CheXpert findings), its weights from
    ``weights_path`` (a state dict; ``"random"`` keeps the network's own initialisation), fed ``classifier_input``."""

    def __init__(
        self,
        network: torch.nn.Module,
        weights_path: str | None,
        labels: Sequence[str] = CHEXPERT_LABELS,
        image_size: int = 224,
        device: str | torch.device = "cpu",
    ) -> None:
        self.network, self.weights_path = network, weights_path
        self.labels, self.image_size, self.device = list(labels), int(image_size), device
        self.loaded = False

    def load(self) -> None:
        if self.loaded:
            return
        path = os.fspath(self.weights_path) if self.weights_path else "random"
        if path != "random":  # "random": the network keeps the initialisation it was built with (trials only)
            if not os.path.isfile(path):
                raise ClassifierWeightsError(
                    f"Label classifier weights '{path}' not found: train one with configs/dataset_utility.json "
                    "(--arms \"['real']\" writes <utility_dir>/real/classifier.pt) or set --label_classifier_weights."
                )
            try:
                self.network.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            except RuntimeError as error:
                message = str(error).splitlines()[0][:160]
                raise ClassifierWeightsError(f"'{path}' does not fit the label classifier: {message}") from None
        self.network = self.network.to(self.device).eval()
        self.loaded = True

    def identity(self) -> str:
        return f"network|{type(self.network).__name__}|{self.weights_path}|{self.image_size}|{','.join(self.labels)}"

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        self.load()
        x = classifier_input(images.to(self.device), self.image_size)
        return torch.sigmoid(self.network(x).float()).cpu()


class NetworkFeatures:
    """The pooled last feature maps of a ``NetworkLabelClassifier``'s network (a MONAI DenseNet's ``features``), as
    a feature extractor for the memorisation filter: (B, 1, H, W) in [0, 1] -> (B, D) float32 on the CPU.

    For models without pretrained RAD-DINO or torchxrayvision weights at hand (e.g. one trained on the synthetic
    MIMIC-format data), a classifier trained on the same image domain gives features in which near-copies stand out.
    """

    name = "classifier"

    def __init__(self, classifier: NetworkLabelClassifier) -> None:
        self.classifier = classifier
        self.random_weights = not classifier.weights_path or os.fspath(classifier.weights_path) == "random"
        self.weights_source = f"{type(classifier.network).__name__} ({classifier.weights_path})"
        self.feature_dim = 0

    def load(self) -> None:
        self.classifier.load()

    def identity(self) -> str:
        return "features|" + self.classifier.identity()

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.load()
        x = classifier_input(images.to(self.classifier.device), self.classifier.image_size)
        maps = torch.nn.functional.relu(self.classifier.network.features(x))
        return torch.nn.functional.adaptive_avg_pool2d(maps, 1).flatten(1).float().cpu()
