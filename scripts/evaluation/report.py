"""What people look at: sample grids and the self-contained HTML report of an evaluation."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence

import torch

from scripts.common.files import atomic_path, atomic_write_text


def save_grid(images: torch.Tensor, path: str, columns: int = 8) -> str:
    """Save (N, 1, H, W) images in [0, 1] as one PNG grid (temp name, then renamed)."""
    from torchvision.utils import save_image

    with atomic_path(path) as temporary:
        save_image(images.float().clamp(0, 1), temporary, nrow=min(columns, len(images)), padding=2, pad_value=1.0)
    return path


def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4f}"
    return html.escape(str(value))


def write_html_report(summary: dict, grids: Sequence[tuple[str, str]], path: str) -> str:
    """A self-contained HTML page: metric tables and one embedded sample grid per prompt set."""
    parts = [
        "<!doctype html><meta charset='utf-8'><title>cxr-ldm evaluation</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #999;padding:3px 8px;text-align:right}.warn{color:#b00}</style>",
        "<h1>cxr-ldm evaluation</h1>",
    ]
    for warning in summary.get("warnings", []):
        parts.append(f"<p class='warn'>{html.escape(warning)}</p>")
    scalar_rows = []
    for section in ("reconstruction", "diversity", "fid"):
        for name, values in (summary.get(section) or {}).items():
            if isinstance(values, dict):
                cells = ", ".join(f"{k}={_fmt(v)}" for k, v in values.items() if k not in ("warning",))
                scalar_rows.append(
                    f"<tr><th>{section}</th><td>{html.escape(name)}</td><td style='text-align:left'>{cells}</td></tr>"
                )
    parts.append(
        "<h2>Metrics</h2><table><tr><th>metric</th><th>set</th><th>values</th></tr>" + "".join(scalar_rows) + "</table>"
    )
    if summary.get("adherence"):
        keys = [
            "finding",
            "xrv_label",
            "num_samples",
            "mean_probability",
            "no_finding_mean_probability",
            "difference",
            "auroc_generated",
            "auroc_real",
        ]
        header = "".join(f"<th>{k}</th>" for k in keys)
        body = "".join(
            "<tr>" + "".join(f"<td>{_fmt(row[k])}</td>" for k in keys) + "</tr>" for row in summary["adherence"]
        )
        parts.append(f"<h2>Prompt adherence (torchxrayvision probabilities)</h2><table><tr>{header}</tr>{body}</table>")
    parts.append("<h2>Samples</h2>")
    for title, grid in grids:
        with open(grid, "rb") as f:
            data = base64.b64encode(f.read()).decode()
        parts.append(
            f"<h3>{html.escape(title)}</h3><img alt='{html.escape(title)}' src='data:image/png;base64,{data}'>"
        )
    return atomic_write_text(path, "\n".join(parts))
