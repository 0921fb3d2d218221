"""configs/inference.json end to end with tiny networks: every top-level knob, prompts files, resume, errors."""

from __future__ import annotations

import csv
from pathlib import Path

import fire
import numpy as np
import pytest
import torch
from monai.bundle.scripts import run as bundle_run

from helpers.bundle import (
    INFERENCE_CONFIGS,
    TINY_OVERLAYS,
    bundle_run_command,
    read_png,
    run_inference,
    tiny_run_settings,
)
from helpers.networks import make_tiny_text_encoder


def root_cause(error: BaseException) -> BaseException:
    """The exception our code raised (MONAI wraps errors of config expressions in RuntimeErrors)."""
    while error.__cause__ is not None:
        error = error.__cause__
    return error


def _pt_images(paths):
    return [torch.load(p, weights_only=True) for p in paths]


def _manifest(output_dir: Path) -> list[dict]:
    with open(output_dir / "manifest.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize(
    ("argument", "text"),
    [("123", "123"), ("True", "True"), ("effusion, cardiomegaly", "effusion, cardiomegaly"), ("'1e3'", "1e3")],
)
def test_cli_typed_prompts_match_prompts_file(argument, text, tiny_model_dir, tmp_path):
    """What fire makes of a prompt (int, bool, tuple; quoted text stays text) generates the text as a prompts
    file gives it."""
    out = tmp_path / "cli"
    overrides = tiny_run_settings(tiny_model_dir, out, output_format="pt", prompt=argument)
    fire.Fire({"run": bundle_run}, command=bundle_run_command([*INFERENCE_CONFIGS, *TINY_OVERLAYS], overrides)[3:])
    cli_images = sorted(out.glob("*.pt"))
    assert _manifest(out)[0]["prompt"] == text
    prompts_file = tmp_path / "prompts.csv"
    with open(prompts_file, "w", newline="") as f:
        csv.writer(f).writerows([["prompt", "seed"], [text, 42]])
    file_images = run_inference(tiny_model_dir, tmp_path / "file", prompts_file=str(prompts_file), output_format="pt")
    assert [p.name for p in cli_images] == [p.name for p in file_images]
    torch.testing.assert_close(_pt_images(cli_images)[0], _pt_images(file_images)[0], rtol=0, atol=0)


def test_prompts_file_text_is_never_evaluated(tiny_model_dir, tmp_path):
    prompts_file = tmp_path / "prompts.txt"
    text = "$__import__('os').getcwd()"
    prompts_file.write_text(f"# a comment line\n{text}\n\nNormal chest radiograph\n")
    images = run_inference(tiny_model_dir, tmp_path / "out", prompts_file=str(prompts_file))
    assert len(images) == 2
    assert [row["prompt"] for row in _manifest(tmp_path / "out")] == [text, "Normal chest radiograph"]


def _generate(tiny_model_dir, out, **overrides) -> torch.Tensor:
    paths = run_inference(tiny_model_dir, out, output_format="pt", **overrides)
    assert len(paths) == 1, paths
    return _pt_images(paths)[0]


@pytest.fixture(scope="module")
def baseline_image(tiny_model_dir, tmp_path_factory) -> torch.Tensor:
    """The default settings' image; generating it twice gives the same pixels."""
    root = tmp_path_factory.mktemp("baseline")
    baseline = _generate(tiny_model_dir, root / "first")
    assert baseline.shape == (1, 64, 64) and 0.0 <= baseline.min() and baseline.max() <= 1.0
    torch.testing.assert_close(baseline, _generate(tiny_model_dir, root / "again"), rtol=0, atol=0)
    return baseline


@pytest.mark.parametrize(
    "override",
    [
        {"guidance_scale": 2.0},
        {"seed": 43},
        {"prompt": "Small left-sided pneumothorax"},
        {"negative_prompt": "cardiomegaly"},
        {"num_inference_steps": 2},
        {"scheduler_name": "ddpm"},
    ],
    ids=lambda o: next(iter(o)),
)
def test_each_sampling_knob_changes_the_image(override, baseline_image, tiny_model_dir, tmp_path):
    changed = _generate(tiny_model_dir, tmp_path / "changed", **override)
    assert (baseline_image - changed).abs().max() > 1e-3, f"{override} had no effect"


