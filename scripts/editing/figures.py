"""Pictures of an edit: the difference map and the side-by-side figure (input | edited | difference).

- Difference map: 8-bit grey PNG of |edited − input|, round(255 · |d|) (255: a change of the full range).
- Side-by-side figure (RGB PNG): the input with the edit mask outlined in orange and the keep mask in
  cyan, the edited image, and the difference on a black-red-yellow-white scale from 0 to the edit's
  largest difference (printed above the panel). Panels are enlarged by a whole factor (nearest neighbour)
  to at least ``MIN_PANEL`` pixels wide, so small images stay legible.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

MIN_PANEL = 256
HEADER = 14
GAP = 4
EDIT_COLOUR = (255, 140, 0)
KEEP_COLOUR = (0, 200, 255)


def difference_map(edited: torch.Tensor, image: torch.Tensor) -> np.ndarray:
    """uint8 (H, W): round(255 · |edited − image|) of two (1, H, W) images in [0, 1]."""
    difference = (edited.float() - image.float()).abs()[0].clamp(0, 1)
    return (difference.cpu().numpy() * 255.0).round().astype(np.uint8)


def _outline(region: torch.Tensor) -> np.ndarray:
    """bool (H, W): the inner boundary pixels of a (1, H, W) 0/1 region."""
    inside = (region > 0.5).float()[None]
    eroded = 1.0 - F.max_pool2d(1.0 - inside, kernel_size=3, stride=1, padding=1)
    return ((inside - eroded) > 0.5)[0, 0].cpu().numpy()


def _heat(values: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) black → red → yellow → white of ``values`` in [0, 1]."""
    v = values.clip(0, 1)[..., None] * 3.0
    rgb = np.concatenate([v, v - 1.0, v - 2.0], axis=-1).clip(0, 1)
    return (rgb * 255.0).round().astype(np.uint8)


def comparison_figure(
    image: torch.Tensor, edited: torch.Tensor, edit_region: torch.Tensor | None, keep_region: torch.Tensor | None
) -> Image.Image:
    """RGB figure of one edit (see the module docstring); all inputs (1, H, W), images in [0, 1]."""
    grey = lambda t: np.repeat((t[0].float().cpu().numpy().clip(0, 1) * 255).round().astype(np.uint8)[..., None], 3, 2)  # noqa: E731
    source = grey(image)
    for region, colour in ((edit_region, EDIT_COLOUR), (keep_region, KEEP_COLOUR)):
        if region is not None and bool((region > 0.5).any()) and not bool((region > 0.5).all()):
            source[_outline(region)] = colour
    difference = (edited.float() - image.float()).abs()[0].cpu().numpy()
    largest = max(float(difference.max()), 1.0 / 255.0)
    panels = [source, grey(edited), _heat(difference / largest)]
    labels = ["input", "edited", f"|difference| 0 to {largest:.3f}"]
    height, width = source.shape[:2]
    factor = max(1, -(-MIN_PANEL // width))
    panel_width, panel_height = width * factor, height * factor
    figure = Image.new("RGB", (3 * panel_width + 2 * GAP, panel_height + HEADER), (255, 255, 255))
    draw = ImageDraw.Draw(figure)
    for i, (panel, label) in enumerate(zip(panels, labels)):
        left = i * (panel_width + GAP)
        picture = Image.fromarray(panel, mode="RGB").resize((panel_width, panel_height), Image.Resampling.NEAREST)
        figure.paste(picture, (left, HEADER))
        draw.text((left + 2, 1), label, fill=(0, 0, 0))
    return figure
