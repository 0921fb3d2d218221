"""The one place that knows about ``torchrun``: this process's rank and world size, joining and leaving the
process group, and wrapping a network for data-parallel training."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from scripts.common.errors import CxrLdmError


class DistributedError(CxrLdmError, RuntimeError):
    """A multi-process config was started without ``torchrun``."""


def rank_and_world() -> tuple[int, int]:
    """(rank, world size): of the process group once joined, else from ``torchrun``'s environment, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def is_main_process() -> bool:
    return rank_and_world()[0] == 0


def local_device() -> torch.device:
    """This rank's device: ``cuda:<LOCAL_RANK>`` when GPUs are visible, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def init_distributed() -> torch.device:
    """Join the ``torchrun`` process group (NCCL on GPUs, gloo on CPUs) and return this rank's device.

    Ignite's distributed helpers create a process sub-group the first time any of them is used (for
    example when a checkpoint saver asks for the rank), and creating a group is a collective call. Rank 0
    alone builds some savers and loggers, so that first use is made here, on every rank, to avoid a deadlock.
    """
    if "LOCAL_RANK" not in os.environ:
        raise DistributedError(
            "The multi-GPU configs must be launched with torchrun (LOCAL_RANK is not set): "
            "torchrun --nproc_per_node=<N> -m monai.bundle run ..."
        )
    device = local_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    import ignite.distributed as idist

    idist.get_rank()
    return device


def close_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def data_parallel(network: torch.nn.Module, device: torch.device, enabled: bool) -> torch.nn.Module:
    """``network`` wrapped in ``DistributedDataParallel`` when ``enabled`` (a ``torchrun`` launch), else itself."""
    if not enabled:
        return network
    device_ids = [device] if torch.device(device).type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(network, device_ids=device_ids)
