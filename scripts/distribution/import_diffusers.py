"""``python -m scripts.distribution.import_diffusers``: a diffusers folder back into this bundle's weights.

    python -m scripts.distribution.import_diffusers --pipeline_dir finetuned --output_dir models/finetuned

``pipeline_dir`` is a folder written by ``scripts.distribution.export_diffusers``, or one made from it by
diffusers' own training scripts (a full fine-tune, or LoRA weights merged into the UNet with ``fuse_lora``
and saved with ``save_pretrained``). ``output_dir`` receives ``model.pt`` and ``autoencoder.pt`` in this
bundle's layout (``load_old False``) and the text encoder (``text_encoder/``); the command prints the
``monai.bundle run`` options that sample with them. Evaluation, editing, DICOM output and every other
workflow of the bundle then run on the imported weights.

Nothing in the folder is executed: its VAE is read with this bundle's own ``CxrAutoencoderKL``. The folder
must describe the bundle's networks (the configs' ``network_def`` / ``autoencoder_def``; other settings
through ``--overrides "{...}"``), its noise schedule and tokenizer; what differs
is named in a one-line error. Tensors are imported as float32 (a folder saved in float16 gives its float16 values).
"""

from __future__ import annotations

import json
import os

import torch

from scripts.common.configs import INFERENCE_CONFIGS, load_parser
from scripts.common.errors import CxrLdmError, one_line, root_cause
from scripts.common.files import atomic_path
from scripts.distribution.diffusers_autoencoder import CxrAutoencoderKL
from scripts.distribution.diffusers_configs import folder_betas, monai_betas, network_arguments, unet_config, vae_config
from scripts.distribution.diffusers_keys import autoencoder_from_diffusers, unet_from_diffusers

#: What to do with LoRA weights that are not merged yet.
MERGE_LORA_HINT = (
    "merge them first: load the exported folder with DiffusionPipeline.from_pretrained(..., "
    "trust_remote_code=True), then pipe.load_lora_weights(lora_dir), pipe.fuse_lora(), pipe.unload_lora_weights(), "
    "pipe.save_pretrained(merged_dir), and import merged_dir"
)
#: Configuration keys that do not change the networks' tensors or computation.
IGNORED_CONFIG_KEYS = {"sample_size", "scaling_factor", "force_upcast"}


class ImportDiffusersError(CxrLdmError, ValueError):
    """A diffusers folder does not hold this bundle's model."""


