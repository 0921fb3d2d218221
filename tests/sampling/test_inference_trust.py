"""Sampling never gives a silently wrong result: image identity, non-finite values, noise streams, widths,
file names, and errors whose last printed line is the bundle's own message."""

from __future__ import annotations

import csv
import io
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers.bundle import (
    INFERENCE_CONFIGS,
    TINY_OVERLAYS,
    bundle_run_command,
    cli_env,
    run_inference,
    tiny_parser,
    tiny_run_settings,
)
from helpers.networks import make_tiny_text_encoder, randomize_zero_layers
from scripts.common.errors import excepthook, root_cause


def _manifest(output_dir: Path) -> list[dict]:
    with open(output_dir / "manifest.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def model_copy(tiny_model_dir, tmp_path) -> Path:
    """A private copy of the tiny weights that a test may change."""
    copy = tmp_path / "models"
    shutil.copytree(tiny_model_dir, copy)
    return copy


def _other_unet_weights(path: Path, seed: int = 1) -> None:
    torch.manual_seed(seed)
    unet = randomize_zero_layers(tiny_parser().get_parsed_content("network_def"))
    torch.save(unet.state_dict(), path)


def test_resume_identity_covers_weights_encoder_and_settings(model_copy, tmp_path):
    """Re-running into the same folder regenerates whenever anything deciding the pixels changed,
    and only then (a setting spelled differently is the same setting)."""
    out = tmp_path / "out"
    first = run_inference(model_copy, out, guidance_scale=7.0)
    assert len(first) == 1

    # The same settings spelled differently: nothing new.
    assert run_inference(model_copy, out, guidance_scale=7, scale_factor=0.3) == first

    changes = []
    # Fine-tuned weights at the same path.
    _other_unet_weights(model_copy / "model.pt")
    changes.append(run_inference(model_copy, out))
    # Weights at another path, a new text encoder, another scale factor.
    _other_unet_weights(tmp_path / "finetuned.pt", seed=2)
    changes.append(run_inference(model_copy, out, diffusion_path=str(tmp_path / "finetuned.pt")))
    make_tiny_text_encoder(seed=3).save_pretrained(tmp_path / "encoder")
    changes.append(run_inference(model_copy, out, text_encoder_source=str(tmp_path / "encoder")))
    changes.append(run_inference(model_copy, out, scale_factor=0.25))
    counts = [len(images) for images in changes]
    assert counts == [2, 3, 4, 5], f"a changed model or setting reused an old image: {counts}"
    rows = _manifest(out)
    assert len(rows) == 5
    assert len({row["diffusion_weights"] for row in rows}) == 3
    assert len({row["text_encoder"] for row in rows}) == 2
    assert {row["scale_factor"] for row in rows} == {"0.3", "0.25"}

    # Pixels differ where the weights differ: the new images are not copies of the first.
    from helpers.bundle import read_png

    assert (read_png(changes[0][0]) != read_png(changes[0][1])).any()


@pytest.mark.parametrize("value", [float("nan"), float("inf"), "-inf"])
def test_non_finite_guidance_scale_is_refused(value, tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(Exception) as info:
        run_inference(tiny_model_dir, out, guidance_scale=value)
    assert "--guidance_scale must be a finite number" in str(root_cause(info.value))
    assert not out.exists()


def test_non_finite_latents_are_never_written(model_copy, tmp_path):
    """Weights that produce NaN: the run stops with a clear error and no image or manifest row exists."""
    state = torch.load(model_copy / "model.pt", weights_only=True)
    name = next(k for k in state if k.startswith("out") and k.endswith("weight"))
    state[name] = torch.full_like(state[name], float("nan"))
    torch.save(state, model_copy / "model.pt")
    out = tmp_path / "out"
    with pytest.raises(Exception) as info:
        run_inference(model_copy, out, num_samples=2, batch_size=2)
    cause = root_cause(info.value)
    assert type(cause).__name__ == "NonFiniteSampleError" and "NaN/inf latents for 2 image(s)" in str(cause)
    written = [p for p in out.iterdir() if p.suffix in (".png", ".tmp")] if out.exists() else []
    assert written == []
    assert not (out / "manifest.csv").exists() or _manifest(out) == []


def test_ddpm_step_noise_is_independent_of_other_images_initial_noise(tiny_model_dir):
    """Image s's per-step noise must not come from the generator that draws image s+1's initial noise."""
    from scripts.sampling.sampler import initial_latents

    parser = tiny_parser(
        model_dir=str(tiny_model_dir),
        load_old=False,
        text_encoder_source=str(tiny_model_dir / "text_encoder"),
        scheduler_name="ddpm",
    )
    sampler = parser.get_parsed_content("inferer")
    network = parser.get_parsed_content("network")
    step = sampler.scheduler.step
    step_draws = {}

    def recording_step(output, t, sample, generator=None):
        if generator is not None and generator.initial_seed() not in step_draws:
            probe = torch.Generator().manual_seed(generator.initial_seed())
            step_draws[generator.initial_seed()] = torch.randn(sample.shape[1:], generator=probe)
        return step(output, t, sample, generator=generator)

    sampler.scheduler.step = recording_step
    seeds = [10, 11, 12]
    images = sampler({"prompt": ["Cardiomegaly"] * 3, "negative_prompt": [""] * 3, "seed": seeds}, network)
    assert images.shape[0] == 3 and torch.isfinite(images).all()
    assert len(step_draws) == 3 and not set(step_draws) & set(seeds)
    first_noise = initial_latents(seeds, sampler.latent_shape)
    for draw in step_draws.values():
        for noise in first_noise:
            correlation = torch.corrcoef(torch.stack([draw.flatten(), noise.flatten()]))[0, 1]
            assert abs(float(correlation)) < 0.5


def test_text_encoder_width_mismatch_fails_when_built(tmp_path, tiny_model_dir):
    """A text encoder of another width (an SD-1.x one, say) is named with both widths before anything runs."""
    make_tiny_text_encoder(hidden=48).save_pretrained(tmp_path / "wide_encoder")
    out = tmp_path / "out"
    with pytest.raises(Exception) as info:
        run_inference(tiny_model_dir, out, text_encoder_source=str(tmp_path / "wide_encoder"))
    message = str(root_cause(info.value))
    assert "48-wide" in message and "cross_attention_dim is 32" in message and "--text_encoder_source" in message
    assert not (out / "manifest.csv").exists()


@pytest.mark.parametrize(
    "prompt, expected",
    [
        ("Épanchement pleural droit", "épanchement-pleural-droit"),
        ("右侧胸腔积液", "右侧胸腔积液"),
        ("Плевральный выпот", "плевральный-выпот"),
        ("Big right-sided pleural effusion", "big-right-sided-pleural-effusion"),
        ("", "null-prompt"),
        ("!!! ???", "prompt"),
    ],
)
def test_file_names_keep_letters_of_any_script(prompt, expected):
    from scripts.sampling.jobs import prompt_rows, sampling_jobs

    name = sampling_jobs(prompt_rows(prompt=prompt, seed=3))[0]["name"]
    assert name.startswith(f"00000_{expected}_seed3_"), name


def test_wrapped_config_errors_end_with_the_bundle_message(tiny_model_dir, tmp_path):
    """MONAI wraps errors of config expressions; the hook prints the bundle's message as the last line."""
    assert sys.excepthook is excepthook  # installed by importing the scripts package
    with pytest.raises(RuntimeError) as info:
        run_inference(tiny_model_dir, tmp_path / "out", output_format="tiff")
    assert str(info.value).startswith("Failed to")  # MONAI's wrapper (evaluate / instantiate)
    stream = io.StringIO()
    excepthook(info.type, info.value, info.tb, file=stream)
    lines = stream.getvalue().rstrip().splitlines()
    from scripts.sampling.writer import OUTPUT_FORMATS

    assert lines[-1] == f"SettingsError: --output_format 'tiff' is not supported: choose one of {list(OUTPUT_FORMATS)}."
    assert "png16" in lines[-1]
    assert any("Failed to" in line for line in lines[:-1])  # the whole traceback is still there


def test_cli_error_from_another_directory_ends_with_one_line(tiny_model_dir, tmp_path):
    """From any directory (no PYTHONPATH), a bad setting ends the output with the bundle's one-line message."""
    overrides = tiny_run_settings(tiny_model_dir, tmp_path / "out", guidance_scale="nan")
    command = bundle_run_command([*INFERENCE_CONFIGS, *TINY_OVERLAYS], overrides)
    result = subprocess.run(
        command, cwd=tmp_path, env=cli_env(bundle_on_path=False), capture_output=True, text=True, timeout=300
    )
    assert result.returncode != 0
    last = result.stderr.rstrip().splitlines()[-1]
    assert last == "SettingsError: --guidance_scale must be a finite number, got nan.", result.stderr[-2000:]
    assert not (tmp_path / "out").exists()


def test_pt_output_of_a_meta_tensor_is_a_plain_tensor(tmp_path):
    """An image arriving as a MONAI MetaTensor is written as a plain tensor, loadable without MONAI."""
    from monai.data import MetaTensor

    from scripts.sampling.writer import write_image

    image = torch.rand(1, 8, 8)
    path = write_image(MetaTensor(image, meta={"filename_or_obj": "x.png"}), str(tmp_path / "a.pt"), "pt")
    loaded = torch.load(path, weights_only=True)
    assert type(loaded) is torch.Tensor and torch.equal(loaded, image)
    with open(path, "rb") as f:
        assert b"monai" not in f.read(), "the file refers to MONAI classes"
