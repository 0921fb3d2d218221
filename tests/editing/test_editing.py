"""Editing real radiographs: strength, masks, batch independence, the CSV mode, preparation and bad input."""

from __future__ import annotations

import csv
import os
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers.bundle import (
    CONFIGS,
    INFERENCE_CONFIGS,
    TINY_OVERLAYS,
    bundle_run_command,
    cli_env,
    load_parser,
    run_inference,
    stage_parser,
    tiny_run_settings,
)
from helpers.editing import EDIT_CONFIG, run_edit, write_image, write_mask
from scripts.common.errors import root_cause
from scripts.editing.inputs import load_edit_image, load_edit_inputs

SIZE = 64  # the tiny overlay's image_size


def _read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path)).astype(np.int32)


def _manifest(output_dir: Path) -> list[dict]:
    with open(output_dir / "manifest.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _prepared_pixels(image_path: Path) -> np.ndarray:
    """The prepared input as the 8-bit values an edit writes for unchanged pixels."""
    image, _ = load_edit_image(str(image_path), SIZE)
    return (image[0].numpy() * 255.0).round().astype(np.int32)


@pytest.fixture
def inputs(tmp_path) -> dict:
    """A non-square radiograph (80×96) with an edit mask at its lower right and a keep mask on its left third."""
    return {
        "image": write_image(tmp_path / "chest.png"),
        "edit_mask": write_mask(tmp_path / "edit.png", (40, 50, 72, 82)),
        "keep_mask": write_mask(tmp_path / "keep.png", (0, 0, 28, 96)),
    }


def test_preparation_is_training_preparation(tmp_path):
    """An input image is prepared exactly as a training image: scripts.data.prepare's resize, then the training
    configs' loading."""
    from scripts.data.prepare import resize_image

    for name, size in (("tall.png", (80, 96)), ("wide.png", (120, 70)), ("square.png", (64, 64))):
        source = write_image(tmp_path / name, seed=3, size=size)
        prepared = tmp_path / f"prepared_{name}"
        assert resize_image(str(source), str(prepared), SIZE, 95) == (str(prepared), "")
        parser = stage_parser("autoencoder")
        from monai.transforms import Compose

        training = Compose(parser.get_parsed_content("load_image_transforms"))({"image": str(prepared)})["image"]
        edited, file_size = load_edit_image(str(source), SIZE)
        assert file_size == size
        assert tuple(edited.shape) == (1, SIZE, SIZE)
        assert torch.equal(edited, torch.as_tensor(training).float()), name


def test_masks_follow_the_image_geometry(inputs, tmp_path):
    """A mask drawn on the file, the same mask at half resolution (with a warning), and one drawn on the
    prepared 64×64 frame give the same region; another aspect ratio is refused naming both sizes."""
    job = {"source_image": str(inputs["image"]), "edit_mask": str(inputs["edit_mask"])}
    full = load_edit_inputs(job, SIZE)["edit_region"]
    assert 0 < full.mean() < 0.5

    half = write_mask(tmp_path / "half.png", (20, 25, 36, 41), size=(40, 48))
    with pytest.warns(UserWarning, match="resized with nearest neighbour"):
        halved = load_edit_inputs({**job, "edit_mask": str(half)}, SIZE)["edit_region"]
    assert torch.equal(halved, full)

    frame = Image.fromarray((full[0].numpy() * 255).astype(np.uint8), mode="L")
    frame.save(tmp_path / "frame.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        in_frame = load_edit_inputs({**job, "edit_mask": str(tmp_path / "frame.png")}, SIZE)["edit_region"]
    assert torch.equal(in_frame, full)

    wrong = write_mask(tmp_path / "wrong.png", (0, 0, 10, 10), size=(96, 80))
    with pytest.raises(ValueError, match=r"is 96x80 but image .* is 80x96"):
        load_edit_inputs({**job, "edit_mask": str(wrong)}, SIZE)


def test_strength_zero_returns_the_input_unchanged(tiny_model_dir, tmp_path, inputs):
    out = tmp_path / "out"
    [edited] = run_edit(tiny_model_dir, out, image=str(inputs["image"]), strength=0.0)
    assert np.array_equal(_read(edited), _prepared_pixels(inputs["image"]))
    [row] = _manifest(out)
    assert row["denoising_steps"] == "0"
    assert not _read(out / row["difference_file"]).any()


def test_strength_one_without_masks_is_text_to_image(tiny_model_dir, tmp_path, inputs):
    """At strength 1 the input enters only at the √ᾱ_T ≈ 0.0098 level of the first step: the edit must be
    the text-to-image sample of the same seed to within a mean absolute difference of 0.01 and a largest
    one of 0.1 (measured: 0.0016 and 0.030), against 0.24 between two seeds."""
    [generated] = run_inference(tiny_model_dir, tmp_path / "t2i", output_format="pt", seed=5)
    [other_seed] = run_inference(tiny_model_dir, tmp_path / "t2i_other", output_format="pt", seed=6)
    [edited] = run_edit(
        tiny_model_dir, tmp_path / "edit", image=str(inputs["image"]), strength=1.0, output_format="pt", seed=5
    )
    generated, other_seed, edited = (torch.load(p, weights_only=True) for p in (generated, other_seed, edited))
    difference = (edited - generated).abs()
    assert difference.mean() < 0.01 and difference.max() < 0.1, (difference.mean(), difference.max())
    assert (other_seed - generated).abs().mean() > 10 * difference.mean()


def test_keep_region_is_bit_identical_and_edit_region_changes(tiny_model_dir, tmp_path, inputs):
    out = tmp_path / "out"
    [edited] = run_edit(
        tiny_model_dir,
        out,
        image=str(inputs["image"]),
        strength=0.8,
        **{k: str(v) for k, v in inputs.items() if k != "image"},
    )
    job = {
        "source_image": str(inputs["image"]),
        "edit_mask": str(inputs["edit_mask"]),
        "keep_mask": str(inputs["keep_mask"]),
    }
    regions = load_edit_inputs(job, SIZE)
    keep, edit = regions["keep_region"][0].bool().numpy(), regions["edit_region"][0].bool().numpy()
    result, source = _read(edited), _prepared_pixels(inputs["image"])
    assert keep.any() and np.array_equal(result[keep], source[keep])
    assert np.abs(result[edit] - source[edit]).mean() > 10  # 8-bit levels
    [row] = _manifest(out)
    assert (row["source_image"], row["edit_mask"], row["keep_mask"]) == (
        job["source_image"],
        job["edit_mask"],
        job["keep_mask"],
    )
    assert (row["strength"], row["denoising_steps"], row["feather_pixels"]) == ("0.8", "2", "8")
    figure = Image.open(out / row["comparison_file"])
    assert figure.mode == "RGB" and figure.width >= 3 * 256
    assert np.array_equal(_read(out / row["difference_file"]), np.abs(result - source))


def test_latents_outside_the_edit_region_end_as_the_inputs(tiny_model_dir, inputs):
    """Inside the denoising loop the known latents are put back at each level; the loop ends on z0 itself."""
    from helpers.bundle import tiny_parser

    parser = tiny_parser(EDIT_CONFIG, **tiny_run_settings(tiny_model_dir, "unused", image=str(inputs["image"])))
    editor, network = parser.get_parsed_content("inferer"), parser.get_parsed_content("network")
    regions = load_edit_inputs({"source_image": str(inputs["image"]), "edit_mask": str(inputs["edit_mask"])}, SIZE)
    with torch.inference_mode():
        clean = editor.encode_images(regions["input_image"][None])
        region = editor.latent_region(regions["edit_region"][None], regions["keep_region"][None])
        assert region is not None and 0 < region.mean() < 1
        context, uncond = editor.sampler.contexts(["left pleural effusion"], [""], torch.device("cpu"))
        noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))
        latents = editor.edit_latents(network, clean, noise, context, uncond, [0], steps=3, region=region)
    outside = (region <= 0.5).expand_as(latents)
    assert torch.equal(latents[outside], clean[outside])
    assert (latents[~outside] - clean[~outside]).abs().mean() > 0.05


