"""Reconstruction and diversity metrics (scripts.evaluation.metrics) on small synthetic images."""

from __future__ import annotations

import csv
import itertools
import math

import numpy as np
import pytest
import torch

from helpers.evaluation import noise_images, smooth_images
from scripts.evaluation import metrics

SMALL = {"kernel_size": 3}  # 64 px images: 5 scales need kernel < 64 // 16 + 1


def test_ms_ssim_of_an_image_with_itself_is_one_with_default_settings():
    images = smooth_images(2, size=176, seed=1)
    assert torch.allclose(metrics.MSSSIM()(images, images), torch.ones(2), atol=1e-5)


def test_ms_ssim_is_one_for_identical_and_low_for_unrelated_noise():
    ms_ssim = metrics.MSSSIM(**SMALL)
    a, b = noise_images(4, seed=1), noise_images(4, seed=2)
    assert torch.allclose(ms_ssim(a, a), torch.ones(4), atol=1e-5)
    unrelated = ms_ssim(a, b)
    assert unrelated.max() < 0.2, unrelated
    # a slightly perturbed copy stays similar: the metric orders similarity, not just identity
    assert ms_ssim(a, (a + 0.05 * b).clamp(0, 1)).min() > 0.8


def test_too_small_images_give_a_clear_error():
    with pytest.raises(ValueError, match="too small for MS-SSIM.*msssim_kernel_size"):
        metrics.MSSSIM()(smooth_images(1), smooth_images(1))


def test_pair_indices_all_pairs_and_seeded_subset():
    assert metrics.pair_indices(5).tolist() == [list(p) for p in itertools.combinations(range(5), 2)]
    subset = metrics.pair_indices(30, max_pairs=50, seed=3)
    assert subset.shape == (50, 2)
    assert (subset[:, 0] < subset[:, 1]).all() and subset.max() < 30
    assert len({tuple(p) for p in subset.tolist()}) == 50  # distinct pairs
    assert np.array_equal(subset, metrics.pair_indices(30, max_pairs=50, seed=3))
    assert not np.array_equal(subset, metrics.pair_indices(30, max_pairs=50, seed=4))
    # every linear index maps to a real pair: drawing all of them reproduces the full set
    assert {tuple(p) for p in metrics.pair_indices(7, max_pairs=20, seed=0).tolist()} <= set(
        itertools.combinations(range(7), 2)
    )


def test_diversity_of_identical_images_is_one_and_of_noise_is_low():
    same = smooth_images(1, seed=5).repeat(4, 1, 1, 1)
    result = metrics.pairwise_diversity(same, **SMALL)
    assert result["ms_ssim_mean"] == pytest.approx(1.0, abs=1e-5)
    assert result["num_pairs"] == 6 and result["num_images"] == 4 and result["all_pairs"]
    noisy = metrics.pairwise_diversity(noise_images(6, seed=0), max_pairs=5, seed=1, **SMALL)
    assert noisy["num_pairs"] == 5 and not noisy["all_pairs"]
    assert noisy["ms_ssim_mean"] < 0.2


def test_diversity_matches_the_mean_over_explicit_pairs():
    images = smooth_images(5, seed=2)
    ms_ssim = metrics.MSSSIM(**SMALL)
    expected = np.mean(
        [float(ms_ssim(images[i : i + 1], images[j : j + 1])) for i, j in itertools.combinations(range(5), 2)]
    )
    assert metrics.pairwise_diversity(images, batch_size=3, **SMALL)["ms_ssim_mean"] == pytest.approx(
        expected, abs=1e-6
    )


class HalfDecoder(torch.nn.Module):
    """Autoencoder stand-in: the 'mean latent' is the image, a noisy sigma that must be ignored, decode halves."""

    def encode(self, images):
        return images, torch.full_like(images, 100.0)

    def decode(self, latents):
        return 0.5 * latents


def test_reconstruction_scores_use_the_mean_latent_and_match_the_psnr_formula(tmp_path):
    images = smooth_images(3, seed=4)
    items = [{"image": f"/data/{i}.png", "name": f"{i}"} for i in range(3)]
    rows = metrics.reconstruction_scores(HalfDecoder(), [(items[:2], images[:2]), (items[2:], images[2:])], **SMALL)
    assert [row["name"] for row in rows] == ["0", "1", "2"]
    for row, image in zip(rows, images):
        mse = float(((0.5 * image - image) ** 2).mean())
        assert row["psnr"] == pytest.approx(10 * math.log10(1.0 / mse), rel=1e-4)
        assert 0.0 < row["ms_ssim"] < 1.0 and 0.0 < row["ssim"] < 1.0
    summary = metrics.summarise(rows)
    assert summary["num_images"] == 3
    assert summary["psnr_mean"] == pytest.approx(np.mean([r["psnr"] for r in rows]))
    path = metrics.write_csv(rows, str(tmp_path / "out" / "reconstruction.csv"))
    with open(path) as f:
        read = list(csv.DictReader(f))
    assert [float(r["ms_ssim"]) for r in read] == pytest.approx([r["ms_ssim"] for r in rows])
    assert not list((tmp_path / "out").glob("*.tmp*"))


def test_tiny_autoencoder_reconstruction_is_deterministic(tmp_path):
    from helpers.bundle import tiny_parser

    torch.manual_seed(0)
    autoencoder = tiny_parser().get_parsed_content("autoencoder_def").eval()
    images = smooth_images(2, seed=6)
    first, second = metrics.reconstruct(autoencoder, images), metrics.reconstruct(autoencoder, images)
    assert first.shape == images.shape and torch.equal(first, second)
    assert first.min() >= 0 and first.max() <= 1
