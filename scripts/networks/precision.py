"""Which floating-point precision sampling runs in: chosen by the hardware unless the user says otherwise.

bfloat16 autocast pays where the hardware computes in bf16 natively: CUDA GPUs that support it, and CPUs
with AMX bf16 tile units (there a guided full-size UNet step is ~4x faster than in float32). On other
CPUs bf16 is emulated and slower than float32, so ``"auto"`` keeps float32 there.
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)

#: Accepted spellings of ``autocast_dtype`` -> the precision's name.
PRECISIONS = {
    "auto": "auto",
    "none": "float32",
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
}
_announced: set[tuple[str, str]] = set()


def bf16_native(device: str | torch.device) -> bool:
    """Whether ``device`` computes bfloat16 natively (CUDA bf16 support, or AMX bf16 on a CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
        return bool(amx is not None and amx())
    return False


def resolve_precision(autocast_dtype: str | None, device: str | torch.device) -> str:
    """``"float32"``, ``"bfloat16"`` or ``"float16"`` for the setting ``autocast_dtype`` on ``device``.

    ``"auto"`` is bfloat16 where ``bf16_native(device)``, else float32; None means float32; an explicit
    value is kept. The choice of ``"auto"`` is logged once per device.
    """
    key = "none" if autocast_dtype is None else str(autocast_dtype).lower()
    if key not in PRECISIONS:
        raise ValueError(f"autocast_dtype must be one of {sorted(PRECISIONS)} or null, got {autocast_dtype!r}.")
    precision = PRECISIONS[key]
    if precision != "auto":
        return precision
    precision = "bfloat16" if bf16_native(device) else "float32"
    if (precision, str(device)) not in _announced:
        _announced.add((precision, str(device)))
        why = "native bf16 on this device" if precision == "bfloat16" else "no native bf16 on this device"
        logger.info(f"autocast_dtype auto -> {precision} ({why}); set --autocast_dtype to choose.")
    return precision


def autocast_kwargs(amp_dtype: str) -> dict:
    """``torch.autocast`` keyword arguments of a training run's mixed precision (``amp_dtype``: "float16",
    the reference recipe's, or "bfloat16", which needs no loss scaling and cannot overflow)."""
    precision = PRECISIONS.get(str(amp_dtype).lower())
    if precision not in ("float16", "bfloat16"):
        raise ValueError(f"amp_dtype must be float16 or bfloat16, got {amp_dtype!r}.")
    return {"dtype": getattr(torch, precision)}