def test_seed_gives_same_image_across_batch_sizes(tiny_model_dir, tmp_path):
    one_by_one = run_inference(tiny_model_dir, tmp_path / "bs1", output_format="pt", num_samples=3, batch_size=1)
    batched = run_inference(tiny_model_dir, tmp_path / "bs3", output_format="pt", num_samples=3, batch_size=3)
    assert len(one_by_one) == 3 and [p.name for p in one_by_one] == [p.name for p in batched]
    for a, b in zip(_pt_images(one_by_one), _pt_images(batched)):
        # Float32 kernels may round differently for other batch shapes: equal to float rounding (~1e-4 of
        # the [0, 1] range, i.e. at most one 8-bit grey level on a few pixels).
        torch.testing.assert_close(a, b, rtol=0, atol=5e-4)
    images = _pt_images(batched)
    assert (images[0] - images[1]).abs().max() > 1e-3, "different seeds gave the same image"
    assert sorted(int(r["seed"]) for r in _manifest(tmp_path / "bs3")) == [42, 43, 44]


def test_output_formats_hold_the_same_images(tiny_model_dir, tmp_path):
    """The float tensor (``pt``) is the image; PNG is round(255·x) of it exactly, JPEG (quality 95) within a few
    grey levels."""
    written = {}
    for output_format in ("pt", "png", "jpg"):
        out = tmp_path / "elsewhere" / output_format
        paths = run_inference(tiny_model_dir, out, output_format=output_format, num_samples=2, batch_size=2)
        assert len(paths) == 2 and all(p.suffix == f".{output_format}" and p.parent == out for p in paths)
        assert not list(out.glob("*.tmp"))
        written[output_format] = paths
    tensors = _pt_images(written["pt"])
    assert all(t.dtype == torch.float32 and t.shape == (1, 64, 64) and 0 <= t.min() <= t.max() <= 1 for t in tensors)
    for tensor, png, jpg in zip(tensors, written["png"], written["jpg"]):
        expected = (tensor[0].numpy() * 255.0).round().astype(np.uint8)
        np.testing.assert_array_equal(read_png(png), expected)
        jpeg_error = np.abs(read_png(jpg).astype(int) - expected.astype(int))
        assert read_png(jpg).dtype == np.uint8 and jpeg_error.mean() < 2.0 and jpeg_error.max() <= 16
    assert (read_png(written["png"][0]).astype(int) - read_png(written["png"][1])).std() > 1, "seeds differ"


def test_text_encoder_and_tokenizer_sources_are_used(baseline_image, tiny_model_dir, tmp_path):
    baseline = baseline_image
    other_encoder = tmp_path / "other_text_encoder"
    make_tiny_text_encoder(seed=1).save_pretrained(other_encoder)
    changed = _generate(tiny_model_dir, tmp_path / "changed", text_encoder_source=str(other_encoder))
    assert (baseline - changed).abs().max() > 1e-3
    # A pipeline folder holding the encoder in text_encoder/ works too.
    pipeline = tmp_path / "pipeline"
    make_tiny_text_encoder(seed=1).save_pretrained(pipeline / "text_encoder")
    torch.testing.assert_close(_generate(tiny_model_dir, tmp_path / "pipe", text_encoder_source=str(pipeline)), changed)
    from scripts.networks.text import TextEncoderNotFoundError

    with pytest.raises(Exception) as info:
        _generate(tiny_model_dir, tmp_path / "missing", text_encoder_source=str(tmp_path / "nowhere"))
    assert isinstance(root_cause(info.value), TextEncoderNotFoundError)
    assert "scripts.distribution.download text_encoder" in str(root_cause(info.value))
    with pytest.raises(Exception) as info:
        _generate(tiny_model_dir, tmp_path / "no_tokenizer", tokenizer_path=str(tmp_path / "nowhere"))
    assert isinstance(root_cause(info.value), FileNotFoundError) and "tokenizer" in str(root_cause(info.value))
    assert not (tmp_path / "missing").exists() and not (tmp_path / "no_tokenizer").exists()