def _read_json(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def check_folder(pipeline_dir: str, notes: list[str]) -> dict:
    """``model_index.json`` of ``pipeline_dir``, after checking it is a pipeline folder with this model's VAE.

    A VAE saved as diffusers' plain ``AutoencoderKL`` (what diffusers' training scripts load it as) holds the
    same tensors and is imported, with a note: that class computes another function of them.
    """
    index_path = os.path.join(pipeline_dir, "model_index.json")
    if not os.path.isfile(index_path):
        lora = [n for n in os.listdir(pipeline_dir) if "lora" in n.lower()] if os.path.isdir(pipeline_dir) else []
        if lora:
            raise ImportDiffusersError(f"'{pipeline_dir}' holds LoRA weights only ({lora[0]}): {MERGE_LORA_HINT}.")
        raise ImportDiffusersError(
            f"'{pipeline_dir}' is not a diffusers pipeline folder (no model_index.json): pass the folder that "
            "export_diffusers wrote, or a pipeline saved from it with save_pretrained."
        )
    vae_class = _read_json(os.path.join(pipeline_dir, "vae", "config.json")).get("_class_name")
    if vae_class == "AutoencoderKL":
        notes.append(
            "the folder's VAE is saved as diffusers' AutoencoderKL: its tensors are imported, but that class adds a "
            "SiLU and takes [-1, 1] inputs unmapped; a UNet fine-tuned on latents it encoded learned other latents "
            "(load it as DiffusionPipeline.from_pretrained(folder, trust_remote_code=True).vae)"
        )
    elif vae_class != CxrAutoencoderKL.__name__:
        raise ImportDiffusersError(
            f"'{pipeline_dir}' has the VAE class {vae_class!r}, not this model's {CxrAutoencoderKL.__name__}: only "
            "folders made by python -m scripts.distribution.export_diffusers (and fine-tuned from one) can be imported."
        )
    return _read_json(index_path)


def check_config(found: dict, expected: dict, what: str) -> None:
    """Refuse a network whose diffusers configuration ``found`` differs from ``expected`` in a key that matters."""
    for key, value in expected.items():
        if key in IGNORED_CONFIG_KEYS:
            continue
        have = found.get(key)
        if isinstance(value, (list, tuple)) and isinstance(have, (list, tuple)):
            have, value = list(have), list(value)
        if have != value:
            raise ImportDiffusersError(
                f"The folder's {what} has {key}={have!r} where the bundle's network needs {value!r}: it is another "
                "architecture; import it with the matching network settings (network_def / autoencoder_def)."
            )


def import_unet(parser, pipeline_dir: str) -> dict:
    """The bundle UNet's state dict (float32, this bundle's layout) from the folder's ``unet/``."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(pipeline_dir, subfolder="unet", torch_dtype=torch.float32)
    expected = unet_config(network_arguments(parser, "network_def"), parser.get_parsed_content("latent_shape")[-1])
    check_config(dict(unet.config), expected, "UNet")
    network = parser.get_parsed_content("network_def")
    state = unet_from_diffusers(unet.state_dict(), list(network.state_dict()))
    network.load_state_dict(state, strict=True)
    return network.state_dict()


def import_autoencoder(parser, pipeline_dir: str) -> tuple[dict, float]:
    """(the bundle autoencoder's state dict, the folder's latent scaling factor) from the folder's ``vae/``."""
    vae = CxrAutoencoderKL.from_pretrained(pipeline_dir, subfolder="vae", torch_dtype=torch.float32)
    expected = vae_config(
        network_arguments(parser, "autoencoder_def"),
        parser.get_parsed_content("image_size"),
        parser.get_parsed_content("scale_factor"),
    )
    check_config(dict(vae.config), expected, "VAE")
    autoencoder = parser.get_parsed_content("autoencoder_def")
    blocks = [expected["layers_per_block"]] * len(expected["block_out_channels"])
    state = autoencoder_from_diffusers(
        vae.state_dict(), list(autoencoder.state_dict()), expected["block_out_channels"], blocks
    )
    autoencoder.load_state_dict(state, strict=True)
    return autoencoder.state_dict(), float(vae.config.scaling_factor)


def _token_model(tokenizer) -> tuple:
    """Vocabulary, merges and added tokens of a (fast) CLIP tokenizer: what decides its token ids."""
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    return state["model"], state["added_tokens"]


def check_tokenizer(parser, pipeline_dir: str) -> None:
    """Refuse a folder whose tokenizer splits text otherwise than the bundle's (added tokens, other vocabulary)."""
    from transformers import CLIPTokenizer

    theirs = CLIPTokenizer.from_pretrained(pipeline_dir, subfolder="tokenizer", local_files_only=True)
    ours = parser.get_parsed_content("tokenizer")
    if _token_model(theirs) != _token_model(ours):
        raise ImportDiffusersError(
            f"The folder's tokenizer ({len(theirs)} tokens) differs from the bundle's ({len(ours)}): new tokens "
            "(textual inversion) or another vocabulary cannot be used by the bundle."
        )


def check_noise_schedule(parser, pipeline_dir: str) -> None:
    """Refuse a folder whose scheduler has other betas or another prediction type than the bundle's schedule."""
    config = _read_json(os.path.join(pipeline_dir, "scheduler", "scheduler_config.json"))
    schedule = parser.get_parsed_content("noise_schedule")
    if not torch.equal(folder_betas(config), monai_betas(schedule)):
        raise ImportDiffusersError(
            "The folder's scheduler has another noise schedule (betas) than the bundle's noise_schedule: the UNet "
            "was trained for another schedule; set noise_schedule to match it."
        )
    if config.get("prediction_type") != schedule.get("prediction_type"):
        raise ImportDiffusersError(
            f"The folder's scheduler predicts {config.get('prediction_type')!r}, the bundle's noise_schedule "
            f"{schedule.get('prediction_type')!r}: set noise_schedule#prediction_type to the folder's."
        )


def import_text_encoder(parser, pipeline_dir: str, destination: str) -> None:
    """Save the folder's text encoder (float32) to ``destination``, after checking its width fits the UNet."""
    from transformers import CLIPTextModel

    from scripts.networks.text import check_context_width

    encoder = CLIPTextModel.from_pretrained(
        pipeline_dir, subfolder="text_encoder", local_files_only=True, dtype=torch.float32
    )
    check_context_width(encoder, parser.get_parsed_content("network_def#cross_attention_dim"))
    encoder.float().save_pretrained(destination)


def sampling_options(output_dir: str, scale_factor: float, bundle_scale_factor: float) -> dict:
    """The inference-config keys that sample with the imported weights in ``output_dir``."""
    options = {
        "load_old": False,
        "autoencoder_path": os.path.join(output_dir, "autoencoder.pt"),
        "diffusion_path": os.path.join(output_dir, "model.pt"),
        "text_encoder_source": os.path.join(output_dir, "text_encoder"),
    }
    if scale_factor != float(bundle_scale_factor):
        options["scale_factor"] = scale_factor  # the folder's VAE scaling factor decides the latent scale
    return options


def import_pipeline(pipeline_dir: str, output_dir: str, config_file=None, **overrides) -> dict:
    """Write the weights of the diffusers folder ``pipeline_dir`` to ``output_dir`` in this bundle's layout.

    Args:
        pipeline_dir: an exported (and possibly fine-tuned) diffusers folder.
        output_dir: the folder to create (it must not exist, or be empty).
        config_file: config files that define the networks (default: the inference configs).
        overrides: config keys (network settings), as on the ``monai.bundle run`` command line.

    Returns:
        ``{"output_dir", "options", "notes"}``: the config keys that sample with the imported weights
        (``options``), and what was converted on the way (``notes``).
    """
    pipeline_dir, output_dir = os.fspath(pipeline_dir), os.fspath(output_dir)
    if os.path.exists(output_dir) and (not os.path.isdir(output_dir) or os.listdir(output_dir)):
        raise ImportDiffusersError(f"'{output_dir}' already exists: choose a new --output_dir or delete it first.")
    notes: list[str] = []
    check_folder(pipeline_dir, notes)
    files = [config_file] if isinstance(config_file, str) else list(config_file or INFERENCE_CONFIGS)
    parser = load_parser(files, overrides)
    check_tokenizer(parser, pipeline_dir)
    check_noise_schedule(parser, pipeline_dir)
    unet_state = import_unet(parser, pipeline_dir)
    autoencoder_state, scale_factor = import_autoencoder(parser, pipeline_dir)
    if os.path.isdir(output_dir):
        os.rmdir(output_dir)
    with atomic_path(output_dir) as temporary:
        os.makedirs(temporary)
        torch.save(unet_state, os.path.join(temporary, "model.pt"))
        torch.save(autoencoder_state, os.path.join(temporary, "autoencoder.pt"))
        import_text_encoder(parser, pipeline_dir, os.path.join(temporary, "text_encoder"))
    options = sampling_options(output_dir, scale_factor, parser.get_parsed_content("scale_factor"))
    return {"output_dir": output_dir, "options": options, "notes": notes}


def main(pipeline_dir: str, output_dir: str, config_file=None, overrides: dict | None = None) -> None:
    """Import the diffusers folder ``pipeline_dir`` into ``output_dir``; print the options that sample with it.
    Bad input ends with its one-line message.

    Args:
        pipeline_dir: an exported (and possibly fine-tuned) diffusers folder.
        output_dir: the folder to create.
        config_file: config files that define the networks, merged in order (default: the inference configs).
        overrides: other config keys (network settings), e.g. ``"{'network_def#channels': [128, 256, 384]}"``.
    """
    try:
        summary = import_pipeline(pipeline_dir, output_dir, config_file=config_file, **(overrides or {}))
    except Exception as error:  # noqa: BLE001 - config errors arrive wrapped by MONAI's parser
        cause = root_cause(error)
        if not isinstance(cause, (CxrLdmError, FileNotFoundError)):
            raise
        raise SystemExit(one_line(cause)) from None
    for note in summary["notes"]:
        print(f"note: {note}")
    options = " ".join(f"--{key} {value}" for key, value in summary["options"].items())
    print(f"Imported into {output_dir}. Sample with the bundle's usual command plus: {options}")


if __name__ == "__main__":
    import fire

    fire.Fire(main)
