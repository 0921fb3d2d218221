"""``python -m scripts.distribution.export_diffusers``: the model as a diffusers ``StableDiffusionPipeline`` folder.

    python -m scripts.distribution.export_diffusers --output_dir models/diffusers
    python -m scripts.distribution.export_diffusers --output_dir models/diffusers_trained --load_old False \\
        --autoencoder_path models/train_autoencoder/autoencoder.pt --diffusion_path models/train_diffusion/model.pt

The options ``--load_old``, ``--autoencoder_path``, ``--diffusion_path``, ``--text_encoder_source``,
``--null_prompt``, ``--scale_factor``, ``--device`` (and ``--prompt``, ``--seed`` of the check) are the inference
config's keys, as with ``python -m monai.bundle run``; ``--overrides "{...}"`` sets any other key.
The folder holds the UNet (``UNet2DConditionModel``, the same tensors renamed), the autoencoder
(``CxrAutoencoderKL``, whose source ships in ``vae/cxr_autoencoder.py``), the text encoder and tokenizer, the
bundle's default sampler (UniPC on Karras noise levels) over the bundle's noise schedule, and a model card.
Load it with ``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)``.

Unless ``--check_steps 0``, the export samples the card's check image through the bundle and through the
saved folder (float32, ``check_steps`` steps) and writes the difference into the model card. The folder
appears under its name only when complete.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from scripts.common.configs import INFERENCE_CONFIGS, load_parser
from scripts.common.errors import CxrLdmError, one_line, root_cause
from scripts.common.files import atomic_path
from scripts.distribution import diffusers_autoencoder
from scripts.distribution.diffusers_card import model_card
from scripts.distribution.diffusers_configs import (
    DEFAULT_SCHEDULER,
    diffusers_scheduler,
    network_arguments,
    scheduler_config,
    unet_config,
    vae_config,
)
from scripts.distribution.diffusers_keys import autoencoder_to_diffusers, unet_to_diffusers
from scripts.distribution.diffusers_parity import compare_routes
from scripts.sampling.jobs import coerce_text

#: The custom VAE's module inside the folder: ``vae/<name>.py``, named in ``model_index.json``.
VAE_MODULE = diffusers_autoencoder.MODULE_NAME
VAE_CLASS = diffusers_autoencoder.CxrAutoencoderKL.__name__
TOKENIZER_FILES = ("vocab.json", "merges.txt")
#: The check compares exact float32 routes: no autocast, compile or memory-format switches.
CHECK_SETTINGS = {"autocast_dtype": "float32", "compile": False, "channels_last": False, "progress": False}


class ExportError(CxrLdmError, RuntimeError):
    """The export cannot be written."""


def diffusers_unet(parser, network: torch.nn.Module):
    """``UNet2DConditionModel`` holding the weights of the bundle's UNet ``network`` (``network_def``)."""
    from diffusers import UNet2DConditionModel

    latent_size = int(parser.get_parsed_content("latent_shape")[-1])
    unet = UNet2DConditionModel(**unet_config(network_arguments(parser, "network_def"), latent_size))
    unet.load_state_dict(unet_to_diffusers(network.state_dict(), list(unet.state_dict())), strict=True)
    return unet.eval()


def diffusers_vae(parser, autoencoder: torch.nn.Module):
    """``CxrAutoencoderKL`` holding the weights of the bundle's ``autoencoder`` (``autoencoder_def``)."""
    arguments = network_arguments(parser, "autoencoder_def")
    config = vae_config(arguments, parser.get_parsed_content("image_size"), parser.get_parsed_content("scale_factor"))
    vae = diffusers_autoencoder.CxrAutoencoderKL(**config)
    shapes = {key: value.shape for key, value in vae.state_dict().items()}
    blocks = [config["layers_per_block"]] * len(config["block_out_channels"])
    state = autoencoder_to_diffusers(autoencoder.state_dict(), shapes, config["block_out_channels"], blocks)
    vae.load_state_dict(state, strict=True)
    return vae.eval()