def test_resume_skips_finished_images_and_names_never_collide(tiny_model_dir, tmp_path):
    prompts_file = tmp_path / "prompts.csv"
    with open(prompts_file, "w", newline="") as f:
        csv.writer(f).writerows(
            [["prompt", "seed", "num_samples"], ["Cardiomegaly", 5, 2], ["Cardiomegaly", 5, 2], ["No finding", "", 1]]
        )
    out = tmp_path / "out"
    first = run_inference(tiny_model_dir, out, prompts_file=str(prompts_file), batch_size=2)
    assert len(first) == 5 and len({p.name for p in first}) == 5
    stamps = {p.name: p.stat().st_mtime_ns for p in first}
    removed = first[3]
    removed.unlink()
    (out / (first[0].name + ".tmp")).write_bytes(b"half-written")  # leftover of a killed run
    second = run_inference(tiny_model_dir, out, prompts_file=str(prompts_file), batch_size=2)
    assert [p.name for p in second] == [p.name for p in first]
    for path in second:
        if path.name != removed.name:
            assert path.stat().st_mtime_ns == stamps[path.name], f"{path.name} was generated again"
    rows = _manifest(out)
    assert sorted(r["file"] for r in rows) == sorted(p.name for p in first)
    assert {r["seed"] for r in rows} == {"5", "6", "2042"}
    assert {r["scheduler"] for r in rows} == {"unipc_karras"} and {r["num_inference_steps"] for r in rows} == {"3"}
    # Everything done: a third run generates nothing and keeps the manifest whole.
    run_inference(tiny_model_dir, out, prompts_file=str(prompts_file), batch_size=2)
    assert len(_manifest(out)) == 5


@pytest.mark.parametrize(
    "overrides, error",
    [
        ({"output_format": "tiff"}, "output_format"),
        ({"num_inference_steps": -1}, "num_inference_steps"),
        ({"batch_size": 0}, "batch_size"),
        ({"device": "cuda:0"}, "device"),
        ({"prompts_file": "EMPTY"}, "holds no prompts"),
        ({"diffusion_path": "MISSING"}, "model.pt' not found"),
    ],
    ids=["format", "steps", "batch", "device", "empty-prompts", "missing-weights"],
)
def test_bad_input_gives_clear_error_and_writes_nothing(overrides, error, tiny_model_dir, tmp_path):
    if torch.cuda.is_available() and "device" in overrides:
        pytest.skip("a GPU is present")
    if overrides.get("prompts_file") == "EMPTY":
        (tmp_path / "empty.txt").write_text("\n# only a comment\n")
        overrides = {"prompts_file": str(tmp_path / "empty.txt")}
    if overrides.get("diffusion_path") == "MISSING":
        overrides = {"diffusion_path": str(tmp_path / "model.pt")}
    out = tmp_path / "out"
    with pytest.raises(Exception) as info:
        run_inference(tiny_model_dir, out, **overrides)
    message = str(root_cause(info.value))
    assert error in message and len(message.splitlines()) == 1, message
    assert not out.exists()


def test_long_prompt_warns_about_truncation(tiny_model_dir, tmp_path):
    long_prompt = " ".join(["Moderate right pleural effusion with adjacent atelectasis."] * 12)
    with pytest.warns(UserWarning, match="truncated to 77"):
        images = run_inference(tiny_model_dir, tmp_path / "out", prompt=long_prompt)
    assert len(images) == 1


def test_prompt_embeddings_are_cached_within_a_bound(tiny_model_dir):
    from helpers.bundle import tiny_parser

    parser = tiny_parser(
        model_dir=str(tiny_model_dir), load_old=False, text_encoder_source=str(tiny_model_dir / "text_encoder")
    )
    sampler = parser.get_parsed_content("inferer")
    sampler.CONTEXT_CACHE_SIZE = 3
    first = sampler.encode_prompts(["", "Cardiomegaly", ""])
    torch.testing.assert_close(first[0], first[2])
    for i in range(5):
        sampler.encode_prompts([f"prompt {i}"])
    assert len(sampler._context_cache) == 3 and "prompt 4" in sampler._context_cache
    torch.testing.assert_close(sampler.encode_prompts(["Cardiomegaly"])[0], first[1])
