"""``autocast_dtype: auto`` on a CPU without AMX: a short probe decides, its result cached per machine.

The probe's timings are mocked (no test measures time); each test has its own cache file.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import sys
from pathlib import Path

import pytest
import torch

import scripts.networks.precision as precision


@pytest.fixture
def cache_file(tmp_path, monkeypatch):
    """A fresh cache file for the test, on a (mocked) CPU without AMX, with nothing announced yet."""
    path = tmp_path / "cache" / "precision_probe.json"
    monkeypatch.setenv(precision.PRECISION_PROBE_CACHE_ENV, str(path))
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(precision, "_announced", set())
    return path


def fake_timings(monkeypatch, float32_ms: float, bfloat16_ms: float) -> list:
    """Make the probe report these milliseconds; returns the list of its calls."""
    calls = []

    def measure(repeats: int = precision.PROBE_REPEATS) -> dict:
        calls.append(repeats)
        return {"float32_ms": float32_ms, "bfloat16_ms": bfloat16_ms}

    monkeypatch.setattr(precision, "measure_bf16_against_float32", measure)
    return calls


@pytest.mark.parametrize(
    "float32_ms, bfloat16_ms, expected, measurements",
    [
        (565.0, 265.0, "bfloat16", 1),  # AVX-512-BF16 without AMX: bf16 takes half the time
        (100.0, 100.0 * precision.BF16_MAX_TIME_RATIO, "bfloat16", precision.PROBE_ROUNDS),  # at the margin
        (100.0, 100.0 * precision.BF16_MAX_TIME_RATIO + 1, "float32", precision.PROBE_ROUNDS),  # within the margin
        (300.0, 900.0, "float32", 1),  # emulated bf16: slower
    ],
)
def test_the_probe_picks_bf16_only_when_clearly_faster(
    cache_file, monkeypatch, float32_ms, bfloat16_ms, expected, measurements
):
    calls = fake_timings(monkeypatch, float32_ms, bfloat16_ms)
    choice = precision.choose_precision("auto", "cpu")
    assert choice.precision == expected and precision.resolve_precision("auto", "cpu") == expected
    assert len(calls) == measurements, "a conclusive round decides, a close one is measured again"
    assert cache_file.exists(), "every decision is cached"
    assert precision.resolve_precision("auto", "cpu") == expected and len(calls) == measurements, "read back"
    assert choice.probe["float32_ms"] == float32_ms and choice.probe["bfloat16_ms"] == bfloat16_ms
    assert choice.probe["ratio"] == pytest.approx(bfloat16_ms / float32_ms)
    assert choice.probe["max_ratio"] == precision.BF16_MAX_TIME_RATIO and choice.probe["cached"] is False


def test_the_probe_is_cached_once_per_machine_and_reread_without_measuring(cache_file, monkeypatch, caplog):
    calls = fake_timings(monkeypatch, 400.0, 200.0)
    with caplog.at_level(logging.INFO, logger=precision.__name__):
        first = precision.choose_precision("auto", "cpu")
    assert first.precision == "bfloat16" and not first.probe["cached"] and len(calls) == 1
    assert f"measured now, cached in {cache_file}: float32 400 ms, bfloat16 200 ms, ratio 0.50 <= 0.8" in caplog.text
    entries = json.loads(cache_file.read_text())["entries"]
    fields = precision.machine_fields()
    assert list(entries) == [precision.machine_key(fields)]
    assert entries[precision.machine_key(fields)].items() >= {**fields, "float32_ms": 400.0}.items()

    precision._announced.clear()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=precision.__name__):
        again = precision.choose_precision("auto", "cpu")
    assert again.precision == "bfloat16" and again.probe["cached"] and len(calls) == 1, "measured twice"
    assert f"probe cached in {cache_file}: float32 400 ms, bfloat16 200 ms" in caplog.text


@pytest.mark.parametrize(
    "content",
    ['{"entries": {"AMD', "not json", "[]", '{"entries": []}', "{}", None],
    ids=["torn", "text", "list", "entries-list", "empty", "entry-without-timings"],
)
def test_an_unreadable_or_corrupt_cache_is_measured_again(cache_file, monkeypatch, content):
    cache_file.parent.mkdir(parents=True)
    if content is None:  # this machine's key, but its record lacks the timings
        fields = precision.machine_fields()
        content = json.dumps({"entries": {precision.machine_key(fields): {**fields, "float32_ms": "fast"}}})
    cache_file.write_text(content)
    calls = fake_timings(monkeypatch, 100.0, 200.0)
    assert precision.resolve_precision("auto", "cpu") == "float32" and len(calls) == 1
    record = precision.read_probe_cache(cache_file)[precision.machine_key(precision.machine_fields())]
    assert record["float32_ms"] == 100.0 and record["bfloat16_ms"] == 200.0


def test_another_torch_version_is_measured_again(cache_file, monkeypatch):
    older_calls = fake_timings(monkeypatch, 100.0, 50.0)
    with monkeypatch.context() as older:
        older.setattr(torch, "__version__", "2.0.0")
        assert precision.resolve_precision("auto", "cpu") == "bfloat16"
    calls = fake_timings(monkeypatch, 100.0, 150.0)  # this torch version measures bf16 slower
    assert precision.resolve_precision("auto", "cpu") == "float32", "the other version's record was used"
    assert len(older_calls) == 1 and len(calls) == 1
    entries = json.loads(cache_file.read_text())["entries"]
    assert sorted(entry["torch"] for entry in entries.values()) == sorted(["2.0.0", torch.__version__])


def test_an_explicit_precision_and_certain_hardware_never_probe(cache_file, monkeypatch):
    def measure(*args, **kwargs):
        raise AssertionError("the probe ran")

    monkeypatch.setattr(precision, "measure_bf16_against_float32", measure)
    for setting, expected in [("float32", "float32"), ("bf16", "bfloat16"), ("float16", "float16"), (None, "float32")]:
        choice = precision.choose_precision(setting, "cpu")
        assert choice.precision == expected and choice.probe is None
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert precision.resolve_precision("auto", "cpu") == "bfloat16"  # AMX: certain
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    assert precision.resolve_precision("auto", "cuda:0") == "float32"
    assert not cache_file.exists()


def _write_entries(path: str, writer: int, times: int) -> None:
    """One racing process: writes its own entry ``times`` times (a long one, so that writes take a while)."""
    for attempt in range(times):
        entry = {"writer": writer, "attempt": attempt, "float32_ms": 100.0, "bfloat16_ms": 50.0, "pad": "x" * 20000}
        precision.write_probe_entry(path, f"machine {writer}", entry)


@pytest.mark.skipif(sys.platform == "win32", reason="forks the test process")
def test_processes_racing_to_write_the_cache_never_leave_a_torn_file(tmp_path):
    path = tmp_path / "precision_probe.json"
    context = multiprocessing.get_context("fork")  # the children need no fresh interpreter (and no torch import)
    writers = [context.Process(target=_write_entries, args=(str(path), writer, 60)) for writer in range(4)]
    for writer in writers:
        writer.start()
    reads = torn = 0
    while any(writer.is_alive() for writer in writers):
        try:
            text = path.read_text()
        except FileNotFoundError:
            continue
        reads += 1
        try:
            json.loads(text)
        except ValueError:
            torn += 1
    for writer in writers:
        writer.join()
    assert all(writer.exitcode == 0 for writer in writers)
    assert torn == 0, f"{torn} of {reads} reads found a torn cache file"
    entries = json.loads(path.read_text())["entries"]
    assert entries and all(entry["float32_ms"] == 100.0 and len(entry["pad"]) == 20000 for entry in entries.values())
    assert not list(tmp_path.glob("*.partial*")), "a temporary file was left behind"


def test_the_probe_runs_the_unets_blocks_and_leaves_the_random_state_alone(monkeypatch):
    """The real probe, shrunk to 4 x 4 pixels and one timed call (its numbers are not checked)."""
    monkeypatch.setattr(precision, "PROBE_SIZE", 4)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    timings = precision.measure_bf16_against_float32(repeats=1)
    assert set(timings) == {"float32_ms", "bfloat16_ms"} and all(t > 0 for t in timings.values())
    assert torch.equal(torch.rand(3), expected), "the probe moved the global random generator"


def test_the_probes_widths_are_the_full_size_unets():
    from helpers.bundle import INFERENCE_CONFIG

    network = json.loads(Path(INFERENCE_CONFIG).read_text())["network_def"]
    level = 1
    assert network["attention_levels"][level] and network["channels"][level] == precision.PROBE_CHANNELS
    assert network["num_head_channels"][level] == precision.PROBE_HEAD_CHANNELS
    assert network["cross_attention_dim"] == precision.PROBE_CONTEXT_WIDTH
    assert 4 * network["channels"][0] == precision.PROBE_TIME_EMBEDDING
    assert network["norm_num_groups"] == precision.PROBE_NORM_GROUPS


def test_a_close_probe_is_measured_again_and_then_kept(cache_file, monkeypatch, caplog):
    """A busy machine pushes the ratio towards 1. The probe measures again (the fastest calls count, so load on
    some rounds does not decide) and caches the result: the next runs, quiet or busy, resolve alike, so one
    command names the same images on every run."""
    rounds = iter([(100.0, 95.0), (100.0, 85.0), (90.0, 80.0), (100.0, 100.0)])  # loaded, then a little less

    def measure(repeats: int = precision.PROBE_REPEATS) -> dict:
        float32_ms, bfloat16_ms = next(rounds)
        return {"float32_ms": float32_ms, "bfloat16_ms": bfloat16_ms}

    monkeypatch.setattr(precision, "measure_bf16_against_float32", measure)
    with caplog.at_level(logging.INFO, logger=precision.__name__):
        choice = precision.choose_precision("auto", "cpu")
    assert next(rounds, None) is None, "all rounds ran"
    assert choice.probe["float32_ms"] == 90.0 and choice.probe["bfloat16_ms"] == 80.0, "the fastest of each"
    assert choice.precision == "float32" and choice.probe["rounds"] == precision.PROBE_ROUNDS  # 80/90 > 0.8
    assert f"after {precision.PROBE_ROUNDS} rounds (close to the margin" in caplog.text and cache_file.exists()
    calls = fake_timings(monkeypatch, 100.0, 45.0)  # later runs, on quiet cores
    assert [precision.resolve_precision("auto", "cpu") for _ in range(2)] == ["float32"] * 2 and calls == []
