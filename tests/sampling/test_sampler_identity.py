"""One definition per thing on the sampling path: the sampler's identity names images, jobs carry only per-image
values, prompts are read once, precisions have one table, and no module reads the command line itself."""

from __future__ import annotations

import ast
import copy
from pathlib import Path

import pytest
import torch

from helpers.bundle import BUNDLE_ROOT, tiny_parser, tiny_run_settings

#: what decides an image besides prompt and seed: the sampler's settings, the model's and the output format
SAMPLER_KEYS = set(
    "num_inference_steps guidance_scale scheduler null_prompt scale_factor latent_shape batched_guidance "
    "autocast_dtype guidance_interval cache_interval channels_last compile".split()
)
MODEL_KEYS = set(
    "model_version load_old autoencoder_weights diffusion_weights text_encoder tokenizer use_flash_attention".split()
)


def _parser(tiny_model_dir, tmp_path, **overrides):
    return tiny_parser(**tiny_run_settings(tiny_model_dir, tmp_path / "out", **overrides))


def test_image_settings_are_the_sampler_identity_the_model_identity_and_the_format(tiny_model_dir, tmp_path):
    parser = _parser(tiny_model_dir, tmp_path, scheduler_name="ddim", guidance_scale=3, output_format="pt")
    sampler = parser.get_parsed_content("sampler")
    settings = parser.get_parsed_content("image_settings")
    assert set(sampler.identity()) == SAMPLER_KEYS
    assert set(settings) == SAMPLER_KEYS | MODEL_KEYS | {"output_format"}
    assert settings["scheduler"] == "ddim" and settings["guidance_scale"] == 3.0 and settings["output_format"] == "pt"
    assert settings["num_inference_steps"] == 3 and settings["autocast_dtype"] == "float32"
    # the identity is read from the sampler's state: a copy with other steps (the app's requests) says so
    variant = copy.copy(sampler)
    variant.num_inference_steps = 7
    assert variant.identity()["num_inference_steps"] == 7 and sampler.identity()["num_inference_steps"] == 3


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
