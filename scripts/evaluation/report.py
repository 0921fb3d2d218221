"""What people look at: sample grids and the self-contained HTML report of an evaluation.

Each metric of the evaluation (``scripts.evaluation.sections.METRICS``) is shown either as rows of the metrics
table (``metrics_table_rows``) or by a section function ``(summary value, figures) -> HTML parts`` of its own.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence

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


FIDELITY_COLUMNS = ("fid", "kid_mean", "kid_std", "precision", "recall", "density", "coverage")
BAR_METRICS = ("precision", "recall", "density", "coverage")
BAR_COLOURS = {"precision": "#1f77b4", "recall": "#ff7f0e", "density": "#2ca02c", "coverage": "#9467bd"}


def _png_data(path: str) -> str:
    with open(path, "rb") as f:
        return base64.b64encode(f.read()).decode()


def prdc_bars(fidelity: dict, width: int = 720, bar_height: int = 12) -> str:
    """Inline SVG: one group of horizontal bars (precision, recall, density, coverage) per set and extractor.

    The axis runs from 0 to 1 (density, which can exceed 1, is drawn up to 1.5 with its value printed)."""
    rows = [(name, values) for name, values in fidelity.items() if values.get("precision") is not None]
    if not rows:
        return ""
    label_width, scale = 230, (width - 290) / 1.5
    height = len(rows) * (len(BAR_METRICS) * bar_height + 10) + 24
    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' font-size='11'>"]
    one = label_width + scale
    parts.append(f"<line x1='{one}' y1='0' x2='{one}' y2='{height - 14}' stroke='#999' stroke-dasharray='3,3'/>")
    parts.append(f"<text x='{one - 4}' y='{height - 2}'>1</text><text x='{label_width}' y='{height - 2}'>0</text>")
    y = 4
    for name, values in rows:
        parts.append(f"<text x='0' y='{y + 2 * bar_height}'>{html.escape(name)}</text>")
        for metric in BAR_METRICS:
            value = float(values[metric])
            length = min(value, 1.5) * scale
            parts.append(
                f"<rect x='{label_width}' y='{y}' width='{length:.1f}' height='{bar_height - 2}' "
                f"fill='{BAR_COLOURS[metric]}'><title>{metric} {value:.3f}</title></rect>"
                f"<text x='{label_width + length + 4:.1f}' y='{y + bar_height - 3}'>{metric} {value:.3f}</text>"
            )
            y += bar_height
        y += 10
    parts.append("</svg>")
    return "".join(parts)


def metrics_table_rows(name: str, values_by_set: dict) -> list[str]:
    """Rows of the report's metrics table for a metric whose summary value maps a set to its numbers."""
    rows = []
    for set_name, values in (values_by_set or {}).items():
        if isinstance(values, dict):
            cells = ", ".join(f"{k}={_fmt(v)}" for k, v in values.items() if k not in ("warning",))
            rows.append(
                f"<tr><th>{name}</th><td>{html.escape(set_name)}</td><td style='text-align:left'>{cells}</td></tr>"
            )
    return rows


ADHERENCE_COLUMNS = (
    "finding",
    "xrv_label",
    "num_samples",
    "mean_probability",
    "no_finding_mean_probability",
    "difference",
    "auroc_generated",
    "auroc_real",
)


def adherence_section(rows: list, figures: Mapping[str, str]) -> list[str]:
    """The prompt adherence table (rows of ``scripts.evaluation.adherence.adherence``)."""
    if not rows:
        return []
    header = "".join(f"<th>{k}</th>" for k in ADHERENCE_COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(row[k])}</td>" for k in ADHERENCE_COLUMNS) + "</tr>" for row in rows)
    return [f"<h2>Prompt adherence (torchxrayvision probabilities)</h2><table><tr>{header}</tr>{body}</table>"]


