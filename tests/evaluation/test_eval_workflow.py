"""configs/evaluate.json end to end on the synthetic data set with tiny networks and a random-weight DenseNet."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.bundle import BUNDLE_ROOT, run_inference
from helpers.data import make_prepared_synthetic
from helpers.evaluation import write_chexpert_labels, write_tiny_raddino

EVALUATE_CONFIG = str(BUNDLE_ROOT / "configs" / "evaluate.json")
RECONSTRUCTION_CONFIG = str(BUNDLE_ROOT / "configs" / "evaluate_reconstruction.json")

# 64 px images: MS-SSIM with 5 scales needs a 3-px kernel (see scripts/evaluation/metrics.py)
SMALL_MS_SSIM = {"msssim_kernel_size": 3}
FINDINGS = [
    {"finding": "Pleural Effusion", "prompt": "Large right pleural effusion.", "xrv_label": "Effusion"},
    {"finding": "Support Devices", "prompt": "Endotracheal tube in place.", "xrv_label": None},
]


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> Path:
    return make_prepared_synthetic(tmp_path_factory.mktemp("eval_data"), num_subjects=30, image_size=64)


def _evaluate(configs: list[str], model_dir, dataset_dir, evaluation_dir, samples_dir, **overrides) -> None:
    """Evaluation configs merged over inference.json, with the tiny weights."""
    settings = {"dataset_dir": str(dataset_dir), "evaluation_dir": str(evaluation_dir), **SMALL_MS_SSIM, **overrides}
    run_inference(model_dir, samples_dir, *configs, **settings)


def _seeded_densenet(monkeypatch):
    """Make the evaluation's random-weight DenseNet the same network at every load; returns the loader."""
    import scripts.evaluation.xrv as xrv

    load = xrv.load_densenet

    def seeded(*args, **kwargs):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return load(*args, **kwargs)

    monkeypatch.setattr(xrv, "load_densenet", seeded)
    return seeded


def _independent_fid(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Fréchet distance by the textbook formula with SciPy's matrix square root (not the bundle's code)."""
    from scipy import linalg

    mean_a, mean_b = features_a.mean(0), features_b.mean(0)
    cov_a, cov_b = np.cov(features_a, rowvar=False), np.cov(features_b, rowvar=False)
    root = linalg.sqrtm(cov_a @ cov_b).real
    return float(((mean_a - mean_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


def _check_fid_against_an_independent_computation(summary, tiny_model_dir, settings, load_densenet, tmp_path):
    """The summary's torchxrayvision FID of the report-conditioned set against the real test set equals the
    distance between those very images' features, computed here."""
    from helpers.bundle import tiny_parser, tiny_run_settings
    from scripts.evaluation import xrv
    from scripts.evaluation.context import load_images
    from scripts.evaluation.plan import set_files

    parser = tiny_parser(EVALUATE_CONFIG, **tiny_run_settings(tiny_model_dir, settings["samples_dir"], **settings))
    (reports,) = [s for s in parser.get_parsed_content("evaluation_sets") if s["name"] == "reports"]
    generated = load_images(set_files(reports, settings["samples_dir"]))
    real = load_images(parser.get_parsed_content("real_items"), parser.get_parsed_content("real_transform"))
    model = load_densenet("random")
    with torch.inference_mode():
        features = [xrv.image_features(model, images, "xrv", role).double().numpy() for images, role in
                    ((generated, xrv.GENERATED), (real, xrv.REAL))]  # fmt: skip
    expected = _independent_fid(*features)
    assert summary["fid"]["reports_vs_real_test/xrv"]["fid"] == pytest.approx(expected, rel=1e-3)


