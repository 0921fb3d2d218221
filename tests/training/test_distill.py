"""Consistency distillation through the CLI: it trains, resumes, logs its distance to the teacher, and its student
samples with ``pcm`` (the default method's sampler) and ``lcm``.

The teacher is a tiny random UNet (this bundle's layout); the data, 24 synthetic subjects at 64 px.
"""

from __future__ import annotations

import csv
import json

import pytest
import torch

from helpers.bundle import distill_configs, run_bundle, run_config, run_inference
from helpers.data import make_prepared_synthetic
from helpers.networks import write_tiny_weights
from helpers.training import image_tags, scalar_series


@pytest.fixture(scope="module")
def distilled(tmp_path_factory):
    """One epoch of distillation, then the same command with ``--max_epochs 2`` (a resume)."""
    root = tmp_path_factory.mktemp("distill")
    teacher_dir = write_tiny_weights(root / "teacher")
    dataset_dir = make_prepared_synthetic(root / "data", num_subjects=24, image_size=64)
    overrides = {
        "dataset_dir": dataset_dir,
        "train_dir": root / "student",
        "model_dir": teacher_dir,
        "load_old": False,
        "text_encoder_source": teacher_dir / "text_encoder",
    }
    run_config(distill_configs(), {**overrides, "max_epochs": 1})
    first_epoch = torch.load(root / "student" / "checkpoint_epoch=1.pt", map_location="cpu", weights_only=True)
    run_config(distill_configs(), {**overrides, "max_epochs": 2})
    return {"root": root, "teacher": teacher_dir, "student": root / "student", "first_epoch": first_epoch}


def test_distillation_trains_a_student_and_resumes(distilled):
    student = distilled["student"]
    assert distilled["first_epoch"]["trainer"]["iteration"] == 6, "the first run: one epoch of 6 iterations"
    checkpoint = torch.load(student / "checkpoint_epoch=2.pt", map_location="cpu", weights_only=True)
    assert checkpoint["trainer"]["iteration"] == 12
    teacher = torch.load(distilled["teacher"] / "model.pt", map_location="cpu", weights_only=True)
    assert checkpoint["network"].keys() == teacher.keys(), "the student is the teacher's class and layout"
    moved = [k for k in teacher if not torch.equal(teacher[k], checkpoint["network"][k])]
    assert moved, "distillation changed the student's weights"
    name = moved[0]
    assert not torch.equal(checkpoint["network"][name], checkpoint["ema_network"][name]), "the target is an EMA"
    final = torch.load(student / "model_final.pt", map_location="cpu", weights_only=True)
    assert torch.equal(final[name], checkpoint["ema_network"][name]), "model_final.pt is the target network"
    # the second run resumed: iterations 7-12 follow the first run's 1-6 (a fresh start would log 1-12 again)
    series = scalar_series(student / "logs", "train_loss")
    assert [step for step, _ in series] == list(range(1, 13)) and all(value > 0 for _, value in series)
    assert len(scalar_series(student / "logs", "val_loss")) == 2
    assert "samples" in image_tags(student / "logs"), "samples of the student are logged every epoch"
    # the teacher distance: at the start of each run and once an epoch (the tiny overlay's interval, 6 iterations)
    distances = scalar_series(student / "logs", "teacher_distance")
    assert [step for step, _ in distances] == [0, 6, 6, 12] and all(value > 0 for _, value in distances)
    assert distances[1][1] == pytest.approx(distances[2][1], rel=1e-4), "the resumed run starts where the first ended"


@pytest.mark.parametrize("scheduler_name", ["pcm", "lcm"])
def test_student_samples_with_its_scheduler_and_the_manifest_names_it(distilled, tmp_path, scheduler_name):
    import pydicom

    from scripts.common.hashing import fingerprint

    student = distilled["student"] / "model.pt"
    images = run_inference(
        distilled["teacher"],
        tmp_path / "out",
        diffusion_path=str(student),
        scheduler_name=scheduler_name,
        guidance_scale=1,
        num_inference_steps=2,
        num_samples=2,
        output_format="dcm",
    )
    assert len(images) == 2
    with open(tmp_path / "out" / "manifest.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert {row["scheduler"] for row in rows} == {scheduler_name} and {row["guidance_scale"] for row in rows} == {"1"}
    assert {row["diffusion_weights"] for row in rows} == {fingerprint(str(student))}
    assert fingerprint(str(student)) != fingerprint(str(distilled["teacher"] / "model.pt"))

    comments = json.loads(pydicom.dcmread(images[0]).ImageComments.split(". ", 1)[1])
    assert comments["scheduler"] == scheduler_name and comments["diffusion_weights"] == fingerprint(str(student))


def test_two_ranks_distil_one_student(distilled, tmp_path):
    """torchrun with multi_gpu_train.json, as the other stages: each rank distils on its half of the data and
    DDP keeps the students identical; rank 0 writes the checkpoint."""
    from helpers.bundle import TEST_CONFIGS

    teacher_dir = distilled["teacher"]
    overrides = {
        "dataset_dir": distilled["root"] / "data" / "prepared",
        "train_dir": tmp_path,
        "model_dir": teacher_dir,
        "load_old": False,
        "text_encoder_source": teacher_dir / "text_encoder",
        "max_epochs": 1,
        "sample_interval": 0,
        "rank_weights_network": "@diffusion_model",
    }
    files = distill_configs(multi_gpu=True, extra=(str(TEST_CONFIGS / "tiny_train_rank_weights.json"),))
    run_bundle(files, overrides, torchrun_procs=2, master_port=29565)
    rank0 = torch.load(tmp_path / "rank0_weights.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1_weights.pt", weights_only=True)
    assert rank0.keys() == rank1.keys() and all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    teacher = torch.load(teacher_dir / "model.pt", map_location="cpu", weights_only=True)
    assert any(not torch.equal(teacher[k], rank0[k]) for k in teacher), "the students were trained"
    checkpoint = torch.load(tmp_path / "checkpoint_epoch=1.pt", map_location="cpu", weights_only=True)
    assert checkpoint["trainer"]["iteration"] == 3, "24 images / 2 ranks / batch 4 = 3 iterations an epoch"
    assert all(torch.equal(checkpoint["network"][k], rank0[k]) for k in rank0)