def fidelity_section(fidelity: dict, figures: Mapping[str, str]) -> list[str]:
    """FID, KID and PRDC per set and extractor: a table and the PRDC bars."""
    if not fidelity:
        return []
    header = "".join(f"<th>{c}</th>" for c in ("set / extractor", "generated", "real", *FIDELITY_COLUMNS))
    body = "".join(
        f"<tr><td style='text-align:left'>{html.escape(name)}</td><td>{v['num_generated']}</td>"
        f"<td>{v['num_real']}</td>" + "".join(f"<td>{_fmt(v.get(c))}</td>" for c in FIDELITY_COLUMNS) + "</tr>"
        for name, v in fidelity.items()
    )
    return [
        "<h2>Fidelity and diversity per feature extractor</h2><p>FID and KID: lower is better. Precision and "
        "density: how many generated images look like real ones; recall and coverage: how much of the real "
        f"variety the generated images cover (PRDC).</p><table><tr>{header}</tr>{body}</table>",
        "<h3>Precision, recall, density, coverage</h3>" + prdc_bars(fidelity),
    ]


def per_pathology_section(rows: list, figures: Mapping[str, str]) -> list[str]:
    """FID, KID, precision and recall per finding and extractor (skipped findings say why)."""
    if not rows:
        return []
    extractors = sorted({k for row in rows for k in row if isinstance(row[k], dict)})
    header = "<th>finding</th><th>generated</th><th>real</th>" + "".join(
        f"<th>{html.escape(e)} {m}</th>" for e in extractors for m in ("FID", "KID", "precision", "recall")
    )
    body = []
    for row in rows:
        cells = f"<td style='text-align:left'>{html.escape(row['finding'])}</td>"
        cells += f"<td>{row['num_generated']}</td><td>{row['num_real']}</td>"
        if row.get("skipped"):
            cells += f"<td colspan='{4 * len(extractors)}'>{html.escape(row['skipped'])}</td>"
        else:
            for e in extractors:
                v = row.get(e, {})
                cells += "".join(f"<td>{_fmt(v.get(m))}</td>" for m in ("fid", "kid_mean", "precision", "recall"))
        body.append(f"<tr>{cells}</tr>")
    return [
        f"<h2>Per pathology</h2><p>Groups decided by: {html.escape(rows[0].get('decided_by', ''))}.</p>"
        f"<table><tr>{header}</tr>{''.join(body)}</table>"
    ]


#: key of ``figures`` under which the memorisation check leaves its closest-pairs picture
MEMORISATION_PAIRS = "memorisation_pairs"


def memorisation_section(result: dict, figures: Mapping[str, str]) -> list[str]:
    """Nearest-training-image similarities and, when drawn, the closest generated / training pairs."""
    if not result:
        return []
    cells = ", ".join(f"{k}={_fmt(v)}" for k, v in result.items())
    parts = [
        "<h2>Memorisation: nearest training images</h2><p>Cosine similarity of each generated image to its "
        "nearest training image; real test images (never trained on) give the reference. "
        f"{cells}</p>"
    ]
    pairs_figure = figures.get(MEMORISATION_PAIRS)
    if pairs_figure:
        parts.append(
            "<p>Closest pairs (top: generated, bottom: nearest training image):</p>"
            f"<img alt='closest generated-training pairs' src='data:image/png;base64,{_png_data(pairs_figure)}'>"
        )
    return parts


def write_html_report(
    warnings: Sequence[str],
    table_rows: Sequence[str],
    sections: Sequence[str],
    grids: Sequence[tuple[str, str]],
    path: str,
) -> str:
    """A self-contained HTML page: the warnings, the metrics table (``table_rows``), each metric's own
    ``sections`` (HTML parts, in order) and one embedded sample grid per (title, PNG path) of ``grids``."""
    parts = [
        "<!doctype html><meta charset='utf-8'><title>cxr-ldm evaluation</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #999;padding:3px 8px;text-align:right}.warn{color:#b00}</style>",
        "<h1>cxr-ldm evaluation</h1>",
    ]
    for warning in warnings:
        parts.append(f"<p class='warn'>{html.escape(warning)}</p>")
    parts.append(
        "<h2>Metrics</h2><table><tr><th>metric</th><th>set</th><th>values</th></tr>" + "".join(table_rows) + "</table>"
    )
    parts.extend(sections)
    parts.append("<h2>Samples</h2>")
    for title, grid in grids:
        data = _png_data(grid)
        parts.append(
            f"<h3>{html.escape(title)}</h3><img alt='{html.escape(title)}' src='data:image/png;base64,{data}'>"
        )
    return atomic_write_text(path, "\n".join(parts))
