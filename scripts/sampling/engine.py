"""The engine that runs sampling jobs: a DataLoader of jobs and a MONAI ``SupervisedEvaluator`` whose inferer is the
sampler (or the editor) and whose handler is the writer.

``configs/inference.json`` builds its ``dataloader`` and ``evaluator`` with these functions, and the app builds one
per request with the same ones (``run_jobs``), so a page request and a command run the same engine.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from scripts.sampling.jobs import collate_jobs, prepare_job_batch


def job_loader(dataset, batch_size: int):
    """DataLoader of jobs in their order (``batch_size`` jobs a batch, collated by ``collate_jobs``), in this
    process: jobs are a few strings and, when editing, one image each."""
    from monai.data import DataLoader

    return DataLoader(dataset, batch_size=int(batch_size), shuffle=False, num_workers=0, collate_fn=collate_jobs)


def job_evaluator(device, val_data_loader, network: torch.nn.Module, inferer, val_handlers: Sequence):
    """``SupervisedEvaluator`` that runs ``inferer`` (a sampler or editor) on each batch of jobs of
    ``val_data_loader``, with the diffusion UNet ``network``, and hands its images to ``val_handlers`` (the
    writer). Batches are not decollated: the writer reads the job lists and the images (B, 1, H, W)."""
    from monai.engines import SupervisedEvaluator

    return SupervisedEvaluator(
        device=device,
        val_data_loader=val_data_loader,
        network=network,
        inferer=inferer,
        prepare_batch=prepare_job_batch,
        val_handlers=list(val_handlers),
        decollate=False,
    )


def run_jobs(
    jobs: Sequence[dict],
    network: torch.nn.Module,
    inferer,
    writer,
    batch_size: int,
    device,
    transform: Callable | None = None,
) -> None:
    """Run ``jobs`` as ``configs/inference.json``'s ``evaluator`` does: a ``Dataset`` of them (prepared by
    ``transform``, e.g. editing's input loader), ``job_loader`` and ``job_evaluator``."""
    from monai.data import Dataset

    loader = job_loader(Dataset(list(jobs), transform=transform), batch_size)
    job_evaluator(device, loader, network, inferer, [writer]).run()
