"""Weights between this bundle's MONAI networks and their diffusers twins, both ways, tensor for tensor.

- The diffusion UNet (MONAI ``DiffusionModelUNet``) and diffusers' ``UNet2DConditionModel`` hold the same
  tensors under other names: ``unet_to_diffusers`` / ``unet_from_diffusers`` rename keys and copy nothing.
- The autoencoder (MONAI ``AutoencoderKL``) becomes a diffusers ``AutoencoderKL`` layout
  (``scripts.distribution.diffusers_autoencoder``): MONAI's encoder and decoder blocks are numbered in one
  list per network; diffusers has a middle block (here two residual blocks whose last convolution is zero,
  so each passes its input through exactly), three decoder residual blocks per level (the third such an
  identity), and one ``conv_out`` + ``quant_conv`` giving mean and log-variance together (MONAI's shared
  ``conv_out`` stacked twice, its two 1×1 convolutions placed block-diagonally).

Every map is checked to be complete both ways; ``*_from_diffusers`` refuse weights the bundle's networks
cannot represent (a fine-tuned identity block, halves that no longer agree) instead of dropping them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

from scripts.common.errors import CxrLdmError


class WeightsMapError(CxrLdmError, ValueError):
    """Weights do not map between the bundle's networks and the diffusers layout."""


# -- the diffusion UNet --------------------------------------------------------------------------------
#: (MONAI pattern, diffusers replacement), applied in order to every key; each rule is undone by its mirror.
UNET_RULES = (
    (r"^time_embed\.0\.", "time_embedding.linear_1."),
    (r"^time_embed\.2\.", "time_embedding.linear_2."),
    (r"^middle_block\.resnet_1\.", "mid_block.resnets.0."),
    (r"^middle_block\.attention\.", "mid_block.attentions.0."),
    (r"^middle_block\.resnet_2\.", "mid_block.resnets.1."),
    (r"^out\.0\.", "conv_norm_out."),
    (r"^out\.2\.conv\.", "conv_out."),
    (r"\.downsampler\.op\.conv\.", ".downsamplers.0.conv."),
    (r"\.upsampler\.postconv\.conv\.", ".upsamplers.0.conv."),
    (r"\.skip_connection\.conv\.", ".conv_shortcut."),
    (r"\.attn([12])\.out_proj\.", r".attn\1.to_out.0."),
    (r"\.ff\.linear1\.", ".ff.net.0.proj."),
    (r"\.ff\.linear2\.", ".ff.net.2."),
    (r"\.(conv_in|conv1|conv2|proj_in|proj_out)\.conv\.", r".\1."),
    (r"^conv_in\.conv\.", "conv_in."),
)
#: The mirror rules: diffusers name -> MONAI name.
UNET_RULES_BACK = (
    (r"^time_embedding\.linear_1\.", "time_embed.0."),
    (r"^time_embedding\.linear_2\.", "time_embed.2."),
    (r"^mid_block\.resnets\.0\.", "middle_block.resnet_1."),
    (r"^mid_block\.attentions\.0\.", "middle_block.attention."),
    (r"^mid_block\.resnets\.1\.", "middle_block.resnet_2."),
    (r"^conv_norm_out\.", "out.0."),
    (r"^conv_out\.", "out.2.conv."),
    (r"\.downsamplers\.0\.conv\.", ".downsampler.op.conv."),
    (r"\.upsamplers\.0\.conv\.", ".upsampler.postconv.conv."),
    (r"\.conv_shortcut\.", ".skip_connection.conv."),
    (r"\.attn([12])\.to_out\.0\.", r".attn\1.out_proj."),
    (r"\.ff\.net\.0\.proj\.", ".ff.linear1."),
    (r"\.ff\.net\.2\.", ".ff.linear2."),
    (r"\.(conv1|conv2|proj_in|proj_out)\.", r".\1.conv."),
    (r"^conv_in\.", "conv_in.conv."),
)


def _rename(key: str, rules) -> str:
    for pattern, replacement in rules:
        key = re.sub(pattern, replacement, key)
    return key


def unet_key_to_diffusers(key: str) -> str:
    """The diffusers ``UNet2DConditionModel`` name of MONAI ``DiffusionModelUNet`` tensor ``key``."""
    return _rename(key, UNET_RULES)


def unet_key_from_diffusers(key: str) -> str:
    """The MONAI ``DiffusionModelUNet`` name of diffusers ``UNet2DConditionModel`` tensor ``key``."""
    return _rename(key, UNET_RULES_BACK)


