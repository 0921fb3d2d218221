"""The evaluation's metrics are named entries (``scripts.evaluation.sections.METRICS``) run on one shared
context: a new metric is one function and one registration, and features are computed once per set."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from helpers.evaluation import InputRecorder, smooth_images, write_png_folder
from scripts.evaluation.context import EvaluationContext, load_images
from scripts.evaluation.sections import METRICS, Metric
from scripts.evaluation.workflow import run_evaluation


def mean_intensity(context, scale: float = 1.0) -> dict:
    """A toy metric: the mean intensity (times ``scale``) of each generated set and of the real test images."""
    result = {kind: {"mean": scale * float(load_images(items).mean())} for kind, items in context.generated.items()}
    result["real_test"] = {"mean": scale * float(load_images(context.real_items, context.real_transform).mean())}
    return result


def _unconditional_run(tmp_path: Path, xrv_model=None, extractors=None, num_images: int = 3) -> EvaluationContext:
    """The context of one unconditional set of ``num_images`` PNGs (with their manifest) and 4 real test PNGs."""
    samples_dir = write_png_folder(tmp_path / "samples", smooth_images(num_images, seed=1), prefix="sample")
    with open(samples_dir / "manifest.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "prompt", "seed"])
        writer.writerows([f"sample_{i:04d}.png", "", i] for i in range(num_images))
    real_dir = write_png_folder(tmp_path / "real", smooth_images(4, seed=2))
    rows = [{"prompt": "", "seed": 0, "num_samples": num_images}]
    sets = [{"name": "unconditional", "kind": "unconditional", "rows": rows}]
    real_items = [{"image": str(path)} for path in sorted(real_dir.iterdir())]
    evaluation_dir, samples = str(tmp_path / "evaluation"), str(samples_dir)
    return EvaluationContext(evaluation_dir, samples, sets, real_items, None, xrv_model, extractors)


def test_a_registered_metric_reaches_the_summary_and_the_report(tmp_path, monkeypatch):
    monkeypatch.setitem(METRICS, "mean_intensity", Metric(mean_intensity, table=True))
    summary = run_evaluation(_unconditional_run(tmp_path), {"mean_intensity": {"scale": 2.0}}, grid_images=2)
    expected = 2.0 * float(smooth_images(3, seed=1).mul(255).round().div(255).mean())
    assert summary["mean_intensity"]["unconditional"]["mean"] == pytest.approx(expected, abs=1e-6)
    assert 0 < summary["mean_intensity"]["real_test"]["mean"] <= 2.0
    written = json.loads((tmp_path / "evaluation" / "summary.json").read_text())
    assert list(written) == ["settings", "warnings", "mean_intensity"]
    report = (tmp_path / "evaluation" / "report.html").read_text()
    assert "<tr><th>mean_intensity</th><td>unconditional</td>" in report


def test_an_unknown_metric_is_refused_naming_the_registered_ones(tmp_path):
    with pytest.raises(ValueError, match=r"Unknown evaluation metric 'sharpness' .*'reconstruction', 'diversity'"):
        run_evaluation(_unconditional_run(tmp_path), {"sharpness": {}})


def test_fid_and_fidelity_share_one_computation_of_the_torchxrayvision_features(tmp_path):
    from scripts.evaluation.extractors import load_extractors
    from scripts.evaluation.xrv import load_densenet

    model = load_densenet("random")
    recorder = InputRecorder(model)
    metrics = {"fid": {"protocols": ["xrv"]}, "fidelity": {"kid_subset_size": 2, "kid_num_subsets": 2}}
    try:
        summary = run_evaluation(_unconditional_run(tmp_path, model, load_extractors(["xrv"], model)), metrics)
    finally:
        recorder.close()
    assert len(recorder.inputs) == 2, "one batch of real test images and one of samples, not two of each"
    fid = summary["fid"]["unconditional_vs_real_test/xrv"]["fid"]
    assert summary["fidelity"]["unconditional_vs_real_test/xrv"]["fid"] == fid