def _edits_csv(tmp_path: Path, inputs: dict) -> Path:
    second = write_image(tmp_path / "second.png", seed=1)
    path = tmp_path / "edits.csv"
    path.write_text(
        "image,prompt,edit_mask,keep_mask,seed,strength\n"
        "chest.png,left pleural effusion,edit.png,keep.png,,\n"
        "chest.png,no acute cardiopulmonary process,edit.png,keep.png,,\n"
        f"{second},large left pleural effusion,,,7,0.5\n"
        "second.png,cardiomegaly,,keep.png,,1.0\n"
    )
    return path


def test_same_seed_gives_the_same_edit_at_any_batch_size(tiny_model_dir, tmp_path, inputs):
    """Rows of different strengths and masks share batches; each edit depends on its own inputs only."""
    edits = _edits_csv(tmp_path, inputs)
    one = run_edit(tiny_model_dir, tmp_path / "b1", edits_file=str(edits), batch_size=1, output_format="pt")
    four = run_edit(tiny_model_dir, tmp_path / "b4", edits_file=str(edits), batch_size=4, output_format="pt")
    assert [p.name for p in one] == [p.name for p in four] and len(one) == 4
    for a, b in zip(one, four):
        assert torch.allclose(torch.load(a, weights_only=True), torch.load(b, weights_only=True), atol=5e-4), a.name