def _renamed(state: dict, rename, expected: Sequence[str], what: str) -> dict:
    renamed = {rename(key): value for key, value in state.items()}
    if len(renamed) != len(state):
        raise WeightsMapError(f"{what}: two tensors map to one name; the key rules need a fix.")
    missing = [k for k in expected if k not in renamed]
    unexpected = [k for k in renamed if k not in set(expected)]
    if missing or unexpected:
        raise WeightsMapError(
            f"{what}: {len(missing)} tensors missing (e.g. {missing[:1]}), {len(unexpected)} unexpected "
            f"(e.g. {unexpected[:1]}): the two networks are not of the same architecture."
        )
    return renamed


def unet_to_diffusers(state: dict, diffusers_keys: Sequence[str]) -> dict:
    """MONAI UNet state dict -> the state dict of a ``UNet2DConditionModel`` whose keys are ``diffusers_keys``."""
    return _renamed(state, unet_key_to_diffusers, diffusers_keys, "UNet to diffusers")


def unet_from_diffusers(state: dict, monai_keys: Sequence[str]) -> dict:
    """diffusers UNet state dict -> the state dict of a ``DiffusionModelUNet`` whose keys are ``monai_keys``."""
    return _renamed(state, unet_key_from_diffusers, monai_keys, "UNet from diffusers")


# -- the autoencoder -----------------------------------------------------------------------------------
def autoencoder_plan(channels: Sequence[int], num_res_blocks: Sequence[int]) -> list[tuple[str, str]]:
    """(MONAI prefix, diffusers prefix) of every MONAI autoencoder module with weights, in both networks.

    ``encoder.conv_out`` is absent: it is stacked (``autoencoder_to_diffusers``). For an autoencoder
    without attention and without non-local (middle) attention blocks.
    """
    encoder, index = _levels_plan("encoder", "down_blocks", num_res_blocks, ("conv.conv.", "downsamplers.0.conv."))
    plan = [
        ("encoder.blocks.0.conv.", "encoder.conv_in."),
        *encoder,
        (f"encoder.blocks.{index}.", "encoder.conv_norm_out."),
    ]
    upsampler = ("postconv.conv.", "upsamplers.0.conv.")
    decoder, index = _levels_plan("decoder", "up_blocks", list(reversed(num_res_blocks)), upsampler)
    plan += [("decoder.blocks.0.conv.", "decoder.conv_in."), *decoder]
    plan.append((f"decoder.blocks.{index}.", "decoder.conv_norm_out."))
    plan.append((f"decoder.blocks.{index + 1}.conv.", "decoder.conv_out."))
    plan.append(("post_quant_conv.conv.", "post_quant_conv."))
    return plan


def _levels_plan(
    network: str, levels_name: str, blocks_per_level: Sequence[int], resampler: tuple[str, str]
) -> tuple[list[tuple[str, str]], int]:
    """(prefix pairs, next block index) of ``network``'s levels: MONAI's blocks from index 1 are each level's
    residual blocks, then its resampler (MONAI suffix, diffusers suffix) except after the last level."""
    plan, index = [], 1
    for level, blocks in enumerate(blocks_per_level):
        for block in range(blocks):
            plan.append((f"{network}.blocks.{index}.", f"{network}.{levels_name}.{level}.resnets.{block}."))
            index += 1
        if level < len(blocks_per_level) - 1:
            plan.append((f"{network}.blocks.{index}.{resampler[0]}", f"{network}.{levels_name}.{level}.{resampler[1]}"))
            index += 1
    return plan, index


#: Names inside a MONAI autoencoder residual block -> its diffusers twin.
RESNET_PARTS = (("conv1.conv.", "conv1."), ("conv2.conv.", "conv2."), ("nin_shortcut.conv.", "conv_shortcut."))


def _resnet_part(rest: str) -> str:
    for monai_part, diffusers_part in RESNET_PARTS:
        if rest.startswith(monai_part):
            return diffusers_part + rest[len(monai_part) :]
    return rest


def autoencoder_key_to_diffusers(key: str, plan) -> str | None:
    """The diffusers name of MONAI autoencoder tensor ``key`` (None: the stacked encoder output layers)."""
    for monai_prefix, diffusers_prefix in plan:
        if key.startswith(monai_prefix):
            return diffusers_prefix + _resnet_part(key[len(monai_prefix) :])
    return None


def identity_resnet_prefixes(channels: Sequence[int], num_res_blocks: Sequence[int]) -> list[str]:
    """diffusers residual blocks that MONAI's autoencoder does not have: set to pass their input through."""
    prefixes = [f"{part}.mid_block.resnets.{i}." for part in ("encoder", "decoder") for i in (0, 1)]
    reversed_blocks = list(reversed(num_res_blocks))
    prefixes += [f"decoder.up_blocks.{level}.resnets.{reversed_blocks[level]}." for level in range(len(channels))]
    return prefixes


