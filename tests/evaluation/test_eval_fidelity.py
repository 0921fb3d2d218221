"""KID, PRDC, the feature extractors, pathology groups and the memorisation check, against independent
computations and hand examples."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers.evaluation import smooth_images, write_tiny_raddino
from scripts.evaluation import extractors, fidelity, memorisation, pathology


def _naive_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² with the cubic polynomial kernel, by explicit loops (independent of the vectorised code)."""
    d, m = x.shape[1], len(x)
    k = lambda a, b: (float(np.dot(a, b)) / d + 1.0) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_matches_a_loop_implementation_and_is_near_zero_for_one_distribution():
    rng = np.random.default_rng(0)
    real, shifted = rng.normal(size=(12, 4)), rng.normal(size=(12, 4)) + 1.5
    # one subset holding every feature: the estimate does not depend on the order of the draw
    one = fidelity.kid(real, shifted, num_subsets=1, subset_size=12)
    assert one["kid_mean"] == pytest.approx(_naive_mmd2(real, shifted), rel=1e-9) and one["kid_std"] == 0.0
    same = fidelity.kid(rng.normal(size=(400, 8)), rng.normal(size=(400, 8)), num_subsets=20, subset_size=200)
    apart = fidelity.kid(rng.normal(size=(400, 8)), rng.normal(size=(400, 8)) + 1.0, num_subsets=20, subset_size=200)
    assert abs(same["kid_mean"]) < 3 * same["kid_std"] + 1e-3 and apart["kid_mean"] > 50 * abs(same["kid_mean"])
    assert fidelity.kid(real, shifted, seed=1) == fidelity.kid(real, shifted, seed=1)  # seeded
    assert fidelity.kid(real, shifted[:5])["subset_size"] == 5  # capped at the smaller set
    with pytest.raises(ValueError, match="at least 2"):
        fidelity.kid(real, shifted[:1])


def test_prdc_identical_sets_disjoint_clusters_and_a_hand_example():
    rng = np.random.default_rng(1)
    points = rng.normal(size=(50, 3))
    same = fidelity.prdc(points, points, nearest_k=5)
    assert (same["precision"], same["recall"], same["coverage"]) == (1.0, 1.0, 1.0)
    # each point lies in its own ball and in the balls of its 5 nearest neighbours: density (k + 1) / k
    assert same["density"] == pytest.approx(6 / 5)
    far = fidelity.prdc(points, points + 100.0, nearest_k=5)
    assert all(far[m] == 0.0 for m in ("precision", "recall", "density", "coverage"))
    # 1-D by hand, k = 1: real radii are all 1; generated radii 2.4, 7.1, 2.4
    real = np.array([[0.0], [1.0], [2.0], [3.0]])
    generated = np.array([[0.5], [10.0], [2.9]])
    result = fidelity.prdc(real, generated, nearest_k=1)
    assert result["precision"] == pytest.approx(2 / 3)  # 0.5 and 2.9 lie in real balls, 10 does not
    assert result["density"] == pytest.approx(4 / 3)  # 0.5 in 2 balls (0, 1), 10 in none, 2.9 in 2 (2, 3)
    assert result["coverage"] == pytest.approx(1.0)  # every real point has a generated one within its radius
    assert result["recall"] == pytest.approx(1.0)  # every real point lies in a generated ball
    with pytest.raises(ValueError, match="more than 5"):
        fidelity.prdc(points[:5], points, nearest_k=5)


def test_raddino_random_weights_give_768_cls_features_through_its_processor():
    extractor = extractors.load_raddino("random")
    assert extractor.random_weights and extractor.feature_dim == 768
    seen = []
    hook = extractor.network.embeddings.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape))
    features = extractor(smooth_images(2, size=80))
    hook.remove()
    assert features.shape == (2, 768) and features.dtype == torch.float32 and torch.isfinite(features).all()
    assert seen == [torch.Size([2, 3, 518, 518])]  # shortest edge 518, centre crop 518, grey to RGB
    assert not torch.allclose(features[0], features[1])


def test_inception_random_weights_give_2048_pool_features_at_299():
    extractor = extractors.load_inception("random")
    seen = []
    hook = extractor.network.Conv2d_1a_3x3.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape))
    features = extractor(smooth_images(2, size=64))
    hook.remove()
    assert features.shape == (2, 2048) and torch.isfinite(features).all()
    assert seen == [torch.Size([2, 3, 299, 299])]
    assert not torch.allclose(features[0], features[1])


