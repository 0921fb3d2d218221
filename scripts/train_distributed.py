"""Process-group set-up for ``torchrun`` launches of the training configs (``configs/multi_gpu_train_*.json``)."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_distributed() -> torch.device:
    """Join the ``torchrun`` process group (NCCL on GPUs, gloo on CPU) and return this rank's device.

    Ignite's distributed helpers create a process sub-group the first time any of them is used (for
    example when a checkpoint saver asks for the rank), and creating a group is a collective call. Only
    rank 0 builds savers and loggers, so that first use is made here, on every rank, to avoid a deadlock.
    """
    if "LOCAL_RANK" not in os.environ:
        raise RuntimeError("The multi-GPU configs must be launched with torchrun (LOCAL_RANK is not set).")
    local_rank = int(os.environ["LOCAL_RANK"])
    device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    import ignite.distributed as idist

    idist.get_rank()
    return device