def autoencoder_to_diffusers(
    state: dict, diffusers_shapes: dict, channels: Sequence[int], num_res_blocks: Sequence[int]
) -> dict:
    """MONAI autoencoder state dict -> the state dict of the diffusers layout whose tensors have ``diffusers_shapes``.

    Identity residual blocks get unit norms and zero convolutions (their residual branch is exactly 0).
    """
    plan = autoencoder_plan(channels, num_res_blocks)
    out: dict[str, torch.Tensor] = {}
    encoder_out = f"encoder.blocks.{_encoder_length(channels, num_res_blocks) - 1}.conv."
    for key, value in state.items():
        target = autoencoder_key_to_diffusers(key, plan)
        if target is not None:
            out[target] = value
        elif key.startswith(encoder_out):
            out["encoder.conv_out." + key[len(encoder_out) :]] = torch.cat([value, value])  # mean and log-variance
        elif not key.startswith(("quant_conv_mu.", "quant_conv_log_sigma.")):
            raise WeightsMapError(f"Autoencoder to diffusers: tensor {key} has no place in the diffusers layout.")
    mean_weight, log_var_weight = state["quant_conv_mu.conv.weight"], state["quant_conv_log_sigma.conv.weight"]
    out["quant_conv.weight"] = torch.block_diag(mean_weight[..., 0, 0], log_var_weight[..., 0, 0])[..., None, None]
    out["quant_conv.bias"] = torch.cat([state["quant_conv_mu.conv.bias"], state["quant_conv_log_sigma.conv.bias"]])
    for prefix in identity_resnet_prefixes(channels, num_res_blocks):
        for key, shape in diffusers_shapes.items():
            if key.startswith(prefix):
                fill = torch.ones if key.endswith("weight") and ".norm" in key else torch.zeros
                out[key] = fill(shape, dtype=next(iter(state.values())).dtype)
    _check_keys(out, diffusers_shapes, "Autoencoder to diffusers")
    return out


def _encoder_length(channels: Sequence[int], num_res_blocks: Sequence[int]) -> int:
    """Number of MONAI encoder blocks: conv_in, residual and downsampling blocks, norm, conv_out."""
    return 1 + sum(num_res_blocks) + (len(channels) - 1) + 2


def _check_keys(state: dict, expected, what: str) -> None:
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise WeightsMapError(
            f"{what}: {len(missing)} tensors missing (e.g. {missing[:1]}), {len(unexpected)} unexpected "
            f"(e.g. {unexpected[:1]}): the two networks are not of the same architecture."
        )


def autoencoder_from_diffusers(
    state: dict, monai_keys: Sequence[str], channels: Sequence[int], num_res_blocks: Sequence[int]
) -> dict:
    """diffusers-layout autoencoder state dict -> MONAI ``AutoencoderKL`` state dict with keys ``monai_keys``.

    Raises:
        WeightsMapError: an identity block is no longer one, or the stacked mean / log-variance halves of
            ``encoder.conv_out`` differ, or ``quant_conv`` mixes them (weights MONAI's autoencoder cannot hold).
    """
    for prefix in identity_resnet_prefixes(channels, num_res_blocks):
        for part in ("weight", "bias"):
            if state[f"{prefix}conv2.{part}"].any():
                raise WeightsMapError(
                    f"The VAE's {prefix}conv2.{part} is not zero: that residual block no longer passes its input "
                    "through, which the bundle's autoencoder cannot represent (was the VAE fine-tuned?)."
                )
    plan = autoencoder_plan(channels, num_res_blocks)
    out: dict[str, torch.Tensor] = {}
    for key in monai_keys:
        target = autoencoder_key_to_diffusers(key, plan)
        if target is not None:
            out[key] = state[target]
    encoder_out = f"encoder.blocks.{_encoder_length(channels, num_res_blocks) - 1}.conv."
    latent = state["quant_conv.bias"].shape[0] // 2
    weight = state["quant_conv.weight"][..., 0, 0]
    if weight[:latent, latent:].any() or weight[latent:, :latent].any():
        raise WeightsMapError("The VAE's quant_conv mixes mean and log-variance channels: not MONAI's autoencoder.")
    for part in ("weight", "bias"):
        mean, log_var = state[f"encoder.conv_out.{part}"].split(latent)
        if not torch.equal(mean, log_var):
            raise WeightsMapError(
                f"The VAE's encoder.conv_out.{part} has different mean and log-variance halves: not MONAI's "
                "autoencoder (was the VAE fine-tuned?)."
            )
        out[encoder_out + part] = mean
    out["quant_conv_mu.conv.weight"] = weight[:latent, :latent, None, None].clone()
    out["quant_conv_log_sigma.conv.weight"] = weight[latent:, latent:, None, None].clone()
    out["quant_conv_mu.conv.bias"], out["quant_conv_log_sigma.conv.bias"] = state["quant_conv.bias"].split(latent)
    _check_keys(out, monai_keys, "Autoencoder from diffusers")
    return out
