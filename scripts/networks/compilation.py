"""Whether and how the sampling UNet is compiled with ``torch.compile``.

On a CPU, inductor with *freezing* (weights folded into the graph as constants and pre-packed for oneDNN)
makes a guided full-size UNet step faster: with AMX bf16 ~35 % in bf16 (0.60 s -> 0.39 s on 2 cores) and
~6 % in float32; on an AVX-512 CPU without AMX ~20 % in float32 (4.28 s -> 3.44 s). Plain ``torch.compile``
gains ~4 %. Compiling costs about half a minute to one and a half minutes (less when inductor's on-disk
cache has the kernels), first call only, so it pays only for runs of several images: measured break-evens
are 9-19 images (AMX, bf16), ~5 (AVX-512, float32) and ~25 (AMX, float32). ``"auto"`` therefore compiles
when the run makes at least ``min_images`` images on a CPU sampling in float32 or bfloat16 (float16 is
slower than float32 on CPUs and is left eager; docs/performance.md has the measurements).
On a CUDA GPU compiling takes longer than on the CPU per saved second: measured on an H200 (``CUDA_COMPILE``), a
37 s compile halves a batch-32 image's 0.076 s, so it pays back after ``CUDA_BREAK_EVEN_IMAGES`` (~1,000)
images; ``"auto"`` compiles GPU runs of at least that many images, in any precision.

Freezing bakes the weights into the compiled graph, so a compiled UNet is for sampling with fixed
weights; the training loop's preview sampler never compiles.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from collections.abc import Mapping

import torch

logger = logging.getLogger(__name__)

#: Accepted spellings of ``compile`` -> True, False or "auto".
COMPILE_SETTINGS = {"auto": "auto", "true": True, "false": False, "yes": True, "no": False, "1": True, "0": False}
#: Precisions ``"auto"`` compiles on a CPU (float16 runs slower than float32 on CPUs and was never measured compiled).
COMPILED_CPU_PRECISIONS = ("float32", "bfloat16")
#: The GPU measurement ``"auto"`` decides from (docs/performance.md, GPU: full-size UNet, 20 steps, bf16, batch 32,
#: inductor's default mode; seconds).
CUDA_COMPILE = {"device": "NVIDIA H200", "compile_s": 37.4, "eager_s_per_image": 0.0761, "compiled_s_per_image": 0.0399}
#: Images after which compiling has paid for itself on a GPU: compile time / time saved per image.
CUDA_BREAK_EVEN_IMAGES = math.ceil(
    CUDA_COMPILE["compile_s"] / (CUDA_COMPILE["eager_s_per_image"] - CUDA_COMPILE["compiled_s_per_image"])
)
_announced: set[tuple] = set()


def parse_compile(compile) -> bool | str:
    """``True``, ``False`` or ``"auto"`` for the setting ``compile`` (bools, or their usual spellings)."""
    if isinstance(compile, bool):
        return compile
    key = str(compile).strip().lower()
    if key not in COMPILE_SETTINGS:
        raise ValueError(f"compile must be true, false or 'auto', got {compile!r}.")
    return COMPILE_SETTINGS[key]


def cpu_compiler_available() -> bool:
    """Whether inductor finds the C++ compiler it builds CPU kernels with (``CXX``, else ``g++``)."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        return bool(get_cpp_compiler())
    except ImportError:  # the private helper moved: look for the compiler inductor defaults to
        return shutil.which(os.environ.get("CXX") or "g++") is not None
    except Exception:  # inductor's own search found none
        return False


def min_images_on(device: torch.device, min_images: int | Mapping[str, int]) -> int:
    """The smallest run ``"auto"`` compiles on ``device``: ``min_images`` itself, or its entry for the device's type
    (``{"cpu": 32, "cuda": 1034}``; a type without an entry is never compiled by ``"auto"``)."""
    if isinstance(min_images, Mapping):
        value = min_images.get(device.type)
        return int(value) if value is not None else 2**63 - 1
    return int(min_images)


