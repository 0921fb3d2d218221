"""FID (scripts.evaluation.fid): agreement with an independent NumPy/SciPy computation, behaviour, feature cache."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.linalg

from helpers.evaluation import random_densenet_file, smooth_images, write_png_folder
from scripts.evaluation import fid, xrv


def numpy_fid(a: np.ndarray, b: np.ndarray) -> float:
    """Textbook Fréchet distance of two Gaussians fitted to the rows of ``a`` and ``b``."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(cov_a @ cov_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


def test_fid_of_a_set_with_itself_is_zero():
    features = np.random.default_rng(0).normal(size=(300, 16))
    assert abs(fid.frechet_distance(features, features)) < 1e-6
    few = features[:10]  # fewer images than dimensions: singular covariance
    assert abs(fid.frechet_distance(few, few)) < 1e-6


@pytest.mark.parametrize("num_images", [400, 9])
def test_fid_matches_numpy_scipy_on_random_features(num_images):
    rng = np.random.default_rng(1)
    a = rng.normal(size=(num_images, 12))
    b = rng.normal(size=(num_images - 1, 12)) @ rng.normal(size=(12, 12)) * 0.5 + 0.3
    expected = numpy_fid(a, b)
    assert expected > 1.0
    assert fid.frechet_distance(a, b) == pytest.approx(expected, rel=1e-5)


def test_fid_grows_with_the_distribution_shift():
    rng = np.random.default_rng(2)
    reference = rng.normal(size=(500, 8))
    shifted = rng.normal(size=(500, 8))
    values = [fid.frechet_distance(reference, shifted + shift) for shift in (0.0, 0.25, 0.5, 1.0, 2.0)]
    assert all(later > earlier for earlier, later in zip(values, values[1:])), values
    # a mean shift of s in every one of 8 dimensions adds about 8 s² to the distance
    assert values[-1] - values[0] == pytest.approx(8 * 4.0, rel=0.15)


def test_small_sets_are_reported_with_a_warning():
    rng = np.random.default_rng(3)
    summary = fid.fid_summary(rng.normal(size=(20, 64)), rng.normal(size=(30, 64)), "xrv", "random")
    assert summary["num_images_a"] == 20 and summary["num_images_b"] == 30 and summary["fid"] > 0
    assert "fewer than the 64 feature dimensions" in summary["warning"]
    assert fid.fid_summary(rng.normal(size=(90, 64)), rng.normal(size=(80, 64)), "xrv", "random")["warning"] is None
    assert fid.small_set_warning(1000, 1024) and fid.small_set_warning(1024, 1024) is None
    with pytest.raises(ValueError, match="equal D"):
        fid.frechet_distance(np.zeros((3, 4)), np.zeros((3, 5)))


def test_set_features_are_cached_per_set_and_recomputed_when_files_change(tmp_path, monkeypatch):
    model = xrv.load_densenet(str(random_densenet_file(tmp_path / "w.pt")))
    folder = write_png_folder(tmp_path / "set", smooth_images(3, seed=1))
    items = fid.items_for(str(folder))
    cache = tmp_path / "cache"
    first = fid.set_features(model, items, "set", cache_dir=str(cache), batch_size=2)
    assert first.shape == (3, 1024) and len(list(cache.glob("set-*.npz"))) == 1

    def must_not_run(*args, **kwargs):
        raise AssertionError("features recomputed although cached")

    with monkeypatch.context() as patch:
        patch.setattr(xrv, "image_features", must_not_run)
        assert np.array_equal(fid.set_features(model, items, "set", cache_dir=str(cache)), first)
        with pytest.raises(AssertionError, match="recomputed"):  # another protocol is another cache entry
            fid.set_features(model, items, "set", protocol="reference", role="generated", cache_dir=str(cache))
    write_png_folder(folder, smooth_images(1, seed=9))  # overwrite img_0000.png with other pixels
    changed = fid.set_features(model, fid.items_for(str(folder)), "set", cache_dir=str(cache))
    assert not np.allclose(changed[0], first[0]) and np.allclose(changed[1:], first[1:], atol=1e-5)


def test_fid_cli_on_two_folders(tmp_path):
    a = write_png_folder(tmp_path / "a", smooth_images(2, seed=1))
    b = write_png_folder(tmp_path / "b", smooth_images(3, seed=2))
    weights = random_densenet_file(tmp_path / "w.pt")
    out = tmp_path / "fid.json"
    summary = fid.main(
        str(a), str(b), xrv_weights=str(weights), output_json=str(out), cache_dir=str(tmp_path / "cache")
    )
    assert summary["fid"] > 1e-3 and summary["num_images_a"] == 2 and summary["num_images_b"] == 3
    assert summary["warning"] and summary["protocol"] == "xrv"
    assert json.loads(out.read_text()) == summary
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2  # one feature file per set
    with pytest.raises(FileNotFoundError, match="does not exist"):
        fid.main(str(tmp_path / "nowhere"), str(a), xrv_weights=str(weights))