def test_full_evaluation_writes_summary_report_and_grids(tiny_model_dir, dataset_dir, tmp_path, monkeypatch):
    load_densenet = _seeded_densenet(monkeypatch)
    evaluation_dir = tmp_path / "evaluation"
    num_test = len(json.loads((dataset_dir / "datalist.json").read_text())["test"])
    assert num_test >= 2
    num_training = len(json.loads((dataset_dir / "datalist.json").read_text())["training"])
    assert num_test >= 4
    sizes = {"num_real_images": 99, "num_report_images": 4, "num_unconditional_images": 3}
    sizes.update(num_reconstruction_images=99, adherence_num_samples=2, batch_size=4, **{"evaluate#batch_size": 4})
    sizes.update(kid_subset_size=3, kid_num_subsets=5, prdc_nearest_k=2, pathology_min_images=2, memorisation_pairs=3)
    labels_file = write_chexpert_labels(dataset_dir, tmp_path / "chexpert.csv.gz")
    extractors = {"raddino_source": str(write_tiny_raddino(tmp_path / "rad-dino")), "inception_weights": "random"}
    overrides = {"xrv_weights": "random", "adherence_findings": FINDINGS, "diversity_max_pairs": None, **sizes}
    overrides.update(extractors)
    _evaluate([EVALUATE_CONFIG], tiny_model_dir, dataset_dir, evaluation_dir, evaluation_dir / "samples",
              chexpert_labels_file=str(labels_file), **overrides)  # fmt: skip
    summary = json.loads((evaluation_dir / "summary.json").read_text())
    assert any("RANDOM weights" in w for w in summary["warnings"])
    assert summary["reconstruction"]["test"]["num_images"] == num_test
    assert (
        0 <= summary["reconstruction"]["test"]["ms_ssim_mean"] <= 1
        and summary["reconstruction"]["test"]["psnr_mean"] > 0
    )
    with open(evaluation_dir / "reconstruction.csv") as f:
        assert len(list(csv.DictReader(f))) == num_test
    assert (
        summary["diversity"]["unconditional"]["num_pairs"] == 3
        and summary["diversity"]["real_test"]["num_images"] == num_test
    )
    assert set(summary["fid"]) == {
        f"{kind}_vs_real_test/{protocol}" for kind in ("unconditional", "reports") for protocol in ("xrv", "reference")
    }
    reports_fid = summary["fid"]["reports_vs_real_test/xrv"]
    assert reports_fid["num_images_a"] == 4 and reports_fid["num_images_b"] == num_test and reports_fid["fid"] > 0
    settings = {"dataset_dir": str(dataset_dir), "evaluation_dir": str(evaluation_dir), **SMALL_MS_SSIM, **overrides}
    settings["samples_dir"] = str(evaluation_dir / "samples")
    _check_fid_against_an_independent_computation(summary, tiny_model_dir, settings, load_densenet, tmp_path)

    # fidelity per extractor: FID, KID and PRDC of each generated set
    assert set(summary["fidelity"]) == {
        f"{kind}_vs_real_test/{name}"
        for kind in ("unconditional", "reports")
        for name in ("xrv", "raddino", "inception")
    }
    for name, values in summary["fidelity"].items():
        assert values["fid"] >= 0 and values["kid_std"] >= 0 and values["subset_size"] == 3, name
        assert all(0 <= values[m] <= 1 for m in ("precision", "recall", "coverage")) and values["density"] >= 0, name
    assert summary["fidelity"]["reports_vs_real_test/xrv"]["fid"] == pytest.approx(reports_fid["fid"])
    # per pathology: the labels file marks the first test study as an effusion, the others "No Finding"
    by_finding = {row["finding"]: row for row in summary["per_pathology"]}
    assert len(by_finding) == 14 and by_finding["No Finding"]["decided_by"] == "labels"
    assert by_finding["No Finding"]["num_generated"] == 3 and by_finding["No Finding"]["num_real"] == num_test - 1
    assert by_finding["Pleural Effusion"]["num_real"] == 1 and "skipped" in by_finding["Pleural Effusion"]
    assert by_finding["No Finding"]["raddino"]["precision"] is not None
    # memorisation: every generated image of the unconditional and report sets against the training images
    memorisation = summary["memorisation"]
    assert memorisation["extractor"] == "raddino" and memorisation["num_generated"] == 7
    assert memorisation["num_training"] == num_training and memorisation["num_test"] == num_test
    assert -1 <= memorisation["similarity_mean"] <= memorisation["similarity_max"] <= 1
    with open(evaluation_dir / "memorisation.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 7 and [float(r["similarity"]) for r in rows] == sorted(
        (float(r["similarity"]) for r in rows), reverse=True
    )
    effusion, devices = summary["adherence"]
    assert effusion["xrv_label"] == "Effusion" and effusion["num_samples"] == 2
    assert 0 <= effusion["mean_probability"] <= 1 and effusion["auroc_generated"] is not None
    assert (
        effusion["num_real_positive"] == 1
        and effusion["num_real_negative"] == num_test - 1
        and effusion["auroc_real"] is not None
    )
    assert devices["mean_probability"] is None  # no classifier output for support devices
    # 3 unconditional + 4 report-conditioned + 2 no-finding + 2 × 2 finding images
    with open(evaluation_dir / "samples" / "manifest.csv") as f:
        assert len(list(csv.DictReader(f))) == 13
    report = (evaluation_dir / "report.html").read_text()
    assert "Large right pleural effusion." in report and report.count("data:image/png;base64") == 7
    assert "RANDOM weights" in report
    for section in ("Fidelity and diversity per feature extractor", "<svg", "Per pathology", "Memorisation"):
        assert section in report, section
    assert report.count("<rect") == 4 * 6  # PRDC bars: 4 metrics × (2 sets × 3 extractors)
    assert sorted(p.name for p in (evaluation_dir / "grids").iterdir()) == sorted(
        ["unconditional.png", "reports.png", "no_finding.png", "finding_00.png", "finding_01.png", "real_test.png",
         "memorisation_pairs.png"]
    )  # fmt: skip