def build_pipeline(parser):
    """A ``StableDiffusionPipeline`` (CPU) of the networks the config ``parser`` loads."""
    from diffusers import StableDiffusionPipeline

    noise_schedule = parser.get_parsed_content("noise_schedule")
    pipeline = StableDiffusionPipeline(
        vae=diffusers_vae(parser, parser.get_parsed_content("autoencoder")),
        text_encoder=parser.get_parsed_content("text_encoder"),
        tokenizer=parser.get_parsed_content("tokenizer"),
        unet=diffusers_unet(parser, parser.get_parsed_content("network")),
        scheduler=diffusers_scheduler(DEFAULT_SCHEDULER, scheduler_config(noise_schedule)),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return pipeline.to("cpu")


def save_pipeline(pipeline, folder: str, tokenizer_dir: str) -> None:
    """Save ``pipeline`` to ``folder`` (safetensors), the VAE's source in ``vae/`` and named in ``model_index.json``.

    The tokenizer's own files (``tokenizer_dir``: vocab.json, merges.txt) are copied beside the
    ``tokenizer.json`` transformers writes, so that older transformers, whose ``CLIPTokenizer`` reads only
    them, load the folder too.
    """
    pipeline.save_pretrained(folder, safe_serialization=True)  # the VAE writes vae/cxr_autoencoder.py itself
    for name in TOKENIZER_FILES:
        shutil.copyfile(os.path.join(tokenizer_dir, name), os.path.join(folder, "tokenizer", name))
    with open(os.path.join(folder, "model_index.json"), encoding="utf-8") as f:
        index = json.load(f)
    if index["vae"] != [VAE_MODULE, VAE_CLASS] or not os.path.isfile(os.path.join(folder, "vae", f"{VAE_MODULE}.py")):
        raise ExportError(f"diffusers saved the VAE as {index['vae']}, not {[VAE_MODULE, VAE_CLASS]}: update cxr-ldm.")


def load_pipeline(folder: str, device: str | torch.device = "cpu"):
    """The exported pipeline in ``folder`` as a diffusers user loads it (``trust_remote_code=True``)."""
    from diffusers import DiffusionPipeline

    pipeline = DiffusionPipeline.from_pretrained(os.fspath(folder), trust_remote_code=True)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline.to(device)


def origin(parser) -> dict:
    """What the card says of where the weights come from (layout, fingerprints, bundle version)."""
    identity = parser.get_parsed_content("model_identity")
    return {
        "load_old": bool(parser.get_parsed_content("load_old")),
        "model_version": identity.get("model_version"),
        "autoencoder_weights": identity.get("autoencoder_weights"),
        "diffusion_weights": identity.get("diffusion_weights"),
        "text_encoder": identity.get("text_encoder"),
        "null_prompt": parser.get_parsed_content("null_prompt"),
        "scale_factor": parser.get_parsed_content("scale_factor"),
        "image_size": parser.get_parsed_content("image_size"),
    }


def check_export(parser, folder: str) -> dict:
    """Sample the config's ``prompt`` and ``seed`` through the bundle and the saved ``folder``; the comparison."""
    sampler = parser.get_parsed_content("sampler")
    network = parser.get_parsed_content("network")
    device = next(network.parameters()).device
    pipeline = load_pipeline(folder, device)
    prompt, seed = coerce_text(parser.get_parsed_content("prompt")), int(parser.get_parsed_content("seed"))
    result = compare_routes(sampler, network, pipeline, DEFAULT_SCHEDULER, [prompt], [seed])
    return {
        **result,
        "prompt": prompt,
        "seed": seed,
        "num_inference_steps": sampler.num_inference_steps,
        "guidance_scale": sampler.guidance_scale,
        "scheduler": DEFAULT_SCHEDULER,
        "device": str(device),
    }


def export(output_dir: str, config_file=None, check_steps: int = 4, **overrides) -> str:
    """Write the bundle's model (config ``config_file``, default the inference chain, with ``overrides``) as a
    diffusers folder ``output_dir``; return its path.

    Args:
        output_dir: the folder to create (it must not exist, or be empty).
        config_file: config files merged in order (default: the inference configs).
        check_steps: steps of the parity check written into the model card (0: no check).
        overrides: config keys, as on the ``monai.bundle run`` command line (``load_old``, ``diffusion_path``...).
    """
    output_dir = os.fspath(output_dir)
    if os.path.exists(output_dir) and (not os.path.isdir(output_dir) or os.listdir(output_dir)):
        raise ExportError(f"'{output_dir}' already exists: choose a new --output_dir or delete it first.")
    if os.path.isdir(output_dir):
        os.rmdir(output_dir)
    files = [config_file] if isinstance(config_file, str) else list(config_file or INFERENCE_CONFIGS)
    check = {"num_inference_steps": int(check_steps)} if int(check_steps) > 0 else {}
    parser = load_parser(files, {**overrides, **CHECK_SETTINGS, **check})
    with atomic_path(output_dir) as temporary:
        save_pipeline(build_pipeline(parser), temporary, parser.get_parsed_content("tokenizer_path"))
        parity = check_export(parser, temporary) if int(check_steps) > 0 else None
        licence = Path(parser.get_parsed_content("bundle_root")) / "docs" / "data_license.txt"
        if licence.is_file():
            shutil.copyfile(licence, os.path.join(temporary, "data_license.txt"))
        with open(os.path.join(temporary, "README.md"), "w", encoding="utf-8") as f:
            f.write(model_card(origin(parser), parity))
    if parity is not None:
        print(
            f"Parity with the bundle ({parity['num_inference_steps']} steps, {DEFAULT_SCHEDULER}, float32): "
            f"max |difference| {parity['max_abs_difference']:.2e} on [0, 1] pixels, "
            f"{parity['max_grey_levels']} 8-bit grey levels."
        )
    print(
        f"diffusers folder written to {output_dir}: "
        f"DiffusionPipeline.from_pretrained('{output_dir}', trust_remote_code=True)"
    )
    return output_dir


def main(
    output_dir: str,
    load_old: bool | None = None,
    autoencoder_path: str | None = None,
    diffusion_path: str | None = None,
    text_encoder_source: str | None = None,
    null_prompt: str | None = None,
    scale_factor: float | None = None,
    prompt: str | None = None,
    seed: int | None = None,
    device: str | None = None,
    check_steps: int = 4,
    config_file=None,
    overrides: dict | None = None,
) -> None:
    """Write the model as a diffusers folder ``output_dir``; bad input ends with its one-line message.

    Args:
        output_dir: the folder to create.
        load_old, autoencoder_path, diffusion_path, text_encoder_source, null_prompt, scale_factor, device: the
            inference config's keys of the same names (unset: the config's values).
        prompt, seed: the model card's check image (unset: the config's).
        check_steps: steps of that check (0: none).
        config_file: config files merged in order (default: the inference configs).
        overrides: any other config keys, e.g. ``"{'network_def#channels': [128, 256, 384]}"``.
    """
    named = {
        "load_old": load_old,
        "autoencoder_path": autoencoder_path,
        "diffusion_path": diffusion_path,
        "text_encoder_source": text_encoder_source,
        "null_prompt": null_prompt,
        "scale_factor": scale_factor,
        "prompt": prompt,
        "seed": seed,
        "device": device,
    }
    settings = {**(overrides or {}), **{key: value for key, value in named.items() if value is not None}}
    try:
        export(output_dir, config_file=config_file, check_steps=check_steps, **settings)
    except Exception as error:  # noqa: BLE001 - config errors arrive wrapped by MONAI's parser
        cause = root_cause(error)
        if not isinstance(cause, (CxrLdmError, FileNotFoundError)):
            raise
        raise SystemExit(one_line(cause)) from None


if __name__ == "__main__":
    import fire

    fire.Fire(main)
