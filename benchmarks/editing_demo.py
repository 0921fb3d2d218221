"""Counterfactual editing on the parity model: adding a left pleural effusion to healthy synthetic radiographs.

Draws ``num_images`` healthy frontal radiographs with ``scripts.data.synthetic`` (the parity model's
training distribution), and edits each twice through the bundle's editing workflow
(``configs/edit.json``, one edits CSV, the same seed for both prompts): once with the effusion prompt and
once with the normal-study prompt, inside an edit mask over the left lung base (the image's right side),
with the other half of the chest (the image's left) under a keep mask. It prints and writes
(``--output_json``) the mean intensity inside the edit mask of the inputs and of both edits, and the
largest change inside the keep region, and draws a figure of the first images (``--figure``).

    python -m benchmarks.parity_model --output_dir models/parity --minutes 8
    python -m benchmarks.editing_demo --parity_model_dir models/parity --output_dir /tmp/editing_demo \\
        --figure docs/images/editing_example.png --output_json docs/editing_demo.json
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from scripts.common.configs import CONFIGS, INFERENCE_CONFIGS, TINY_OVERLAYS
from scripts.common.files import atomic_write_json

EFFUSION_PROMPT = "large left pleural effusion"
NORMAL_PROMPT = "no acute cardiopulmonary process"
#: fractions of the image (left, top, right, bottom): the left lung base (patient's left = image right)
EDIT_BOX = (0.54, 0.50, 0.86, 0.78)
#: the image's left half: the patient's right hemithorax must not change
KEEP_BOX = (0.0, 0.0, 0.47, 1.0)


def _box_mask(size: int, box: tuple[float, float, float, float]) -> np.ndarray:
    left, top, right, bottom = (round(v * size) for v in box)
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[top:bottom, left:right] = 255
    return mask


def write_inputs(folder: Path, num_images: int, size: int, seed: int) -> Path:
    """Healthy radiographs, the two masks and the edits CSV (two rows per image) in ``folder``."""
    from scripts.data.synthetic import StudyFindings, draw_radiograph

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(_box_mask(size, EDIT_BOX), mode="L").save(folder / "left_base.png")
    Image.fromarray(_box_mask(size, KEEP_BOX), mode="L").save(folder / "right_chest.png")
    rows = []
    for index in range(num_images):
        name = f"healthy_{index:02d}.png"
        Image.fromarray(draw_radiograph(StudyFindings(), size, size, rng, view="PA"), mode="L").save(folder / name)
        for prompt in (EFFUSION_PROMPT, NORMAL_PROMPT):
            rows.append({"image": name, "prompt": prompt, "edit_mask": "left_base.png", "keep_mask": "right_chest.png"})
    path = folder / "edits.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _grey(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L"), dtype=np.float64) / 255.0


def draw_figure(rows: list[dict], output_dir: Path, mask: np.ndarray, path: Path, columns: int = 4, scale: int = 4):
    """Grid: for ``columns`` images, the input (edit mask outlined), the effusion edit, the normal edit."""
    size = mask.shape[0] * scale
    labels = ["input", EFFUSION_PROMPT, NORMAL_PROMPT]
    header, gap = 14, 4
    picture = Image.new("RGB", (columns * (size + gap), 3 * (size + header + gap)), (255, 255, 255))
    draw = ImageDraw.Draw(picture)
    by_image: dict[str, dict] = {}
    for row in rows:
        by_image.setdefault(row["source_image"], {})[row["prompt"]] = row
    for column, (source, edits) in enumerate(list(by_image.items())[:columns]):
        panels = [source, output_dir / edits[EFFUSION_PROMPT]["file"], output_dir / edits[NORMAL_PROMPT]["file"]]
        for line, (panel, label) in enumerate(zip(panels, labels)):
            image = Image.open(panel).convert("RGB").resize((size, size), Image.Resampling.NEAREST)
            if line == 0:
                top, left = np.argwhere(mask).min(axis=0) * scale
                bottom, right = (np.argwhere(mask).max(axis=0) + 1) * scale
                ImageDraw.Draw(image).rectangle((left, top, right - 1, bottom - 1), outline=(255, 140, 0))
            x, y = column * (size + gap), line * (size + header + gap)
            picture.paste(image, (x, y + header))
            if column == 0:
                draw.text((x + 2, y + 1), label, fill=(0, 0, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)


def main(
    parity_model_dir: str,
    output_dir: str = "/tmp/editing_demo",
    num_images: int = 16,
    strength: float = 0.8,
    guidance_scale: float = 7.0,
    num_inference_steps: int = 20,
    seed: int = 0,
    figure: str | None = None,
    output_json: str | None = None,
) -> dict:
    """Run the demo; return the mean intensities and the keep-region change.

    Args:
        parity_model_dir: folder written by ``benchmarks.parity_model``.
        output_dir: where the inputs (``inputs/``) and the edits (``edits/``) go.
        num_images: healthy radiographs, each edited with both prompts.
        strength, guidance_scale, num_inference_steps, seed: the editing settings.
        figure: PNG path of a figure of the first four images (input, effusion edit, normal edit).
        output_json: path of a JSON copy of the summary.
    """
    from monai.bundle.scripts import run

    model_dir, out = Path(parity_model_dir), Path(output_dir)
    info = json.loads((model_dir / "parity_model.json").read_text())
    size = 64  # the parity model's images (configs/tiny/inference.json)
    edits = write_inputs(out / "inputs", num_images, size, seed)
    started = time.time()
    run(
        config_file=[*INFERENCE_CONFIGS, *TINY_OVERLAYS, str(CONFIGS / "edit.json")],
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        model_dir=str(model_dir),
        text_encoder_source=str(model_dir / "text_encoder"),
        load_old=False,
        scale_factor=info["scale_factor"],
        output_dir=str(out / "edits"),
        edits_file=str(edits),
        strength=strength,
        guidance_scale=guidance_scale,
        num_inference_steps=num_inference_steps,
        seed=seed,
        batch_size=8,
    )
    seconds = time.time() - started
    with open(out / "edits" / "manifest.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    edit_mask = _box_mask(size, EDIT_BOX) > 0
    keep_mask = _box_mask(size, KEEP_BOX) > 0
    inside = {EFFUSION_PROMPT: [], NORMAL_PROMPT: [], "input": []}
    keep_change = 0.0
    for row in rows:
        edited, source = _grey(out / "edits" / row["file"]), _grey(Path(row["source_image"]))
        inside[row["prompt"]].append(float(edited[edit_mask].mean()))
        if row["prompt"] == EFFUSION_PROMPT:
            inside["input"].append(float(source[edit_mask].mean()))
        keep_change = max(keep_change, float(np.abs(edited[keep_mask] - source[keep_mask]).max()))
    summary = {
        "num_images": num_images,
        "strength": strength,
        "guidance_scale": guidance_scale,
        "num_inference_steps": num_inference_steps,
        "mean_inside_edit_mask": {k: float(np.mean(v)) for k, v in inside.items()},
        "std_inside_edit_mask": {k: float(np.std(v)) for k, v in inside.items()},
        "effusion_brighter_than_normal": int(np.sum(np.greater(inside[EFFUSION_PROMPT], inside[NORMAL_PROMPT]))),
        "largest_change_in_keep_region": keep_change,
        "seconds": round(seconds, 1),
        "edit_box": EDIT_BOX,
        "keep_box": KEEP_BOX,
    }
    if figure:
        draw_figure(rows, out / "edits", edit_mask, Path(figure))
    if output_json:
        atomic_write_json(output_json, summary)
    return summary


if __name__ == "__main__":
    import fire

    fire.Fire(main, serialize=lambda summary: json.dumps(summary, indent=2))
