"""Reuse of slow-changing deep UNet features across denoising steps (DeepCache, Ma et al., CVPR 2024).

Between neighbouring steps the deep features of a diffusion UNet change little. ``DeepCacheUNet`` wraps a
MONAI ``DiffusionModelUNet``: every ``interval``-th call is a full pass that also stores the input of the
last (shallowest) up block; the calls in between run only the shallow branch (input convolution, first
down block, last up block, output block) on top of that stored tensor. With ``interval`` 1 every call is
a full pass, computed exactly as the wrapped network computes it.

The cache is kept per call pattern (input shape and context tensor), so the two guidance branches, or
batches of other sizes, never use each other's features. ``reset()`` starts a new image.
"""

from __future__ import annotations

import torch
from monai.networks.nets.diffusion_model_unet import get_timestep_embedding


class DeepCacheUNet(torch.nn.Module):
    """``DiffusionModelUNet`` with deep features reused for ``interval - 1`` of every ``interval`` calls.

    Args:
        unet: the wrapped MONAI ``DiffusionModelUNet`` (its weights are used as they are).
        interval: calls per full pass (>= 1; 1 = no reuse).

    Called like the UNet: ``forward(x (B, C, h, w), timesteps (B,), context (B, L, D))``.
    """

    def __init__(self, unet: torch.nn.Module, interval: int) -> None:
        super().__init__()
        if int(interval) < 1:
            raise ValueError(f"cache_interval must be >= 1, got {interval}.")
        if getattr(unet, "num_class_embeds", None) is not None:
            raise ValueError("DeepCacheUNet does not support class-conditioned UNets.")
        self.unet = unet
        self.interval = int(interval)
        self._deep: dict[tuple, torch.Tensor] = {}
        self._calls: dict[tuple, int] = {}

    def reset(self) -> None:
        """Forget the cached features (call before each new denoising loop)."""
        self._deep.clear()
        self._calls.clear()

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        unet = self.unet
        key = (tuple(x.shape), None if context is None else (context.data_ptr(), tuple(context.shape)))
        call = self._calls.get(key, 0)
        self._calls[key] = call + 1
        full = call % self.interval == 0 or key not in self._deep

        emb = unet.time_embed(get_timestep_embedding(timesteps, unet.block_out_channels[0]).to(dtype=x.dtype))
        h = unet.conv_in(x)
        skips = [h]
        blocks = unet.down_blocks if full else unet.down_blocks[:1]
        for block in blocks:
            h, residuals = block(hidden_states=h, temb=emb, context=context)
            skips.extend(residuals)
        last = unet.up_blocks[-1]
        if full:
            h = unet.middle_block(hidden_states=h, temb=emb, context=context)
            for block in unet.up_blocks[:-1]:
                take = -len(block.resnets)
                h = block(hidden_states=h, res_hidden_states_list=skips[take:], temb=emb, context=context)
                skips = skips[:take]
            if self.interval > 1:
                self._deep[key] = h
        else:
            h = self._deep[key]
            skips = skips[: len(last.resnets)]  # the first down block's outputs; its downsampled one feeds deeper
        h = last(hidden_states=h, res_hidden_states_list=skips, temb=emb, context=context)
        return unet.out(h)