@pytest.mark.parametrize("min_images, compiled", [(8, True), (9, False)])
def test_auto_compile_counts_the_edits_of_the_run(min_images, compiled, tiny_model_dir, tmp_path, inputs, monkeypatch):
    import scripts.networks.precision as precision

    monkeypatch.setattr(precision, "bf16_native", lambda device: True)
    edits = _edits_csv(tmp_path, inputs)  # 4 rows
    settings = tiny_run_settings(tiny_model_dir, "unused", edits_file=str(edits), num_samples=2)
    from helpers.bundle import tiny_parser

    parser = tiny_parser(EDIT_CONFIG, **settings, autocast_dtype="auto", compile_min_images=min_images)
    assert parser.get_parsed_content("num_images") == 8
    assert parser.get_parsed_content("compiled") is compiled
    assert parser.get_parsed_content("manifest_settings")["compile"] is compiled


def test_edits_file_writes_every_edit_once_and_resumes(tiny_model_dir, tmp_path, inputs):
    edits = _edits_csv(tmp_path, inputs)
    out = tmp_path / "out"
    first = run_edit(tiny_model_dir, out, edits_file=str(edits), batch_size=2, strength=0.7)
    rows = _manifest(out)
    assert len(first) == 4 and sorted(r["file"] for r in rows) == [p.name for p in first]
    by_prompt = {r["prompt"]: r for r in rows}
    assert by_prompt["large left pleural effusion"]["seed"] == "7"
    assert by_prompt["large left pleural effusion"]["strength"] == "0.5"
    assert by_prompt["left pleural effusion"]["strength"] == "0.7"  # an empty cell takes --strength
    assert by_prompt["cardiomegaly"]["source_image"] == str(tmp_path / "second.png")  # relative to the CSV
    assert by_prompt["left pleural effusion"]["seed"] == by_prompt["no acute cardiopulmonary process"]["seed"]
    for row in rows:
        assert (out / row["difference_file"]).is_file() and (out / row["comparison_file"]).is_file()

    times = {p.name: p.stat().st_mtime_ns for p in first}
    assert run_edit(tiny_model_dir, out, edits_file=str(edits), batch_size=2, strength=0.7) == first
    assert {p.name: p.stat().st_mtime_ns for p in first} == times

    first[1].unlink()
    again = run_edit(tiny_model_dir, out, edits_file=str(edits), batch_size=2, strength=0.7)
    assert again == first
    changed = [p.name for p in again if p.stat().st_mtime_ns != times[p.name]]
    assert changed == [first[1].name]
    assert len(_manifest(out)) == 4
    assert not [p for p in out.rglob("*") if ".partial" in p.name]

    # Another mask content under the same path is another edit.
    write_mask(tmp_path / "edit.png", (10, 10, 30, 30))
    renamed = run_edit(tiny_model_dir, out, edits_file=str(edits), batch_size=2, strength=0.7)
    assert len(renamed) == 6