def resolve_compile(
    compile, device: str | torch.device, precision: str, num_images: int, min_images: int | Mapping[str, int]
) -> bool:
    """Whether to compile the UNet for a run of ``num_images`` images (all ranks together).

    ``"auto"`` is True when the run makes at least ``min_images_on(device, min_images)`` images: on a CPU only when
    sampling in "float32" or "bfloat16" with a C++ compiler there for inductor; on a CUDA GPU in any precision.
    True and False are kept (True on a CPU without a compiler is refused here, before anything runs). The result
    changes an image only by float rounding (it is in the manifest, not in the image's name); it depends only on
    the command (the run's size, not how much of it is already done). The choice of ``"auto"`` is logged once.
    """
    setting = parse_compile(compile)
    device = torch.device(device)
    on_cpu = device.type == "cpu"
    if setting is True and on_cpu and not cpu_compiler_available():
        raise ValueError(
            "compile true needs a C++ compiler on a CPU (inductor builds its kernels with it) and none was found: "
            "install g++ (or set CXX), or set --compile false."
        )
    if setting != "auto":
        return setting
    smallest = min_images_on(device, min_images)
    enough_images = int(num_images) >= smallest
    compiled_precision = precision in COMPILED_CPU_PRECISIONS or device.type == "cuda"
    worth_it = device.type in ("cpu", "cuda") and compiled_precision and enough_images
    chosen = worth_it and (not on_cpu or cpu_compiler_available())  # the compiler is looked for only when used
    key = (chosen, str(device), precision, enough_images)
    if key not in _announced:
        _announced.add(key)
        logger.info(f"compile auto -> {chosen} ({_why(chosen, device, precision, num_images, smallest)}); "
                    "set --compile true/false to choose.")  # fmt: skip
    return chosen


def _why(chosen: bool, device: torch.device, precision: str, num_images: int, smallest: int) -> str:
    """The reason ``resolve_compile`` gives for its choice of ``"auto"``."""
    where = "a CPU" if device.type == "cpu" else f"a {device.type} device"
    if device.type not in ("cpu", "cuda"):
        return f"no measured compile mode for {device.type}"
    if device.type == "cpu" and precision not in COMPILED_CPU_PRECISIONS:
        return f"{precision} on a CPU is not compiled (no measurement found it pays)"
    if int(num_images) < smallest:
        return f"{num_images} images < compile_min_images {smallest} on {where}: compiling would not pay"
    if not chosen:
        return "no C++ compiler for inductor's CPU kernels (install g++ or set CXX)"
    cost = "about a minute" if device.type == "cpu" else f"~{CUDA_COMPILE['compile_s']:.0f} s on an H200"
    return (
        f"{num_images} images >= compile_min_images {smallest}, {precision} on {where}; the first step compiles, {cost}"
    )


class FrozenCompiledUNet(torch.nn.Module):
    """``torch.compile`` of a network whose calls run with inductor's ``freezing`` on.

    Freezing folds the weights into the graph as constants and pre-packs them for oneDNN. It has to be on
    while dynamo and AOT autograd prepare the graph, at the first call: passing it as
    ``torch.compile(options={"freezing": True})`` reaches inductor alone and was measured slower (0.53 s
    against 0.39 s a guided full-size bf16 step, 2 AMX cores; 0.60 s eager).
    """

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.compiled = torch.compile(network, dynamic=False)

    def forward(self, *args, **kwargs):
        import torch._inductor.config as inductor_config

        with inductor_config.patch(freezing=True):
            return self.compiled(*args, **kwargs)


def compile_unet(network: torch.nn.Module, device: str | torch.device) -> torch.nn.Module:
    """``network`` compiled for sampling: inductor with frozen weights on a CPU, inductor's defaults elsewhere.

    Shapes are static (``dynamic=False``): a batch of another size compiles its own graph rather than
    a slower shape-generic one. A frozen network must be called under ``torch.inference_mode`` or
    ``no_grad``, and later changes to its weights are not seen.
    """
    if torch.device(device).type == "cpu":
        return FrozenCompiledUNet(network)
    return torch.compile(network, dynamic=False)
