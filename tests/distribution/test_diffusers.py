"""The model as a diffusers folder: export, load with diffusers, sample the bundle's images, import back.

Tiny networks (configs/tiny) with random weights; the folder is loaded as a diffusers user loads it
(``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)``), its remote-code module cache kept in
a temporary folder.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers.bundle import INFERENCE_CONFIGS, TINY_OVERLAYS, run_inference, tiny_parser, tiny_run_settings
from scripts.common.errors import CxrLdmError
from scripts.distribution.diffusers_parity import pipeline_images
from scripts.distribution.export_diffusers import export, load_pipeline
from scripts.distribution.import_diffusers import ImportDiffusersError, import_pipeline

TINY_CONFIGS = [*INFERENCE_CONFIGS, *TINY_OVERLAYS]
PROMPTS = ["Big right-sided pleural effusion", "No acute cardiopulmonary process"]
#: Float rounding through a guided sampler: the UNets differ by ~1e-6 (other attention and summation order),
#: guidance 7 multiplies that by ~13 at every step. A different seed moves pixels by ~0.3.
IMAGE_TOLERANCE = 2e-4


@pytest.fixture(scope="module", autouse=True)
def modules_cache(tmp_path_factory):
    """diffusers copies a folder's remote code into its modules cache: a temporary one here."""
    import diffusers.utils.dynamic_modules_utils as dynamic

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path_factory.mktemp("hf_modules")))
        yield


def settings_of(model_dir: Path, **overrides) -> dict:
    """Config overrides that load the tiny weights of ``model_dir`` (no output folder: the commands have theirs)."""
    settings = tiny_run_settings(model_dir, Path("unused"), **overrides)
    settings.pop("output_dir")
    return settings


