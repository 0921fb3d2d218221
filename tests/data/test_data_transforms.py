"""Text transforms (sentence subsets, tokens, null prompt) and the image chain of the training configs (orientation)."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch
from monai.data import DataLoader, Dataset, load_decathlon_datalist
from monai.transforms import Compose, LoadImaged, RandAffined, RandFlipd
from monai.utils import set_determinism
from PIL import Image

from helpers.bundle import stage_parser
from scripts.data.transforms import RandNullPromptd, RandSentenceSubsetd, Tokenized
from scripts.networks.text import null_prompt_ids, tokenize

SENTENCES = [f"Sentence number {i}." for i in range(8)]


def _chain(parser, *keys) -> Compose:
    return Compose([transform for key in keys for transform in parser.get_parsed_content(key)])


def test_sentence_count_covers_one_to_max_inclusive_in_report_order():
    transform = RandSentenceSubsetd(max_sentences=5)
    transform.set_random_state(0)
    counts = Counter()
    for _ in range(1000):
        report = transform({"sentences": SENTENCES})["report"]
        chosen = [s + "." for s in report.split(".")[:-1]]
        chosen = [s.strip() for s in chosen]
        assert chosen == sorted(chosen, key=SENTENCES.index) and set(chosen) <= set(SENTENCES)
        counts[len(chosen)] += 1
    assert set(counts) == {1, 2, 3, 4, 5}
    assert min(counts.values()) > 1000 / 5 / 2  # roughly uniform
    few = Counter(len(transform({"sentences": SENTENCES[:3]})["report"].split(".")) - 1 for _ in range(300))
    assert set(few) == {1, 2, 3}
    assert transform({"sentences": []})["report"] == ""


def test_invalid_arguments_are_named():
    with pytest.raises(ValueError, match="max_sentences"):
        RandSentenceSubsetd(max_sentences=0)
    with pytest.raises(TypeError, match="list of sentences"):
        RandSentenceSubsetd()({"sentences": "one string"})
    with pytest.raises(ValueError, match="null_prompt_ids"):
        RandNullPromptd(null_prompt_ids=torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="tokenizer"):
        Tokenized()


@pytest.mark.parametrize("style", ["empty_prompt", "bos_eos"])
def test_config_chain_null_prompt_rate_and_identity(tokenizer, style):
    parser = stage_parser("diffusion", null_prompt=style, null_prompt_prob=0.1)
    chain = _chain(parser, "text_transforms")
    chain.set_random_state(1)
    null = null_prompt_ids(tokenizer, style)
    draws = 3000
    nulls, lengths = 0, set()
    for _ in range(draws):
        out = chain({"sentences": SENTENCES[:6]})
        assert out["prompt_ids"].shape == (77,) and out["prompt_ids"].dtype == torch.long
        assert "sentences" not in out  # removed so that batches of reports of any length collate
        if torch.equal(out["prompt_ids"], null):
            nulls += 1
            assert out["report"] == ""
        else:
            assert torch.equal(out["prompt_ids"], tokenize(tokenizer, [out["report"]], warn_truncation=False)[0])
            lengths.add(out["report"].count("."))
    sigma = math.sqrt(0.1 * 0.9 / draws)
    assert abs(nulls / draws - 0.1) < 3 * sigma
    assert lengths == {1, 2, 3, 4, 5}
    if style == "empty_prompt":  # the sampler's "no text" prompt is the tokenised empty string
        assert torch.equal(null, tokenize(tokenizer, [""])[0])


def test_text_chain_is_deterministic_under_set_determinism(tokenizer):
    parser = stage_parser("diffusion", null_prompt_prob=0.3)
    item = {"sentences": SENTENCES}

    def draws(seed):
        set_determinism(seed=seed)  # before the chain is built: Compose seeds its transforms from it
        chain = _chain(parser, "text_transforms")
        return [chain(dict(item))["report"] for _ in range(40)]

    try:
        assert draws(7) == draws(7)
        assert draws(7) != draws(8)
    finally:
        set_determinism(seed=None)


def _marker_image(path, height=96, width=80):
    """Portrait image, dark, with a bright square in its top-left quadrant (inside the 64 px centre crop)."""
    pixels = np.full((height, width), 40, dtype=np.uint8)
    pixels[20:30, 10:20] = 250
    Image.fromarray(pixels, mode="L").save(path)
    return pixels


def _quadrant_means(image: torch.Tensor) -> dict[str, float]:
    half_h, half_w = image.shape[-2] // 2, image.shape[-1] // 2
    return {
        "top_left": float(image[0, :half_h, :half_w].mean()),
        "top_right": float(image[0, :half_h, half_w:].mean()),
        "bottom_left": float(image[0, half_h:, :half_w].mean()),
        "bottom_right": float(image[0, half_h:, half_w:].mean()),
    }


def test_orientation_is_kept_through_load_transforms_and_saving(tmp_path):
    path = tmp_path / "marker.png"
    pixels = _marker_image(path)
    load = _chain(stage_parser("diffusion"), "load_image_transforms")  # image_size 64
    image = load({"image": str(path)})["image"]
    assert image.shape == (1, 64, 64) and image.dtype == torch.float32
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    # centre crop of the 96 x 80 image: rows 16..80, columns 8..72; the square is at rows 4..14, columns 2..12
    expected = torch.from_numpy(pixels[16:80, 8:72].astype(np.float32) / 255.0)
    assert torch.allclose(image[0].as_tensor(), expected, atol=1e-6)
    assert max(_quadrant_means(image), key=_quadrant_means(image).get) == "top_left"

    # save the way the sampler's writer does ((1, H, W) in [0, 1], row 0 at the top) and load again
    saved = tmp_path / "saved.png"
    Image.fromarray((image[0].numpy() * 255).round().astype("uint8")).save(saved)
    again = load({"image": str(saved)})["image"]
    assert torch.allclose(again.as_tensor(), image.as_tensor(), atol=1 / 255)

    # the check can fail: MONAI's default PIL reading transposes the picture
    transposed = LoadImaged("image", reader="PILReader", ensure_channel_first=True)({"image": str(path)})["image"]
    assert transposed.shape == (1, 80, 96)


def test_augmentations_match_the_recipe(tmp_path):
    parser = stage_parser("diffusion")
    autoencoder = stage_parser("autoencoder").get_parsed_content("autoencoder_augmentations")
    diffusion = parser.get_parsed_content("diffusion_augmentations")
    assert not any(isinstance(t, RandFlipd) for t in diffusion)  # left/right is in the text
    (flip,) = [t for t in autoencoder if isinstance(t, RandFlipd)]
    (affine_ae,) = [t for t in autoencoder if isinstance(t, RandAffined)]
    (affine_dm,) = [t for t in diffusion if isinstance(t, RandAffined)]
    assert (flip.prob, affine_ae.prob, affine_dm.prob) == (0.5, 0.5, 0.1)
    for affine in (affine_ae, affine_dm):  # ±5°, ±2 px, ±1 %: draw the parameters and look at their ranges
        grid = affine.rand_affine.rand_affine_grid
        grid.set_random_state(0)
        draws = []
        for _ in range(300):
            grid.randomize()
            draws.append([*grid.rotate_params, *grid.translate_params, *grid.scale_params])
        draws = np.array(draws)
        assert np.abs(draws[:, 0]).max() == pytest.approx(math.radians(5), rel=0.05)
        assert np.abs(draws[:, 0]).max() <= math.radians(5)
        assert 1.9 < np.abs(draws[:, 1:3]).max() <= 2.0
        assert 0.0095 < np.abs(draws[:, 3:5] - 1.0).max() <= 0.01

    # the flip is horizontal: the top-left marker goes to the top right
    path = tmp_path / "marker.png"
    _marker_image(path)
    image = _chain(parser, "load_image_transforms")({"image": str(path)})
    flip.set_random_state(0)
    flip.prob = 1.0
    flipped = flip(image)["image"]
    assert torch.equal(flipped[0].as_tensor(), image["image"][0].as_tensor().flip(-1))
    assert max(_quadrant_means(flipped), key=_quadrant_means(flipped).get) == "top_right"


def test_training_chain_batches_prepared_data(prepared_synthetic_dir):
    parser = stage_parser("diffusion", dataset_dir=str(prepared_synthetic_dir))
    datalist = load_decathlon_datalist(
        parser.get_parsed_content("datalist_file"), data_list_key="training", base_dir=str(prepared_synthetic_dir)
    )
    chain = _chain(parser, "load_image_transforms", "diffusion_augmentations", "text_transforms")
    batch = next(iter(DataLoader(Dataset(datalist, chain), batch_size=4, num_workers=0)))
    assert batch["image"].shape == (4, 1, 64, 64)
    assert 0.0 <= float(batch["image"].min()) and float(batch["image"].max()) <= 1.0
    assert batch["prompt_ids"].shape == (4, 77) and batch["prompt_ids"].dtype == torch.long
    assert len(batch["report"]) == 4 and all(isinstance(report, str) for report in batch["report"])
