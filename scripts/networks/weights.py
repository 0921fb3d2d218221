"""Loading network weights safely: ``weights_only`` unpickling, ``map_location``, clear errors.

Two layouts exist for this model's weights: the released GenerativeModels-format state dicts
(``load_old=True``; converted with MONAI's ``load_old_state_dict``) and current MONAI state dicts, which
is what this bundle's training writes (``load_old=False``).
"""

from __future__ import annotations

import contextlib
import io
import os

import torch

from scripts.common.errors import CxrLdmError

DOWNLOAD_HINT = "run `python -m scripts.distribution.download` (or place the file there by hand, see README 'Weights')"


class CheckpointError(CxrLdmError, RuntimeError):
    """A weights file is missing, unreadable, or does not fit the network."""


def read_state_dict(path: str, key: str | None = None, map_location: str | torch.device = "cpu") -> dict:
    """The state dict stored in ``path`` (a plain state dict, or entry ``key`` of a training checkpoint).

    Unpickling is restricted to tensors and plain containers (``weights_only=True``), so a checkpoint
    cannot run code.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"Weights file '{path}' not found: {DOWNLOAD_HINT}.")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling failure means the same to the user
        raise CheckpointError(
            f"Weights file '{path}' could not be read ({type(error).__name__}): it is corrupted, truncated or not "
            f"a PyTorch checkpoint; delete it and {DOWNLOAD_HINT}."
        ) from None
    if key is not None:
        if not isinstance(state, dict) or key not in state:
            found = sorted(state)[:8] if isinstance(state, dict) else type(state).__name__
            raise CheckpointError(f"Weights file '{path}' has no entry '{key}' (it has {found}).")
        state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(
            f"Weights file '{path}' does not hold a state dict; for a training checkpoint, name the entry "
            "holding the network weights (e.g. key='network')."
        )
    return state


def _mismatch_summary(network: torch.nn.Module, state: dict) -> str:
    expected = network.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    if wrong_shape:
        k = wrong_shape[0]
        parts.append(
            f"{len(wrong_shape)} of another shape (e.g. {k}: {tuple(state[k].shape)} vs {tuple(expected[k].shape)})"
        )
    return ", ".join(parts) or "no key differences"


def _load_old_layout(network: torch.nn.Module, old_state: dict) -> list[str]:
    """Load a GenerativeModels-layout ``old_state`` with MONAI's ``load_old_state_dict``; return the
    names of the network's tensors the file did not provide.

    MONAI's converter starts from the network's own ``state_dict()`` and overwrites the entries it finds
    in the file, so a tensor missing from the file silently keeps its random initial value. The tensors
    it finally loads are captured here: one that still shares storage with the network's own tensor was
    not in the file.
    """
    own = {key: value.untyped_storage().data_ptr() for key, value in network.state_dict().items()}
    loaded: dict = {}
    load_state_dict = network.load_state_dict

    def capture(state_dict, *args, **kwargs):
        loaded.update(state_dict)
        return load_state_dict(state_dict, *args, **kwargs)

    network.load_state_dict = capture  # the instance attribute shadows the method for this call only
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # MONAI prints "All keys match" on the fast path
            network.load_old_state_dict(old_state)
    finally:
        del network.load_state_dict
    return [
        key
        for key, pointer in own.items()
        if key not in loaded or (loaded[key].numel() > 0 and loaded[key].untyped_storage().data_ptr() == pointer)
    ]


def load_weights(
    network: torch.nn.Module,
    path: str,
    load_old: bool = False,
    device: str | torch.device = "cpu",
    key: str | None = None,
    strict: bool = True,
) -> torch.nn.Module:
    """Load the weights in ``path`` into ``network``; return it on ``device`` in ``eval()`` mode.

    Args:
        network: the instantiated network (``autoencoder_def`` / ``network_def`` of the config).
        path: weights file.
        load_old: the file is in the GenerativeModels layout of the released checkpoints.
        device: where the network goes.
        key: entry of a training checkpoint dict that holds the weights (None: the file is the state dict).
        strict: every key must match.

    Raises:
        CheckpointError: naming the file when it is missing, unreadable, or of another architecture.
    """
    state = read_state_dict(path, key=key, map_location="cpu")
    name = type(network).__name__
    try:
        if load_old:
            if not hasattr(network, "load_old_state_dict"):
                raise CheckpointError(f"load_old=True but {name} has no GenerativeModels layout to convert from.")
            leftover = dict(state)  # load_old_state_dict pops the keys it converts
            unfilled = _load_old_layout(network, leftover)
            if unfilled:
                raise CheckpointError(
                    f"Weights file '{path}' lacks {len(unfilled)} tensors that {name} needs (e.g. {unfilled[0]}): "
                    "it is truncated or of another architecture; download it again or check the network settings."
                )
            if strict and leftover:
                raise CheckpointError(
                    f"Weights file '{path}' does not fit {name}: {len(leftover)} keys were not used "
                    f"(e.g. {next(iter(leftover))}); check the network settings or set load_old False."
                )
        else:
            network.load_state_dict(state, strict=strict)
    except CheckpointError:
        raise
    except (RuntimeError, KeyError) as error:
        hint = (
            "set --load_old False if this file was written by this bundle's training"
            if load_old
            else "set --load_old True if this is a released GenerativeModels checkpoint"
        )
        detail = _mismatch_summary(network, state) if not load_old else f"{type(error).__name__}: {str(error)[:200]}"
        raise CheckpointError(
            f"Weights file '{path}' does not fit {name} as configured ({detail}); {hint}, or check the network "
            "settings."
        ) from None
    return network.to(device).eval()


def fill_zero_initialised(module: torch.nn.Module, seed: int = 0, std: float = 0.05) -> torch.nn.Module:
    """Give every all-zero weight tensor of ``module`` random values (N(0, std^2)), in place.

    MONAI's ``DiffusionModelUNet`` zero-initialises its output convolution (and the last layer of each
    residual and attention block), so a freshly built UNet predicts exactly 0 and every speed switch would
    trivially "match" fp32. Filling them makes the random network's output depend on its input.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            if parameter.dim() > 1 and not parameter.any():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
    return module