def test_extractor_sources_local_folder_and_clear_offline_errors(tmp_path):
    folder = write_tiny_raddino(tmp_path / "rad-dino")
    local = extractors.load_raddino(str(folder))
    assert not local.random_weights and local.feature_dim == 32 and local.weights_source == str(folder)
    assert local(smooth_images(3)).shape == (3, 32)
    with pytest.raises(extractors.ExtractorWeightsError, match="huggingface-cli download microsoft/rad-dino"):
        extractors.load_raddino("microsoft/rad-dino")  # no network, nothing cached
    with pytest.raises(extractors.ExtractorWeightsError, match="does not exist"):
        extractors.load_raddino(str(tmp_path / "missing"))
    with pytest.raises(extractors.ExtractorWeightsError, match="scripts.distribution.download"):
        extractors.load_inception(str(tmp_path / extractors.INCEPTION_FILE))
    wrong = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(1)}, wrong)
    with pytest.raises(extractors.ExtractorWeightsError, match="does not start with 0cc3c7bd"):
        extractors.load_inception(str(wrong))
    with pytest.raises(ValueError, match="Unknown feature extractor"):
        extractors.load_extractors(["clip"])


def test_inception_weights_file_with_its_hash_prefix_is_loaded(tmp_path):
    """A weights file whose SHA-256 starts with the expected prefix loads (a stand-in for torchvision's file)."""
    from torchvision.models import inception_v3

    from scripts.common.hashing import file_digest

    torch.manual_seed(3)
    path = tmp_path / extractors.INCEPTION_FILE
    torch.save(inception_v3(weights=None, aux_logits=True, init_weights=True).state_dict(), path)
    loaded = extractors.load_inception(str(path), sha256_prefix=file_digest(str(path))[:8])
    assert not loaded.random_weights and loaded.weights_source == extractors.INCEPTION_FILE
    assert loaded(smooth_images(1)).shape == (1, 2048)


def test_pathology_groups_from_keywords_and_from_labels():
    assert pathology.text_findings("There is a large left pleural effusion. Moderate cardiomegaly.") == {
        "Pleural Effusion",
        "Cardiomegaly",
    }
    assert pathology.text_findings("No pleural effusion or pneumothorax. Heart size is normal.") == {"No Finding"}
    assert pathology.text_findings("Endotracheal tube in place. The lungs are clear.") == {
        "No Finding",
        "Support Devices",
    }
    assert pathology.text_findings("Right lower lobe pneumonia; no effusion.") == {"Pneumonia"}
    labels = {"12": {"Pleural Effusion": 1.0, "Edema": -1.0, "Cardiomegaly": float("nan")}}
    found, how = pathology.item_findings({"study_id": "s12"}, "No acute process.", labels)
    assert (found, how) == ({"Pleural Effusion"}, "labels")
    found, how = pathology.item_findings({"labels": {"Edema": "1"}}, "", None)
    assert (found, how) == ({"Edema"}, "labels")
    assert pathology.groups([{"Edema"}, {"No Finding"}, {"Edema", "Fracture"}]) == {
        "Edema": [0, 2],
        "Fracture": [2],
        "No Finding": [1],
    }


def test_memorisation_finds_a_copied_training_image(tmp_path):
    rng = np.random.default_rng(2)
    training = rng.normal(size=(30, 16))
    generated = np.concatenate([rng.normal(size=(4, 16)), training[17:18] * 2.0])  # a copy (scaled) of image 17
    test = rng.normal(size=(6, 16))
    training_items = [{"image": f"train_{i}.png"} for i in range(30)]
    generated_items = [{"image": f"gen_{i}.png"} for i in range(5)]
    summary, rows = memorisation.check(generated_items, generated, training_items, training, test, "raddino")
    assert rows[0] == {"generated": "gen_4.png", "nearest_training": "train_17.png", "similarity": pytest.approx(1.0)}
    assert summary["similarity_max"] == pytest.approx(1.0) and summary["num_closer_than_test"] >= 1
    assert summary["test_similarity_max"] < 1.0 and summary["num_generated"] == 5
    indices, similarities = memorisation.nearest_neighbours(training[:3], training)
    assert indices.tolist() == [0, 1, 2] and np.allclose(similarities, 1.0)


def test_fidelity_cli_compares_two_folders_per_extractor(tmp_path):
    from helpers.evaluation import write_png_folder
    from scripts.evaluation.compare import main

    same = write_png_folder(tmp_path / "a", smooth_images(8, seed=1))
    other = write_png_folder(tmp_path / "b", smooth_images(8, seed=2))
    options = {"extractors": "xrv,inception", "xrv_weights": "random", "inception_weights": "random"}
    options.update(prdc_nearest_k=3, kid_subset_size=8, kid_num_subsets=1)
    torch.manual_seed(0)  # the same random weights in both calls
    identical = main(str(same), str(same), output_json=str(tmp_path / "out.json"), **options)["extractors"]
    torch.manual_seed(0)
    different = main(str(same), str(other), **options)["extractors"]
    assert set(identical) == set(different) == {"xrv", "inception"} and (tmp_path / "out.json").is_file()
    for name, scores in identical.items():
        # random networks give features of 1e4..1e8: FID is exact to float rounding of that scale
        assert scores["fid"] < 1e-6 * different[name]["fid"], name
        assert (scores["precision"], scores["recall"], scores["coverage"]) == (1.0, 1.0, 1.0), name
        assert different[name]["kid_mean"] > scores["kid_mean"], name