@pytest.fixture(scope="module")
def exported(tiny_model_dir, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("diffusers") / "cxr_ldm"
    export(folder, config_file=TINY_CONFIGS, check_steps=2, **settings_of(tiny_model_dir))
    return folder


@pytest.fixture(scope="module")
def pipeline(exported):
    return load_pipeline(exported)


def _bundle_run(model_dir: Path, output_dir: Path, **overrides) -> list[tuple[str, int, Path]]:
    """(prompt, seed, image file) of a tiny inference run with ``pt`` output, in manifest order."""
    run_inference(model_dir, output_dir, output_format="pt", **overrides)
    with open(output_dir / "manifest.csv", newline="", encoding="utf-8") as f:
        return [(row["prompt"], int(row["seed"]), output_dir / row["file"]) for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "scheduler_name, steps, scheduler_class",
    [
        ("unipc_karras", 4, "UniPCMultistepScheduler"),
        ("ddim", 5, "DDIMScheduler"),
        ("dpmpp_2m", 4, "DPMSolverMultistepScheduler"),
        ("dpmpp_2m_karras", 4, "DPMSolverMultistepScheduler"),
    ],
)
def test_the_pipeline_makes_the_bundles_images(
    scheduler_name, steps, scheduler_class, pipeline, tiny_model_dir, prompts_file, tmp_path
):
    """A prompts file of two prompts in one batch through the bundle's workflow, then through diffusers with one
    CPU generator per image: the same images, for each of the bundle's exact samplers."""
    from scripts.distribution.diffusers_parity import use_bundle_scheduler

    jobs = _bundle_run(
        tiny_model_dir,
        tmp_path / "bundle",
        prompts_file=str(prompts_file),
        scheduler_name=scheduler_name,
        num_inference_steps=steps,
        batch_size=2,
        seed=5,
    )
    # a prompts file's row k starts at seed + 1000·k
    assert sorted((prompt, seed) for prompt, seed, _ in jobs) == [(PROMPTS[0], 5), (PROMPTS[1], 1005)]
    ours = torch.stack([torch.load(path, weights_only=True) for _, _, path in jobs])
    use_bundle_scheduler(pipeline, scheduler_name)
    assert type(pipeline.scheduler).__name__ == scheduler_class
    prompts, seeds = [p for p, _, _ in jobs], [s for _, s, _ in jobs]
    theirs = pipeline_images(pipeline, prompts, seeds, steps, 7.0)
    assert theirs.shape == ours.shape == (2, 1, 64, 64)
    assert (theirs - ours).abs().max() < IMAGE_TOLERANCE
    assert (ours[0] - ours[1]).abs().max() > 100 * IMAGE_TOLERANCE  # the tolerance tells images apart


def test_the_bos_eos_null_prompt_goes_in_as_negative_prompt_embeds(pipeline, tiny_model_dir, tmp_path):
    """The bundle's ``null_prompt: bos_eos`` cannot be typed: its embedding, as the model card says, gives the bundle's
    image, and the pipeline's own empty negative prompt another one."""
    from scripts.distribution.diffusers_parity import use_bundle_scheduler

    [(_, _, path)] = _bundle_run(
        tiny_model_dir, tmp_path / "bos_eos", prompt=PROMPTS[0], seed=4, num_inference_steps=3, null_prompt="bos_eos"
    )
    ours = torch.load(path, weights_only=True)
    use_bundle_scheduler(pipeline, "unipc_karras")
    with torch.inference_mode():
        embeds = pipeline.text_encoder(torch.tensor([[49406] + [49407] * 76])).last_hidden_state  # the card's line
    generator = [torch.Generator().manual_seed(4)]
    common = {"num_inference_steps": 3, "guidance_scale": 7.0, "output_type": "pt"}
    theirs = pipeline(PROMPTS[0], negative_prompt_embeds=embeds, generator=generator, **common).images[0]
    assert (theirs - ours).abs().max() < IMAGE_TOLERANCE
    assert (
        pipeline_images(pipeline, [PROMPTS[0]], [4], 3, 7.0, null_prompt="bos_eos")[0] - ours
    ).abs().max() < IMAGE_TOLERANCE
    empty = pipeline_images(pipeline, [PROMPTS[0]], [4], 3, 7.0)[0]
    assert (empty - ours).abs().max() > 100 * IMAGE_TOLERANCE


def test_pil_output_is_the_bundles_8_bit_image(pipeline, tiny_model_dir, prompts_file, tmp_path):
    """``pipe(...).images`` as PIL: one-channel 8-bit images, equal to the bundle's PNGs to one grey level."""
    run_inference(tiny_model_dir, tmp_path / "png", prompt=PROMPTS[0], seed=9, num_inference_steps=4)
    png = np.asarray(Image.open(next((tmp_path / "png").glob("*.png"))))
    from scripts.distribution.diffusers_parity import use_bundle_scheduler

    use_bundle_scheduler(pipeline, "unipc_karras")  # the folder's own sampler (another test may have changed it)
    generator = [torch.Generator().manual_seed(9)]
    image = pipeline(PROMPTS[0], num_inference_steps=4, guidance_scale=7.0, generator=generator).images[0]
    assert image.mode == "L" and image.size == (64, 64)
    assert np.abs(np.asarray(image).astype(int) - png.astype(int)).max() <= 1


def test_export_writes_a_model_card_with_the_parity_it_measured(exported):
    card = (exported / "README.md").read_text(encoding="utf-8")
    front_matter = card.split("---\n")[1]
    assert "library_name: diffusers" in front_matter and "license: other" in front_matter
    assert "physionet" in front_matter and "not for diagnosis" in card and "MIMIC-CXR" in card
    assert (exported / "data_license.txt").read_text(encoding="utf-8").startswith("Data licence")
    measured = float(card.split("the bundle's is ")[1].split(" ")[0])
    assert 0 <= measured < IMAGE_TOLERANCE
    index = json.loads((exported / "model_index.json").read_text(encoding="utf-8"))
    assert (
        index["vae"] == ["cxr_autoencoder", "CxrAutoencoderKL"] and (exported / "vae" / "cxr_autoencoder.py").is_file()
    )
    assert {"vocab.json", "merges.txt"} <= {p.name for p in (exported / "tokenizer").iterdir()}


def test_the_folder_needs_trust_remote_code(exported):
    from diffusers import DiffusionPipeline

    with pytest.raises(ValueError, match="trust_remote_code=True"):
        DiffusionPipeline.from_pretrained(str(exported))


def _state_dicts(folder: Path) -> dict:
    return {name: torch.load(folder / name, weights_only=True) for name in ("model.pt", "autoencoder.pt")}


def _assert_bit_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


def test_round_trip_is_bit_exact(exported, tiny_model_dir, tmp_path):
    summary = import_pipeline(exported, tmp_path / "back", config_file=TINY_CONFIGS)
    back = _state_dicts(tmp_path / "back")
    for name, state in _state_dicts(tiny_model_dir).items():
        _assert_bit_equal(back[name], state)
    from transformers import CLIPTextModel

    encoders = [
        CLIPTextModel.from_pretrained(p) for p in (tiny_model_dir / "text_encoder", tmp_path / "back" / "text_encoder")
    ]
    _assert_bit_equal(*(e.state_dict() for e in encoders))
    assert summary["options"] == {
        "load_old": False,
        "autoencoder_path": str(tmp_path / "back" / "autoencoder.pt"),
        "diffusion_path": str(tmp_path / "back" / "model.pt"),
        "text_encoder_source": str(tmp_path / "back" / "text_encoder"),
    }


def test_released_layout_exports_and_comes_back_as_its_converted_weights(tiny_model_dir, tmp_path):
    """Weights in the GenerativeModels layout (``load_old``) export too; the import gives the same tensors as
    the bundle's own conversion, in this bundle's layout."""
    nets = pytest.importorskip("generative.networks.nets")
    from scripts.networks.weights import load_weights

    parser = tiny_parser()
    old_dir = tmp_path / "old"
    old_dir.mkdir()
    torch.manual_seed(1)
    for key, name, cls in (
        ("autoencoder_def", "autoencoder.pt", nets.AutoencoderKL),
        ("network_def", "model.pt", nets.DiffusionModelUNet),
    ):
        config = {k: parser.get_parsed_content(f"{key}#{k}") for k in parser[key] if not k.startswith("_")}
        config["num_channels"] = config.pop("channels")
        config.pop("use_flash_attention", None)
        torch.save(cls(**config).state_dict(), old_dir / name)
    settings = settings_of(old_dir, load_old=True, text_encoder_source=str(tiny_model_dir / "text_encoder"))
    export(tmp_path / "old_export", config_file=TINY_CONFIGS, check_steps=0, **settings)
    import_pipeline(tmp_path / "old_export", tmp_path / "back", config_file=TINY_CONFIGS)
    back = _state_dicts(tmp_path / "back")
    for key, name in (("autoencoder_def", "autoencoder.pt"), ("network_def", "model.pt")):
        converted = load_weights(parser.get_parsed_content(key), old_dir / name, load_old=True)
        _assert_bit_equal(back[name], converted.state_dict())


def _fine_tune(exported: Path, destination: Path) -> None:
    """A few training steps of the UNet as diffusers' text-to-image script takes them (v-prediction loss on
    noised latents of the folder's VAE), then the pipeline saved with the new UNet."""
    from diffusers import DDPMScheduler, DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(str(exported), trust_remote_code=True)
    noise_scheduler = DDPMScheduler.from_pretrained(str(exported), subfolder="scheduler")
    unet = pipe.unet.train()
    optimiser = torch.optim.AdamW(unet.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(2, 1, 64, 64, generator=generator) * 2 - 1
    with torch.no_grad():
        latents = pipe.vae.encode(images).latent_dist.sample(generator) * pipe.vae.config.scaling_factor
        context = pipe.text_encoder(pipe.tokenizer(PROMPTS, padding="max_length", return_tensors="pt").input_ids)[0]
    for _ in range(3):
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.randint(0, 1000, (2,), generator=generator)
        target = noise_scheduler.get_velocity(latents, noise, timesteps)
        prediction = unet(noise_scheduler.add_noise(latents, noise, timesteps), timesteps, context).sample
        loss = torch.nn.functional.mse_loss(prediction, target)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    pipe.unet = unet.eval()
    pipe.save_pretrained(str(destination))


def test_a_fine_tuned_unet_imported_gives_its_images_in_the_bundle(exported, tiny_model_dir, tmp_path):
    _fine_tune(exported, tmp_path / "fine_tuned")
    fine_tuned = load_pipeline(tmp_path / "fine_tuned")  # the re-saved folder still loads (the VAE wrote its file)
    summary = import_pipeline(tmp_path / "fine_tuned", tmp_path / "imported", config_file=TINY_CONFIGS)
    imported, original = _state_dicts(tmp_path / "imported"), _state_dicts(tiny_model_dir)
    _assert_bit_equal(imported["autoencoder.pt"], original["autoencoder.pt"])
    assert any(not torch.equal(imported["model.pt"][k], v) for k, v in original["model.pt"].items())

    # The bundle's workflow on the imported weights makes the fine-tuned pipeline's image, not the original's.
    run = {"prompt": PROMPTS[0], "seed": 3, "num_inference_steps": 4}
    options = {k: v for k, v in summary["options"].items() if k != "load_old"}
    [(_, _, path)] = _bundle_run(tiny_model_dir, tmp_path / "bundle", **run, **options)
    [(_, _, before)] = _bundle_run(tiny_model_dir, tmp_path / "before", **run)
    ours, before = torch.load(path, weights_only=True), torch.load(before, weights_only=True)
    theirs = pipeline_images(fine_tuned, [PROMPTS[0]], [3], 4, 7.0)[0]
    assert (theirs - ours).abs().max() < IMAGE_TOLERANCE
    assert (before - ours).abs().max() > 100 * IMAGE_TOLERANCE


def test_encoding_an_image_gives_the_bundles_latents_border_included(pipeline, tiny_model_dir, tmp_path):
    """An image prepared by diffusers' image processor and encoded by the folder's VAE gives the posterior mean
    the bundle's editing starts from, at the image border too (the [0, 1] mapping is applied before the
    zero-padded ``conv_in``; folded into its weights, the border would be padded with mid-grey)."""
    from helpers.editing import EDIT_CONFIG, write_image
    from scripts.editing.inputs import load_edit_inputs

    path = write_image(tmp_path / "chest.png", size=(64, 64))
    parser = tiny_parser(EDIT_CONFIG, **tiny_run_settings(tiny_model_dir, "unused", image=str(path)))
    editor = parser.get_parsed_content("inferer")
    prepared = load_edit_inputs({"source_image": str(path)}, 64)["input_image"]
    with torch.inference_mode():
        ours = editor.encode_images(prepared[None])
        pixels = pipeline.image_processor.preprocess(Image.open(path))
        posterior = pipeline.vae.encode(pixels).latent_dist
        theirs = posterior.mean * pipeline.vae.config.scaling_factor
    assert pixels.shape == (1, 1, 64, 64)
    border = torch.ones_like(ours, dtype=torch.bool)
    border[..., 1:-1, 1:-1] = False
    # float rounding: the [-1, 1] round trip moves pixels by ~1e-8, the stacked 1×1 convolutions sum in another order
    assert (theirs - ours)[border].abs().max() < 1e-5 and (theirs - ours).abs().max() < 1e-5
    assert ours.abs().max() > 0.1

    # The folded alternative: conv_in on [-1, 1] with weights W/2 and bias b + ΣW/2 equals the mapping inside the
    # image and differs where the convolution reads its zero padding.
    conv = pipeline.vae.encoder.conv_in
    with torch.inference_mode():
        folded = torch.nn.functional.conv2d(
            pixels, conv.weight / 2, conv.bias + conv.weight.sum(dim=(1, 2, 3)) / 2, padding=1
        )
        exact = conv(pixels)
    difference = (folded - exact).abs()
    assert difference[..., 1:-1, 1:-1].max() < 1e-5 and difference[..., 0, :].max() > 1e-3


def test_ddim_step_counts_where_diffusers_rounds_otherwise():
    """docs/diffusers.md: diffusers' DDIM picks the bundle's timesteps at 20, 50 and 200 steps, not at 15."""
    from monai.networks.schedulers import DDIMScheduler

    from scripts.distribution.diffusers_configs import diffusers_scheduler, scheduler_config

    schedule = tiny_parser().get_parsed_content("noise_schedule")
    ours = DDIMScheduler(clip_sample=False, **schedule)
    theirs = diffusers_scheduler("ddim", scheduler_config(schedule))
    differing = []
    for steps in range(1, 1001):
        ours.set_timesteps(steps)
        theirs.set_timesteps(steps)
        if not torch.equal(ours.timesteps, theirs.timesteps):
            differing.append(steps)
    assert len(differing) == 138 and differing[:5] == [1, 15, 27, 29, 31]
    assert not {20, 50, 100, 200} & set(differing)


def test_imports_refuse_what_the_bundle_cannot_hold(exported, tmp_path):
    import shutil

    lora = tmp_path / "lora"
    lora.mkdir()
    (lora / "pytorch_lora_weights.safetensors").write_bytes(b"")
    with pytest.raises(ImportDiffusersError, match="LoRA weights only.*fuse_lora"):
        import_pipeline(lora, tmp_path / "out", config_file=TINY_CONFIGS)

    changed = tmp_path / "changed"
    shutil.copytree(exported, changed)
    from safetensors.torch import load_file, save_file

    weights = changed / "vae" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    state["decoder.up_blocks.0.resnets.2.conv2.weight"] += 0.01
    save_file(state, weights)
    with pytest.raises(CxrLdmError, match=r"up_blocks\.0\.resnets\.2\.conv2\.weight is not zero"):
        import_pipeline(changed, tmp_path / "out", config_file=TINY_CONFIGS)
    assert not (tmp_path / "out").exists()

    config_path = changed / "scheduler" / "scheduler_config.json"
    config = json.loads(config_path.read_text())
    config["prediction_type"] = "epsilon"
    config_path.write_text(json.dumps(config))
    with pytest.raises(ImportDiffusersError, match="predicts 'epsilon'"):
        import_pipeline(changed, tmp_path / "out", config_file=TINY_CONFIGS)

    with pytest.raises(ImportDiffusersError, match="already exists"):
        import_pipeline(exported, exported, config_file=TINY_CONFIGS)


def test_commands_end_with_a_one_line_error(exported, tiny_model_dir, tmp_path):
    from scripts.distribution import export_diffusers, import_diffusers

    with pytest.raises(SystemExit, match=r"^ExportError: '.*cxr_ldm' already exists: choose a new --output_dir"):
        export_diffusers.main(str(exported), config_file=TINY_CONFIGS, overrides=settings_of(tiny_model_dir))
    with pytest.raises(SystemExit, match=r"^ImportDiffusersError: '.*' is not a diffusers pipeline folder"):
        import_diffusers.main(str(tmp_path), str(tmp_path / "out"), config_file=TINY_CONFIGS)
    with pytest.raises(SystemExit, match=r"^CheckpointError: Weights file '.*absent\.pt' not found"):
        export_diffusers.main(
            str(tmp_path / "new"),
            diffusion_path=str(tmp_path / "absent.pt"),
            config_file=TINY_CONFIGS,
            overrides=settings_of(tiny_model_dir),
        )
    assert not (tmp_path / "new").exists()


def test_a_vae_saved_as_plain_autoencoderkl_is_imported_with_a_note(exported, tiny_model_dir, tmp_path):
    """What diffusers' training scripts save when they load the VAE as AutoencoderKL: the same tensors."""
    import shutil

    folder = tmp_path / "plain_vae"
    shutil.copytree(exported, folder)
    config_path = folder / "vae" / "config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "_class_name": "AutoencoderKL"}))
    summary = import_pipeline(folder, tmp_path / "back", config_file=TINY_CONFIGS)
    assert any("saved as diffusers' AutoencoderKL" in note for note in summary["notes"])
    _assert_bit_equal(_state_dicts(tmp_path / "back")["autoencoder.pt"], _state_dicts(tiny_model_dir)["autoencoder.pt"])
    config_path.write_text(
        json.dumps({**json.loads(config_path.read_text()), "_class_name": "AsymmetricAutoencoderKL"})
    )
    with pytest.raises(ImportDiffusersError, match="VAE class 'AsymmetricAutoencoderKL'"):
        import_pipeline(folder, tmp_path / "again", config_file=TINY_CONFIGS)
