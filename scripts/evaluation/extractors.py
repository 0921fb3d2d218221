"""Feature extractors of the evaluation: one interface over torchxrayvision, RadDINO and Inception.

Each extractor maps images (B, 1, H, W) in [0, 1] to float32 features (B, D) on the CPU through the
network's own documented preprocessing:

- ``xrv``: torchxrayvision DenseNet-121 ``densenet121-res224-all`` (``scripts.evaluation.xrv``): centre
  square crop, 224², [-1024, 1024]; the 1024-d pooled features.
- ``raddino``: RAD-DINO (``microsoft/rad-dino``, a DINOv2 ViT-B/14 trained on chest radiographs) through its
  own image processor (grey copied to RGB, shortest edge resized to 518 (bicubic), centre crop 518²,
  rescale 1/255, normalise with mean 0.5307 and std 0.2583); the 768-d CLS embedding (``pooler_output``),
  as in its model card and in CheXGenBench.
- ``inception``: torchvision's Inception-v3 (ImageNet weights ``inception_v3_google-0cc3c7bd.pth``): grey
  copied to RGB, the whole image resized to 299² (antialiased), ImageNet normalisation; the 2048-d pool
  features before the classifier. These are not the TF-Inception weights of the standard FID
  implementations, so Inception FIDs from here compare with each other, not with published ones.

Weights come from a local path or a hub id; ``"random"`` builds the documented architecture with random
weights (tests: features of the right shape, numbers not meaningful). A missing file or an unreachable hub
gives an ``ExtractorWeightsError`` saying how to get the weights.

``set_features`` extracts a whole image set, cached in ``.npz`` files keyed by the files (path, size,
modification time) and the extractor's identity, so an evaluation re-run reuses what did not change.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from scripts.common.errors import CxrLdmError
from scripts.common.files import atomic_path
from scripts.common.hashing import file_digest
from scripts.common.progress import progress as progress_bar
from scripts.data.images import iterate_images
from scripts.evaluation import xrv

logger = logging.getLogger(__name__)

EXTRACTORS = ("xrv", "raddino", "inception")
RADDINO_HUB_ID = "microsoft/rad-dino"
#: RAD-DINO's documented architecture (DINOv2 ViT-B/14 at 518²) and image processor
RADDINO_ARCHITECTURE = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "patch_size": 14,
    "image_size": 518,
}
RADDINO_PROCESSOR = {
    "do_resize": True,
    "size": {"shortest_edge": 518},
    "resample": 3,
    "do_center_crop": True,
    "crop_size": {"height": 518, "width": 518},
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": [0.5307, 0.5307, 0.5307],
    "image_std": [0.2583, 0.2583, 0.2583],
    "do_convert_rgb": True,
}
INCEPTION_FILE = "inception_v3_google-0cc3c7bd.pth"
INCEPTION_URL = f"https://download.pytorch.org/models/{INCEPTION_FILE}"
#: torchvision publishes the first 8 hex digits of the file's SHA-256 in its name (torch.hub's check)
INCEPTION_SHA256_PREFIX = "0cc3c7bd"
INCEPTION_SIZE = 299
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ExtractorWeightsError(CxrLdmError, RuntimeError):
    """A feature extractor's weights are missing, unreachable or not the expected ones."""


class FeatureExtractor:
    """Images (B, 1, H, W) in [0, 1] → features (B, ``feature_dim``) float32 on the CPU.

    Attributes:
        name: ``"xrv"``, ``"raddino"`` or ``"inception"``.
        feature_dim: D.
        weights_source: where the weights came from (``"random weights"`` for tests).
        random_weights: True when the numbers mean nothing.
    """

    name = ""
    feature_dim = 0

    def __init__(self, network: torch.nn.Module, weights_source: str, random_weights: bool) -> None:
        self.network = network.eval()
        self.weights_source = weights_source
        self.random_weights = bool(random_weights)

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    def identity(self) -> str:
        """What decides the features besides the images (part of the cache key)."""
        return f"{self.name}|{self.weights_source}"

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class XrvExtractor(FeatureExtractor):
    """torchxrayvision DenseNet features under an input protocol (``scripts.evaluation.xrv``)."""

    name = "xrv"
    feature_dim = xrv.FEATURE_DIM

    def __init__(self, model, protocol: str = "xrv", role: str = xrv.REAL) -> None:
        super().__init__(
            model, getattr(model, "weights_source", "unknown weights"), getattr(model, "random_weights", False)
        )
        self.protocol, self.role = xrv.get_protocol(protocol).name, role

    def identity(self) -> str:
        # the role changes the input only under protocols without torchxrayvision's scaling ("reference"), so
        # real and generated sets share cache entries under "xrv" (the FID and fidelity sections reuse them)
        role = self.role if not xrv.get_protocol(self.protocol).xrv_scaling else "any"
        return f"{self.name}|{self.protocol}|{role}|{self.weights_source}"

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return xrv.image_features(self.network, images, self.protocol, self.role)