@pytest.mark.parametrize(
    "case, message",
    [
        ("unreadable", "is not a readable image"),
        ("missing", "does not exist"),
        ("mask-shape", "is 30x30 but image"),
        ("black-mask", "has no white pixel"),
        ("keep-all", "nothing can change"),
        ("strength", "--strength must be in [0, 1]"),
        ("strength-in-csv", "strength on line 2 of"),
        ("no-image", "Give exactly one of --image"),
        ("csv-columns", "lacks the column(s) ['prompt']"),
    ],
)
def test_bad_input_gives_one_line_and_writes_nothing(case, message, tiny_model_dir, tmp_path, inputs):
    overrides: dict = {"image": str(inputs["image"])}
    if case == "unreadable":
        (tmp_path / "broken.png").write_bytes(b"not a png at all")
        overrides["image"] = str(tmp_path / "broken.png")
    elif case == "missing":
        overrides["edit_mask"] = str(tmp_path / "nowhere.png")
    elif case == "mask-shape":
        overrides["edit_mask"] = str(write_mask(tmp_path / "small.png", (0, 0, 5, 5), size=(30, 30)))
    elif case == "black-mask":
        overrides["edit_mask"] = str(write_mask(tmp_path / "black.png", (0, 0, 0, 0)))
    elif case == "keep-all":
        overrides["keep_mask"] = str(write_mask(tmp_path / "all.png", (0, 0, 80, 96)))
    elif case == "strength":
        overrides["strength"] = 1.5
    elif case == "strength-in-csv":
        (tmp_path / "e.csv").write_text(f"image,prompt,strength\n{inputs['image']},effusion,2\n")
        overrides = {"edits_file": str(tmp_path / "e.csv")}
    elif case == "no-image":
        overrides = {}
    elif case == "csv-columns":
        (tmp_path / "e.csv").write_text(f"image\n{inputs['image']}\n")
        overrides = {"edits_file": str(tmp_path / "e.csv")}
    out = tmp_path / "out"
    with pytest.raises(Exception) as info:
        run_edit(tiny_model_dir, out, **overrides)
    text = str(root_cause(info.value))
    assert message in text and len(text.splitlines()) == 1, text
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()]


HOSTILE = ("bomb.png", "huge_header.png", "truncated.png", "truncated.jpg", "empty.png", "no_pixels.dcm",
           "truncated.dcm", "huge.dcm", "deflated.dcm")  # fmt: skip


@pytest.mark.parametrize(
    "name, role", [(name, "image") for name in HOSTILE] + [("bomb.png", "keep_mask"), ("no_pixels.dcm", "edit_mask")]
)
def test_hostile_files_give_one_line_naming_them_once_and_write_nothing(
    name, role, hostile_inputs, tiny_model_dir, tmp_path, inputs
):
    """Decompression bombs, huge declared sizes (refused from the header: the 12000x12000 PNG has no pixel data
    to decode), truncated and empty files, DICOM without pixels: the one-line message, with the file once."""
    path, message = hostile_inputs[name]
    overrides = {"image": str(inputs["image"]), role: str(path)}
    out = tmp_path / "out"
    with pytest.raises(Exception) as info:
        run_edit(tiny_model_dir, out, **overrides)
    text = str(root_cause(info.value))
    assert message in text and len(text.splitlines()) == 1, text
    what = {"image": "Input image", "keep_mask": "Keep mask", "edit_mask": "Edit mask"}[role]
    assert text.startswith(what) and text.count(name) == 1, text
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()]


