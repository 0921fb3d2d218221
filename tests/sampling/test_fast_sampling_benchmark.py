"""benchmarks/sampling_benchmark.py on the tiny networks: its table adds up, and its parity part runs."""

from __future__ import annotations

import json

import pytest
import torch

from helpers.bundle import INFERENCE_CONFIG, TINY_OVERLAY


def test_benchmark_report_is_consistent(tmp_path, capsys):
    from benchmarks.sampling_benchmark import main

    output = tmp_path / "benchmark.json"
    report = main(
        config_file=[INFERENCE_CONFIG, TINY_OVERLAY],
        device="cpu",
        batch_sizes=[1, 2],
        timed_steps=1,
        repeats=1,
        output_json=str(output),
        scheduler_name="dpmpp_2m",
        num_inference_steps=10,
    )
    assert json.loads(output.read_text()) == json.loads(json.dumps(report))
    reference, ours_1, ours_2 = report["timing"]["rows"]
    assert reference["settings"]["scheduler_name"] == "ddim" and reference["steps"] == 50
    assert reference["settings"]["batched_guidance"] is False and reference["batch_size"] == 1
    assert ours_1["settings"]["scheduler_name"] == "dpmpp_2m" and ours_1["steps"] == 10 and ours_2["batch_size"] == 2
    for row in (reference, ours_1, ours_2):
        assert row["timed_steps"] == 1 and row["peak_memory_gib"] > 0
        per_batch = row["text_s"] + row["steps"] * row["step_s"] + row["decode_s"]
        assert row["per_image_s"] == pytest.approx(per_batch / row["batch_size"])
        assert row["speed_up"] == pytest.approx(reference["per_image_s"] / row["per_image_s"])
    printed = capsys.readouterr().out
    assert "reference: ddim separate fp32" in printed and "ours: dpmpp_2m batched fp32" in printed


def test_parity_part_reports_distances_to_references(tmp_path):
    from benchmarks.parity_model import train
    from benchmarks.sampling_benchmark import parity

    model_dir = tmp_path / "parity_model"
    info = train(str(model_dir), minutes=0.05, num_images=32, batch_size=4)
    assert info["diffusion_steps"] > 0 and (model_dir / "model.pt").is_file()
    result = parity(
        str(model_dir),
        INFERENCE_CONFIG,
        {},
        samplers=["ddim-10", "dpmpp_2m-2", "dpmpp_2m_karras-30"],
        references=["ddim-40"],
        num_images=2,
        seed=0,
        xrv_weights=None,
        device=torch.device("cpu"),
    )
    table = result["distances"]["ddim-40"]
    assert set(table) == {"ddim-10", "dpmpp_2m-2", "dpmpp_2m_karras-30"}
    for row in table.values():
        assert set(row) == {"latent_rmse", "pixel_rmse", "feature_distance"} and all(v >= 0 for v in row.values())
    # 30 solver steps land much closer to a long DDIM run than 2 do, whatever the weights.
    assert table["dpmpp_2m_karras-30"]["latent_rmse"] < table["dpmpp_2m-2"]["latent_rmse"]
    assert set(result["fewest_steps_as_close_as_ddim_50"]) == {"ddim-40"}


def test_parity_sampler_specs_carry_their_settings():
    from benchmarks.sampling_benchmark import sampler_spec

    assert sampler_spec("unipc_karras-20") == ("unipc_karras", 20, {})
    assert sampler_spec("unipc_karras-20@bf16@cache2@interval100:700") == (
        "unipc_karras",
        20,
        {"autocast_dtype": "bfloat16", "cache_interval": 2, "guidance_interval": [100, 700]},
    )
    assert sampler_spec("unipc_karras-18@bf16@compile")[2] == {"autocast_dtype": "bfloat16", "compile": True}
    with pytest.raises(ValueError, match="Unknown sampler option 'fast'"):
        sampler_spec("ddim-50@fast")
