"""One definition per thing on the sampling path: the sampler's identity names images, jobs carry only per-image
values, prompts are read once, precisions have one table, and no module reads the command line itself."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from helpers.bundle import BUNDLE_ROOT, tiny_parser, tiny_run_settings

MODEL_KEYS = set(
    "model_version load_old autoencoder_weights diffusion_weights text_encoder tokenizer use_flash_attention".split()
)
#: arguments of the sampler that are no image setting of its own, and why: the model's identity names the networks
#: and tokenizer by their files' fingerprints, the context width is only checked, a progress bar changes nothing
NOT_IMAGE_SETTINGS = {
    "autoencoder": "model identity (autoencoder_weights)",
    "text_encoder": "model identity (text_encoder)",
    "tokenizer": "model identity (tokenizer)",
    "cross_attention_dim": "checked against the text encoder, changes nothing",
    "progress": "a progress bar",
}
#: arguments whose identity key has another name
IDENTITY_NAMES = {"autocast_dtype": "autocast_dtype", "scheduler": "scheduler"}


def _parser(tiny_model_dir, tmp_path, **overrides):
    return tiny_parser(**tiny_run_settings(tiny_model_dir, tmp_path / "out", **overrides))


def test_every_sampler_argument_is_in_the_identity_or_named_as_rounding_only_or_no_setting(tiny_model_dir, tmp_path):
    """Derived from the sampler's signature: a new argument must enter the identity (and so the names), or be
    declared a rounding-only speed switch (the manifest), or be listed above with its reason."""
    import inspect

    from scripts.sampling.sampler import GuidedLatentSampler

    arguments = [name for name in inspect.signature(GuidedLatentSampler.__init__).parameters if name != "self"]
    switches = set(GuidedLatentSampler.SPEED_SWITCHES)
    settings = [name for name in arguments if name not in switches and name not in NOT_IMAGE_SETTINGS]
    sampler = _parser(tiny_model_dir, tmp_path).get_parsed_content("sampler")
    assert set(sampler.identity()) == {IDENTITY_NAMES.get(name, name) for name in settings}
    assert set(sampler.speed_switches()) == switches and switches <= set(arguments)
    assert not set(sampler.identity()) & switches
    # the identity is read from the sampler's state: a copy with other steps (the app's requests) says so
    variant = sampler.with_settings(num_inference_steps=7)
    assert variant.identity()["num_inference_steps"] == 7 and sampler.identity()["num_inference_steps"] == 3


def test_image_settings_are_the_sampler_identity_the_model_identity_and_the_format(tiny_model_dir, tmp_path):
    parser = _parser(tiny_model_dir, tmp_path, scheduler_name="ddim", guidance_scale=3, output_format="pt")
    sampler = parser.get_parsed_content("sampler")
    settings = parser.get_parsed_content("image_settings")
    assert set(settings) == set(sampler.identity()) | MODEL_KEYS | {"output_format"}
    assert settings["scheduler"] == "ddim" and settings["guidance_scale"] == 3.0 and settings["output_format"] == "pt"
    assert settings["num_inference_steps"] == 3 and settings["autocast_dtype"] == "float32"
    manifest = parser.get_parsed_content("manifest_settings")
    assert manifest == {**settings, **sampler.speed_switches(), "batch_size": 1}


def test_speed_switches_and_the_run_size_leave_names_alone_and_settings_change_them(tiny_model_dir, tmp_path):
    """Seed 42's image keeps its name whatever the rounding-only switches, the batch size and the number of
    images (compile auto switching on at compile_min_images included); a setting that moves pixels renames it."""
    from unittest import mock

    def first_name(**overrides):
        with mock.patch("scripts.networks.compilation.cpu_compiler_available", return_value=True):
            parser = _parser(tiny_model_dir, tmp_path, **{"compile": "auto", "compile_min_images": 2, **overrides})
            jobs = parser.get_parsed_content("jobs")
            return jobs[0]["name"], parser.get_parsed_content("compiled")

    base, compiled = first_name(num_samples=1)
    assert compiled is False
    for overrides in (
        {"num_samples": 2},  # compile auto -> True
        {"batch_size": 2},
        {"channels_last": False},
        {"batched_guidance": False},
        {"compile": False},
    ):
        name, _ = first_name(**overrides)
        assert name == base, overrides
    assert first_name(num_samples=2)[1] is True
    for overrides in (
        {"guidance_scale": 6.0},
        {"autocast_dtype": "bfloat16"},
        {"cache_interval": 2},
        {"decode_dtype": "bfloat16"},
    ):
        assert first_name(**overrides)[0] != base, overrides


def test_jobs_carry_only_per_image_values_and_settings_enter_their_names(tiny_model_dir, tmp_path):
    from scripts.sampling.jobs import image_name, sampling_jobs

    parser = _parser(tiny_model_dir, tmp_path, num_samples=2, seed=5)
    jobs = parser.get_parsed_content("jobs")
    settings = parser.get_parsed_content("image_settings")
    assert [set(job) for job in jobs] == [{"prompt", "negative_prompt", "seed", "name"}] * 2
    assert [job["seed"] for job in jobs] == [5, 6]
    assert jobs[1]["name"] == image_name(1, jobs[1]["prompt"], "", 6, settings)
    rows = parser.get_parsed_content("prompt_rows")
    other_steps = sampling_jobs(rows, {**settings, "num_inference_steps": 4})
    assert [job["name"] for job in other_steps] != [job["name"] for job in jobs]


def test_a_prompts_file_is_read_once_per_run(tiny_model_dir, tmp_path, monkeypatch):
    import scripts.sampling.jobs as jobs_module

    prompts = tmp_path / "prompts.csv"
    prompts.write_text("prompt,num_samples\nSmall effusion,2\nCardiomegaly,3\n", encoding="utf-8")
    reads = []
    read = jobs_module.read_prompts_file
    monkeypatch.setattr(jobs_module, "read_prompts_file", lambda path: reads.append(path) or read(path))
    parser = _parser(tiny_model_dir, tmp_path, prompts_file=str(prompts))
    assert parser.get_parsed_content("num_images") == 5
    assert len(parser.get_parsed_content("jobs")) == 5
    assert reads == [str(prompts)]


def test_precisions_are_one_table_of_torch_dtypes(tiny_model_dir, tmp_path):
    from scripts.networks.precision import PRECISIONS, autocast_dtype_of, autocast_kwargs, precision_name

    assert PRECISIONS == {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    assert {precision_name(s) for s in ("bf16", "BFloat16", "fp16", None, "fp32")} == set(PRECISIONS)
    assert autocast_dtype_of("float32") is None and autocast_dtype_of("bf16") is torch.bfloat16
    assert autocast_kwargs("fp16") == {"dtype": torch.float16}
    with pytest.raises(ValueError, match="autocast_dtype must be one of"):
        precision_name("int8")
    sampler = _parser(tiny_model_dir, tmp_path, autocast_dtype="bf16").get_parsed_content("sampler")
    assert sampler.autocast_dtype is PRECISIONS["bfloat16"] and sampler.identity()["autocast_dtype"] == "bfloat16"


def test_no_module_reads_the_command_line_itself():
    """Settings reach the code through the config; only the benchmarks' own entry point reads its arguments."""
    readers = []
    for path in sorted((BUNDLE_ROOT / "scripts").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr == "argv" and getattr(node.value, "id", "") == "sys":
                readers.append(f"{Path(path).relative_to(BUNDLE_ROOT)}:{node.lineno}")
    assert readers == []
