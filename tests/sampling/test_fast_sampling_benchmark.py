"""benchmarks/sampling_benchmark.py on the tiny networks: its table adds up, and its parity part runs."""

from __future__ import annotations

import json
import time

import pytest
import torch

from helpers.bundle import INFERENCE_CONFIGS, TINY_OVERLAYS


@pytest.fixture(scope="module")
def parity_model(tmp_path_factory):
    from benchmarks.parity_model import train

    model_dir = tmp_path_factory.mktemp("parity") / "parity_model"
    info = train(str(model_dir), minutes=0.05, num_images=32, batch_size=4)
    assert info["diffusion_steps"] > 0 and (model_dir / "model.pt").is_file()
    return model_dir


def _slow_first_call_compile(delay_s: float):
    """Stands in for ``compile_unet``: the network itself, its first call ``delay_s`` slower (a compile)."""
    calls = []

    def compile_unet(network, device):
        def run(*args, **kwargs):
            if not calls:
                time.sleep(delay_s)
            calls.append(1)
            return network(*args, **kwargs)

        return run

    return compile_unet, calls


def test_one_run_times_the_reference_the_default_and_each_lever_beside_its_parity(
    tmp_path, capsys, monkeypatch, parity_model
):
    import scripts.sampling.sampler as sampler_module
    from benchmarks.sampling_benchmark import main

    fake_compile, compile_calls = _slow_first_call_compile(1.0)  # half of it is margin for a busy machine
    monkeypatch.setattr(sampler_module, "compile_unet", fake_compile)
    output = tmp_path / "benchmark.json"
    report = main(
        config_file=[*INFERENCE_CONFIGS, *TINY_OVERLAYS],
        device="cpu",
        batch_sizes=[1, 2],
        timed_steps=1,
        repeats=1,
        output_json=str(output),
        parity_model_dir=str(parity_model),
        parity_references=["ddim-40"],
        parity_images=2,
        scheduler_name="dpmpp_2m",
        num_inference_steps=10,
    )
    assert json.loads(output.read_text()) == json.loads(json.dumps(report))
    assert report["capabilities"]["torch_threads"] == torch.get_num_threads()
    assert isinstance(report["capabilities"]["amx_bf16"], bool)
    assert isinstance(report["capabilities"]["avx512_bf16"], bool)
    assert report["capabilities"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    explicit = {"setting": "float32", "precision": "float32", "reason": "set explicitly", "probe": None}
    assert report["precision"] == explicit
    rows = report["timing"]["rows"]
    reference, ours_1, ours_2, *lever_rows = rows
    assert reference["settings"]["scheduler_name"] == "ddim" and reference["steps"] == 50
    assert reference["settings"]["batched_guidance"] is False and reference["batch_size"] == 1
    default = ours_1["settings"]
    assert default["scheduler_name"] == "dpmpp_2m" and ours_1["steps"] == 10 and ours_2["batch_size"] == 2
    # the tiny overlay samples in float32, which "auto" compiles for a 100-image run; the lever row is eager
    assert default["autocast_dtype"] == "float32" and default["compile"] is True
    levers = {row["lever"]: row["settings"] for row in lever_rows}
    assert list(levers) == ["eager (compile off)", "precision bfloat16", "guidance interval", "feature reuse"]
    eager = {**default, "compile": False}
    changed = {lever: {k for k in settings if settings[k] != eager[k]} for lever, settings in levers.items()}
    assert changed == {
        "eager (compile off)": set(),
        "precision bfloat16": {"autocast_dtype"},
        "guidance interval": {"guidance_interval"},
        "feature reuse": {"cache_interval"},
    }
    for row in rows:
        assert row["timed_steps"] == 1 and row["peak_memory_gib"] > 0
        per_batch = row["text_s"] + row["steps"] * row["step_s"] + row["decode_s"]
        assert row["per_image_s"] == pytest.approx(per_batch / row["batch_size"])
        assert row["speed_up"] == pytest.approx(reference["per_image_s"] / row["per_image_s"])
        # every timed recipe has its parity beside it, judged against DDIM-50's distances to DDIM-40
        yardstick = report["parity"]["distances"]["ddim-40"]["ddim-50"]
        assert set(row["parity"]) == {"latent_rmse", "pixel_rmse", "feature_distance"}
        assert row["at_parity"] == all(row["parity"][k] <= yardstick[k] for k in yardstick)
    assert reference["parity"] == yardstick and reference["at_parity"]
    # the default rows are compiled (the stand-in's first call, at batch 1, is the slow one); eager rows never
    assert compile_calls and ours_1["compile_s"] >= 0.5 and ours_2["settings"]["compile"] is True
    assert all(row["compile_s"] == 0 for row in rows if row not in (ours_1, ours_2))
    summary = report["timing"]["default"]
    assert summary["run_images"] == 100
    assert summary["per_image_s"] == pytest.approx(ours_1["per_image_s"] + ours_1["compile_s"] / 100)
    gain = lever_rows[0]["per_image_s"] - ours_1["per_image_s"]
    assert summary["compile_gain_s_per_image"] == pytest.approx(gain)
    printed = capsys.readouterr().out
    assert "reference: ddim-50 separate fp32" in printed and "default: dpmpp_2m-10 batched fp32" in printed
    assert "feature reuse: dpmpp_2m-10 batched fp32 ch-last cache2" in printed
    assert "default for a 100-image run" in printed


def test_auto_compile_defaults_to_a_compiled_bf16_row_for_a_long_run(tmp_path, monkeypatch, capsys):
    """On a CPU without AMX whose (mocked) probe finds bf16 faster, the default of a 100-image run resolves
    "auto" through the probe to bf16 and compiles; the probe's numbers and decision are recorded and printed,
    the compile time is spread over the run in the summary, and the eager lever row measures what compiling
    gains."""
    import scripts.networks.precision as precision
    import scripts.sampling.sampler as sampler_module
    from benchmarks.sampling_benchmark import main

    monkeypatch.setenv(precision.PRECISION_PROBE_CACHE_ENV, str(tmp_path / "probe.json"))
    monkeypatch.setattr(precision, "bf16_native", lambda device: False)
    timings = {"float32_ms": 300.0, "bfloat16_ms": 120.0}
    monkeypatch.setattr(precision, "measure_bf16_against_float32", lambda: dict(timings))
    fake_compile, _ = _slow_first_call_compile(1.0)
    monkeypatch.setattr(sampler_module, "compile_unet", fake_compile)
    report = main(
        config_file=[*INFERENCE_CONFIGS, *TINY_OVERLAYS],
        device="cpu",
        timed_steps=1,
        repeats=1,
        output_json=str(tmp_path / "benchmark.json"),
        autocast_dtype="auto",
        num_inference_steps=4,
    )
    reference, default, eager, *_ = report["timing"]["rows"]
    assert default["settings"]["autocast_dtype"] == "bfloat16" and default["settings"]["compile"] is True
    choice = report["precision"]
    assert choice["setting"] == "auto" and choice["precision"] == "bfloat16"
    assert choice["probe"].items() >= {**timings, "ratio": 0.4, "max_ratio": 0.8, "cached": False}.items()
    printed = capsys.readouterr().out
    assert "AVX-512-BF16 " in printed and "torch CPU capability" in printed
    assert "precision: autocast_dtype auto -> bfloat16 (CPU probe measured now" in printed
    assert "float32 300 ms, bfloat16 120 ms, ratio 0.40 <= 0.8" in printed
    assert eager["lever"] == "eager (compile off)" and eager["settings"]["compile"] is False
    summary = report["timing"]["default"]
    assert default["compile_s"] >= 0.5
    assert summary["per_image_s"] == pytest.approx(default["per_image_s"] + default["compile_s"] / 100)
    assert summary["speed_up"] == pytest.approx(reference["per_image_s"] / summary["per_image_s"])
    gain = eager["per_image_s"] - default["per_image_s"]
    expected = default["compile_s"] / gain if gain > 0 else None
    assert summary["compile_pays_after_images"] == (pytest.approx(expected) if expected else None)


def test_parity_part_reports_distances_to_references(parity_model):
    from benchmarks.sampling_benchmark import parity

    result = parity(
        str(parity_model),
        list(INFERENCE_CONFIGS),
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


def test_peak_memory_is_each_blocks_own_peak():
    """The resident-set peak is reset on entry: a block after a large one reports its own, smaller peak.

    The large block is a fresh anonymous mapping with every page touched, so it adds to the resident set
    even in a process whose allocator holds freed memory that is still resident.
    """
    import mmap

    from benchmarks.sampling_benchmark import PeakMemory

    size, page = 256 * 2**20, mmap.PAGESIZE
    with PeakMemory(torch.device("cpu")) as large:
        block = mmap.mmap(-1, size)
        for offset in range(0, size, page):
            block[offset] = 1
        block.close()
    with PeakMemory(torch.device("cpu")) as small:
        pass
    assert large.peak - small.peak > 200 * 2**20, (large.peak, small.peak)