class RadDinoExtractor(FeatureExtractor):
    """RAD-DINO CLS embeddings through its image processor (see the module docstring)."""

    name = "raddino"

    def __init__(self, model, processor, weights_source: str, random_weights: bool) -> None:
        super().__init__(model, weights_source, random_weights)
        self.processor = processor
        self.feature_dim = int(model.config.hidden_size)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        grey = (images.float().clamp(0, 1)[:, 0] * 255.0).round().to(torch.uint8).cpu().numpy()
        rgb = [np.repeat(picture[..., None], 3, axis=2) for picture in grey]
        pixels = self.processor(images=rgb, return_tensors="pt")["pixel_values"].to(self.device)
        return self.network(pixel_values=pixels).pooler_output.float().cpu()


class InceptionExtractor(FeatureExtractor):
    """torchvision Inception-v3 pool features (see the module docstring)."""

    name = "inception"
    feature_dim = 2048

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float().clamp(0, 1).to(self.device)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = F.interpolate(
            x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", antialias=True, align_corners=False
        )
        mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
        return self.network((x - mean) / std).float().cpu()


def load_raddino(source: str = RADDINO_HUB_ID, device: str | torch.device = "cpu") -> RadDinoExtractor:
    """RAD-DINO from a local folder (``config.json``, weights, ``preprocessor_config.json``) or a hub id;
    ``"random"``: the documented architecture and processor with random weights."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    source = os.fspath(source)
    if source == "random":
        logger.warning("RAD-DINO has RANDOM weights: its features are not meaningful.")
        model = Dinov2Model(Dinov2Config(**RADDINO_ARCHITECTURE))
        return RadDinoExtractor(model.to(device), BitImageProcessor(**RADDINO_PROCESSOR), "random weights", True)
    from transformers import AutoImageProcessor, AutoModel

    if source.startswith(("/", ".", "~")) and not os.path.isdir(os.path.expanduser(source)):
        raise ExtractorWeightsError(f"RAD-DINO folder '{source}' does not exist: check --raddino_source.")
    try:
        model = AutoModel.from_pretrained(source)
    except (OSError, ValueError) as error:
        raise ExtractorWeightsError(
            f"RAD-DINO could not be loaded from '{source}' ({str(error).splitlines()[0][:160]}): online, the hub id "
            f"'{RADDINO_HUB_ID}' is fetched once and cached; offline, copy it to a folder (huggingface-cli download "
            f"{RADDINO_HUB_ID} --local-dir models/rad-dino) and set --raddino_source models/rad-dino."
        ) from None
    if not hasattr(model.config, "hidden_size") or model.config.model_type != "dinov2":
        raise ExtractorWeightsError(f"'{source}' holds a {model.config.model_type} model, not RAD-DINO (dinov2).")
    try:
        processor = AutoImageProcessor.from_pretrained(source)
    except (OSError, ValueError):
        logger.warning("No image processor in '%s': using RAD-DINO's documented preprocessing.", source)
        processor = BitImageProcessor(**RADDINO_PROCESSOR)
    return RadDinoExtractor(model.to(device), processor, source, False)


def load_inception(
    weights_path: str | None, sha256_prefix: str | None = INCEPTION_SHA256_PREFIX, device: str | torch.device = "cpu"
) -> InceptionExtractor:
    """torchvision Inception-v3 with ImageNet weights from a local file (``INCEPTION_FILE``); ``"random"``:
    random weights. The file's SHA-256 must start with ``sha256_prefix`` (None: not checked)."""
    from torchvision.models import inception_v3

    # transform_input: the Google weights expect their own normalisation, which the network derives from
    # ImageNet-normalised input (torchvision sets it whenever it loads these weights)
    random_weights = weights_path is None or os.fspath(weights_path) == "random"
    # random: torchvision's own initialisation (PyTorch's default makes the eval-mode features vanish)
    network = inception_v3(weights=None, aux_logits=True, init_weights=random_weights, transform_input=True)
    if random_weights:
        logger.warning("Inception-v3 has RANDOM weights: its features are not meaningful.")
        source = "random weights"
    else:
        weights_path = os.fspath(weights_path)
        if not os.path.isfile(weights_path):
            raise ExtractorWeightsError(
                f"Inception-v3 weights '{weights_path}' not found: run `python -m scripts.distribution.download "
                f"models/{INCEPTION_FILE}` (or fetch {INCEPTION_URL}) and set --inception_weights to the file."
            )
        if sha256_prefix and not file_digest(weights_path).startswith(sha256_prefix):
            raise ExtractorWeightsError(
                f"'{weights_path}' is not torchvision's Inception-v3 file (its SHA-256 does not start with "
                f"{sha256_prefix}): delete it and download {INCEPTION_URL} again."
            )
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        missing, unexpected = network.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ExtractorWeightsError(
                f"'{weights_path}' does not fit Inception-v3 ({len(missing)} missing, {len(unexpected)} unexpected "
                "keys): download the torchvision file again."
            )
        source = os.path.basename(weights_path)
    network.fc = torch.nn.Identity()
    network.AuxLogits = None
    network.aux_logits = False
    return InceptionExtractor(network.to(device), source, random_weights)