def test_reconstruction_only_config_skips_the_diffusion_model(tiny_model_dir, dataset_dir, tmp_path):
    evaluation_dir = tmp_path / "rec"
    (tmp_path / "unused").mkdir()
    configs = [EVALUATE_CONFIG, RECONSTRUCTION_CONFIG]  # the reconstruction-only config is an overlay of evaluate.json
    _evaluate(configs, tiny_model_dir, dataset_dir, evaluation_dir, tmp_path / "unused",
              diffusion_path=str(tmp_path / "no_unet.pt"), num_reconstruction_images=2)  # fmt: skip
    result = json.loads((evaluation_dir / "reconstruction.json").read_text())
    assert result["num_images"] == 2 and 0 <= result["ms_ssim_mean"] <= 1 and result["psnr_mean"] > 0
    # the values are those of the two test images through the tiny autoencoder's mean latent, computed here with
    # MONAI's MS-SSIM and the PSNR formula
    from monai.metrics import MultiScaleSSIMMetric

    from helpers.bundle import tiny_parser, tiny_run_settings

    parser = tiny_parser(EVALUATE_CONFIG, **tiny_run_settings(tiny_model_dir, "unused", dataset_dir=str(dataset_dir)))
    items, transform = parser.get_parsed_content("test_items")[:2], parser.get_parsed_content("real_transform")
    images = torch.stack([transform(dict(item))["image"].as_tensor() for item in items])
    autoencoder = parser.get_parsed_content("autoencoder")
    with torch.inference_mode():
        mean_latent, _ = autoencoder.encode(images)
        reconstructed = autoencoder.decode(mean_latent).clamp(0, 1)
    psnr = 10 * torch.log10(1 / ((reconstructed - images) ** 2).mean(dim=(1, 2, 3)))
    ms_ssim = MultiScaleSSIMMetric(spatial_dims=2, data_range=1.0, kernel_size=3)(reconstructed, images).flatten()
    with open(evaluation_dir / "reconstruction.csv") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["psnr"]) for r in rows] == pytest.approx(psnr.tolist(), rel=1e-4)
    assert [float(r["ms_ssim"]) for r in rows] == pytest.approx(ms_ssim.tolist(), rel=1e-4)
    assert result["ms_ssim_mean"] == pytest.approx(ms_ssim.mean().item(), rel=1e-4)
