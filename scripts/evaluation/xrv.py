"""The torchxrayvision DenseNet-121 (``densenet121-res224-all``): loading, input protocols, features, scores.

The same network serves two evaluation purposes: its 1024-d pooled features are the embedding of the
FID (see ``scripts.evaluation.fid``), and its 18 pathology outputs score prompt adherence
(``scripts.evaluation.adherence``).

Weights never come from torchxrayvision's own downloader (it fetches from GitHub at construction time):
the network is built with ``DenseNet(weights=None)`` and filled from a local file that
``python -m scripts.distribution.download`` fetches like the bundle's other large files. ``weights_path=None`` keeps
random weights, which only makes sense for tests: results are then flagged as not meaningful.

Two input protocols (``PROTOCOLS``) turn images with intensities in [0, 1] into network input:

- ``"xrv"`` (default, what the network was trained on): one channel, centre crop to a square, resize
  (area-averaging) to 224 × 224, intensities scaled to [-1024, 1024]; features are the network's own
  ``features2`` (ReLU, global average pool).
- ``"reference"``: what the published model's FID script did, kept only to reproduce its
  published FID: images at their loaded size (512 px), *no* scaling to [-1024, 1024], real images left
  in [0, 1] but generated images in [0, 255], and features pooled from ``features`` without the ReLU.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from scripts.common.errors import CxrLdmError
from scripts.common.hashing import file_digest

logger = logging.getLogger(__name__)

#: torchxrayvision's name of the weights used by the seed paper (trained on 7 public CXR data sets).
XRV_WEIGHTS_NAME = "densenet121-res224-all"
#: SHA-256 of the official release file (28,382,008 bytes), as recorded by several independent users.
XRV_WEIGHTS_SHA256 = "56524913dd16a906422e8d8b66a7a5c46be1d82eb7ac012d8103776f1aa68899"
XRV_DOWNLOAD_HELP = "run `python -m scripts.distribution.download` to fetch it (or set --xrv_weights to a local copy)"

XRV_INPUT_SIZE = 224
XRV_MAX_VALUE = 1024.0
FEATURE_DIM = 1024

REAL = "real"
GENERATED = "generated"
ROLES = (REAL, GENERATED)


class XrvWeightsError(CxrLdmError, RuntimeError):
    """The torchxrayvision weights file is missing or is not the expected one."""


@dataclass(frozen=True)
class XrvProtocol:
    """How images in [0, 1] become torchxrayvision input.

    Attributes:
        name: key in ``PROTOCOLS``.
        size: side of the square network input (centre crop then resize), or ``None`` to keep the loaded size.
        xrv_scaling: map [0, 1] to [-1024, 1024] (torchxrayvision's convention); if False, multiply by
            ``generated_scale`` for generated images and leave real ones unchanged.
        generated_scale: intensity factor of generated images when ``xrv_scaling`` is False.
        relu_before_pool: pool the final feature maps after a ReLU (torchxrayvision's ``features2``).
    """

    name: str
    size: int | None
    xrv_scaling: bool
    generated_scale: float
    relu_before_pool: bool


PROTOCOLS = {
    "xrv": XrvProtocol("xrv", XRV_INPUT_SIZE, True, 1.0, True),
    "reference": XrvProtocol("reference", None, False, 255.0, False),
}


def get_protocol(name: str) -> XrvProtocol:
    if isinstance(name, XrvProtocol):
        return name
    if name not in PROTOCOLS:
        raise ValueError(f"Unknown torchxrayvision input protocol '{name}': use one of {sorted(PROTOCOLS)}.")
    return PROTOCOLS[name]


def centre_square(images: torch.Tensor) -> torch.Tensor:
    """Centre crop (B, C, H, W) to (B, C, S, S) with S = min(H, W), like ``xrv.datasets.XRayCenterCrop``."""
    height, width = images.shape[-2:]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return images[..., top : top + side, left : left + side]


def to_network_input(images: torch.Tensor, protocol: str | XrvProtocol = "xrv", role: str = REAL) -> torch.Tensor:
    """Apply an input protocol.

    Args:
        images: (B, 1, H, W) or (B, 3, H, W) (averaged to grey) with intensities in [0, 1].
        protocol: a name in ``PROTOCOLS`` or an ``XrvProtocol``.
        role: ``"real"`` or ``"generated"``; only the ``"reference"`` protocol treats them differently.

    Returns:
        (B, 1, S, S) float32: S = 224 and values in [-1024, 1024] for ``"xrv"``.
    """
    protocol = get_protocol(protocol)
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got '{role}'.")
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"Expected images shaped (B, 1 or 3, H, W), got {tuple(images.shape)}.")
    images = images.float()
    if images.shape[1] == 3:
        images = images.mean(dim=1, keepdim=True)
    if protocol.size is not None:
        images = centre_square(images)
        if images.shape[-1] != protocol.size:
            # area averaging when shrinking, like torchxrayvision's skimage resizer (anti-aliased)
            mode = "area" if images.shape[-1] > protocol.size else "bilinear"
            kwargs = {} if mode == "area" else {"align_corners": False}
            images = F.interpolate(images, size=(protocol.size, protocol.size), mode=mode, **kwargs)
    if protocol.xrv_scaling:
        return (2.0 * images.clamp(0.0, 1.0) - 1.0) * XRV_MAX_VALUE
    return images * (protocol.generated_scale if role == GENERATED else 1.0)


def _read_densenet_state(path: str, sha256: str | None) -> dict:
    """State dict from either a plain state-dict file or torchxrayvision's release file.

    The release file is a whole pickled module; unpickling runs code, so it is only done for a file whose
    SHA-256 matches ``sha256`` (the official file); anything else must be a plain state dict.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as safe_error:  # the release file needs full unpickling
        if sha256 is None or file_digest(path) != sha256:
            raise XrvWeightsError(
                f"'{path}' is neither a plain state dict nor the official torchxrayvision file "
                f"(SHA-256 {sha256}); delete it and {XRV_DOWNLOAD_HELP}. ({type(safe_error).__name__})"
            ) from safe_error
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SourceChangeWarning of the 2019 pickle
            module = torch.load(path, map_location="cpu", weights_only=False)
        state = module.state_dict()
    if isinstance(state, torch.nn.Module):
        state = state.state_dict()
    if not isinstance(state, dict):
        raise XrvWeightsError(f"'{path}' holds a {type(state).__name__}, not DenseNet weights; {XRV_DOWNLOAD_HELP}.")
    return state


def load_densenet(
    weights_path: str | None,
    weights_name: str = XRV_WEIGHTS_NAME,
    sha256: str | None = XRV_WEIGHTS_SHA256,
    device: str | torch.device = "cpu",
):
    """torchxrayvision DenseNet-121 in eval mode with weights from a local file.

    Args:
        weights_path: local weights file (the release ``.pt`` or a plain state dict); ``None`` or ``"random"``
            keeps random weights (tests only; ``model.random_weights`` is then True).
        weights_name: torchxrayvision weights name whose output labels and operating points apply.
        sha256: hash of the official release file, required before unpickling a non-state-dict file.
        device: where the network goes.

    Returns:
        ``torchxrayvision.models.DenseNet`` with ``pathologies`` (18 labels, ``""`` for unused outputs),
        ``random_weights`` and ``weights_source`` attributes.

    Raises:
        XrvWeightsError: the file is missing or not loadable, naming the file and the download command.
    """
    import torchxrayvision as xrv

    if weights_name not in xrv.models.model_urls:
        raise ValueError(f"Unknown torchxrayvision weights '{weights_name}'; e.g. '{XRV_WEIGHTS_NAME}'.")
    info = xrv.models.model_urls[weights_name]
    model = xrv.models.DenseNet(weights=None, num_classes=len(info["labels"]))
    model.pathologies = list(info["labels"])
    model.targets = model.pathologies
    if weights_path is None or weights_path == "random":
        logger.warning("torchxrayvision DenseNet has RANDOM weights: FID and adherence numbers are not meaningful.")
        model.random_weights, model.weights_source = True, "random weights (not meaningful)"
    else:
        weights_path = os.fspath(weights_path)
        if not os.path.isfile(weights_path):
            raise XrvWeightsError(
                f"torchxrayvision weights '{weights_path}' ({weights_name}) not found: {XRV_DOWNLOAD_HELP}."
            )
        state = _read_densenet_state(weights_path, sha256)
        state = {k: v for k, v in state.items() if k != "op_threshs"}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise XrvWeightsError(
                f"'{weights_path}' does not fit DenseNet-121 ({len(missing)} missing, {len(unexpected)} unexpected "
                "keys, "
                f"e.g. {(missing or unexpected)[:3]}); {XRV_DOWNLOAD_HELP}."
            )
        model.random_weights, model.weights_source = False, f"{weights_name} ({os.path.basename(weights_path)})"
    model.op_threshs = None  # scores are plain sigmoid probabilities (see pathology_probabilities)
    return model.to(device).eval()


def pooled_features(model, network_input: torch.Tensor, relu_before_pool: bool = True) -> torch.Tensor:
    """(B, 1024) global-average-pooled DenseNet features of protocol output ``network_input``."""
    maps = model.features(network_input)
    if relu_before_pool:
        maps = F.relu(maps)
    return F.adaptive_avg_pool2d(maps, 1).flatten(1)


@torch.no_grad()
def image_features(model, images: torch.Tensor, protocol: str | XrvProtocol = "xrv", role: str = REAL) -> torch.Tensor:
    """(B, 1024) float32 CPU features of (B, 1, H, W) images in [0, 1] under ``protocol``."""
    protocol = get_protocol(protocol)
    device = next(model.parameters()).device
    x = to_network_input(images.to(device), protocol, role)
    return pooled_features(model, x, protocol.relu_before_pool).float().cpu()


@torch.no_grad()
def pathology_probabilities(model, images: torch.Tensor) -> torch.Tensor:
    """(B, 18) sigmoid probabilities of the model's ``pathologies`` for (B, 1, H, W) images in [0, 1].

    Always uses the ``"xrv"`` protocol (the classifier is only valid on its training input). Plain sigmoid,
    not torchxrayvision's operating-point rescaling, so numbers are comparable across labels' thresholds
    only through AUROC; mean probabilities compare one label across prompts.
    """
    device = next(model.parameters()).device
    x = to_network_input(images.to(device), "xrv", REAL)
    logits = model.classifier(pooled_features(model, x, relu_before_pool=True))
    return torch.sigmoid(logits).float().cpu()