def load_extractors(
    names: Sequence[str],
    xrv_model=None,
    raddino_source: str = RADDINO_HUB_ID,
    inception_weights: str | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, FeatureExtractor]:
    """The extractors named in ``names`` (a subset of ``EXTRACTORS``), in that order."""
    names = [str(n).lower() for n in ([names] if isinstance(names, str) else names)]
    unknown = [n for n in names if n not in EXTRACTORS]
    if unknown:
        raise ValueError(f"Unknown feature extractor(s) {unknown}: choose from {list(EXTRACTORS)}.")
    extractors: dict[str, FeatureExtractor] = {}
    for name in dict.fromkeys(names):
        if name == "xrv":
            if xrv_model is None:
                raise ValueError("The 'xrv' extractor needs the torchxrayvision model (xrv_model).")
            extractors[name] = XrvExtractor(xrv_model)
        elif name == "raddino":
            extractors[name] = load_raddino(raddino_source, device)
        else:
            extractors[name] = load_inception(inception_weights, device=device)
    return extractors


def cache_key(items: Sequence[dict], identity: str) -> str:
    """Hash of what decides a set's features: its files (path, size, mtime) and the extractor's identity."""
    digest = hashlib.sha256(json.dumps(identity).encode())
    for item in items:
        path = os.fspath(item["image"])
        stat = os.stat(path)
        digest.update(f"\n{os.path.abspath(path)}\t{stat.st_size}\t{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def set_features(
    extractor: FeatureExtractor,
    items: Sequence[dict],
    set_name: str,
    transform: Callable[[dict], dict] | None = None,
    cache_dir: str | None = None,
    batch_size: int = 16,
    progress: bool = False,
) -> np.ndarray:
    """(N, D) float32 features of a set of ``items`` (dicts with an ``"image"`` path), cached in ``cache_dir``.

    ``transform`` loads one item (default: the file as (1, H, W) in [0, 1]). Features of random-weight
    extractors are never cached (they differ between runs).
    """
    cache_path = None
    if cache_dir and not extractor.random_weights:
        safe_name = "".join(c if c.isalnum() or c in "-_." else "_" for c in set_name)
        cache_path = os.path.join(
            cache_dir, f"{safe_name}-{extractor.name}-{cache_key(items, extractor.identity())}.npz"
        )
        if os.path.isfile(cache_path):
            with np.load(cache_path) as cached:
                logger.info("%s features of '%s' read from %s", extractor.name, set_name, cache_path)
                return cached["features"]
    features = []
    batches = iterate_images(items, transform, batch_size=batch_size)
    total = -(-len(items) // batch_size)
    for _, images in progress_bar(batches, total=total, description=f"{extractor.name} {set_name}", enabled=progress):
        features.append(extractor(images).numpy())
    features = np.concatenate(features).astype(np.float32)
    if cache_path:
        with atomic_path(cache_path) as temporary:
            np.savez(temporary, features=features, files=np.array([os.fspath(i["image"]) for i in items]))
    return features