def test_cli_edit_error_ends_with_the_one_line_message(tiny_model_dir, tmp_path, inputs):
    files = [*INFERENCE_CONFIGS, *TINY_OVERLAYS, EDIT_CONFIG]
    overrides = tiny_run_settings(tiny_model_dir, tmp_path / "out", image=str(inputs["image"]), strength=2)
    result = subprocess.run(
        bundle_run_command(files, overrides), cwd=tmp_path, env=cli_env(bundle_on_path=False),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode != 0
    last = result.stderr.rstrip().splitlines()[-1]
    assert last == (
        "SettingsError: --strength must be in [0, 1] (0 keeps the image, 1 re-generates it from noise), got 2."
    ), result.stderr[-2000:]
    assert not (tmp_path / "out").exists()


def test_dicom_and_16_bit_inputs_are_edited(tiny_model_dir, tmp_path):
    """The readers of training data read edit inputs too: a 16-bit PNG and a DICOM radiograph."""
    from helpers.data import write_dx

    values = (np.linspace(0, 1, 80 * 96).reshape(96, 80) * 40000).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")  # uint16: a 16-bit grey PNG
    dicom = write_dx(tmp_path / "chest.dcm", values, bits=16)
    for source in (tmp_path / "deep.png", dicom):
        image, size = load_edit_image(str(source), SIZE)
        assert size == (80, 96) and 0 <= image.min() < 0.1 and image.max() > 0.9
    out = tmp_path / "out"
    [edited] = run_edit(tiny_model_dir, out, image=str(dicom), strength=0.0, output_format="dcm")
    assert edited.suffix == ".dcm" and os.path.getsize(edited) > 0
    # the edited object is a conformant synthetic Secondary Capture, read back without force
    import pydicom

    from scripts.data.dicom import CHARACTER_SET, SECONDARY_CAPTURE_SOP_CLASS

    ds = pydicom.dcmread(edited, force=False)
    assert ds.SOPClassUID == SECONDARY_CAPTURE_SOP_CLASS and ds.ConversionType == "SYN"
    assert ds.SpecificCharacterSet == CHARACTER_SET and int(ds.InstanceNumber) == 1
    prepared, _ = load_edit_image(str(dicom), SIZE)  # strength 0: the prepared input itself
    np.testing.assert_allclose(ds.pixel_array / 65535.0, prepared[0].numpy(), atol=1 / 65535 + 1e-6)


@pytest.mark.parametrize("name", ["ddim", "ddpm", "pndm", "dpmpp_2m", "unipc_karras"])
def test_noise_levels_are_the_schedulers_own(name):
    """Latents handed to a scheduler mid-way are noised to the level it assumes at that step."""
    from scripts.networks.schedulers import build_scheduler, noise_scales, noise_to_step

    parser = load_parser(list(INFERENCE_CONFIGS))
    scheduler = build_scheduler(name, **parser.get_parsed_content("noise_schedule"))
    scheduler.set_timesteps(12)
    generator = torch.Generator().manual_seed(0)
    clean, noise = torch.randn(1, 3, 4, 4, generator=generator), torch.randn(1, 3, 4, 4, generator=generator)
    for index in range(len(scheduler.timesteps)):
        alpha, sigma = noise_scales(scheduler, index)
        assert abs(alpha**2 + sigma**2 - 1) < 1e-6
        if hasattr(scheduler, "solver"):  # the multistep solvers: their own sigma = σ/α at this step
            assert abs(sigma / alpha - float(scheduler.solver.sigmas[index])) < 1e-4 * (1 + sigma / alpha)
        else:
            t = scheduler.timesteps[index : index + 1]
            # two float32 formulas of α·x + σ·ε on values of order 1: equal to a few units of float32 rounding
            torch.testing.assert_close(
                noise_to_step(scheduler, clean, noise, index),
                scheduler.add_noise(clean, noise, t),
                rtol=1e-5,
                atol=1e-6,
            )
    assert noise_scales(scheduler, len(scheduler.timesteps)) == (1.0, 0.0)


def test_two_cpu_ranks_share_an_edits_file(tiny_model_dir, tmp_path, inputs):
    """Under torchrun each rank edits its share; one merged manifest with the editing columns; no leftovers; the
    edits are the one-process run's (names, and pixels to the grey level float rounding may move)."""
    edits = _edits_csv(tmp_path, inputs)
    out = tmp_path / "out"
    files = [*INFERENCE_CONFIGS, *TINY_OVERLAYS, EDIT_CONFIG, str(CONFIGS / "multi_gpu_inference.json")]
    overrides = tiny_run_settings(tiny_model_dir, out, edits_file=str(edits), batch_size=2)
    result = subprocess.run(
        bundle_run_command(files, overrides, torchrun_procs=2), cwd=tmp_path, env=cli_env(),
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    images = sorted(p.name for p in out.glob("*.png"))
    rows = _manifest(out)
    assert len(images) == 4 and sorted(r["file"] for r in rows) == images
    assert {r["difference_file"] for r in rows} == {f"difference/{name}" for name in images}
    assert not list(out.glob("manifest.rank*.csv")) and not [p for p in out.rglob("*") if ".partial" in p.name]
    alone = run_edit(tiny_model_dir, tmp_path / "one_process", edits_file=str(edits), batch_size=2)
    assert [p.name for p in alone] == images
    for path in alone:
        assert np.abs(_read(out / path.name) - _read(path)).max() <= 1, path.name
