"""What to edit: one image from the command line or the rows of an edits CSV, one job per edited image.

A job holds the paths of its inputs (``source_image``, ``edit_mask``, ``keep_mask``), ``prompt``,
``negative_prompt``, ``seed``, ``strength``, the number of denoising steps that strength runs and the names
of its files: what differs between the edits of a run. Its ``name`` is
``<index>_<image stem>_<prompt slug>_seed<seed>_<hash>``,
where the hash covers the content of the image and mask files, the text, seed, strength and every sampling
setting: the same command gives the same names (a re-run resumes), and an edit of another image, mask or
setting never takes an earlier edit's name.
"""

from __future__ import annotations

import csv
import os

from scripts.common.errors import CxrLdmError
from scripts.common.hashing import file_digest, settings_digest
from scripts.editing.editor import denoising_steps
from scripts.editing.settings import check_strength
from scripts.sampling.jobs import coerce_text, prompt_slug
from scripts.sampling.settings import as_int

EDITS_FILE_COLUMNS = ("image", "prompt", "edit_mask", "keep_mask", "seed", "strength", "negative_prompt")
#: folders (inside ``output_dir``) of the difference maps and the side-by-side figures
DIFFERENCE_DIR = "difference"
COMPARISON_DIR = "comparison"


class EditsError(CxrLdmError, ValueError):
    """Bad edit request or edits file."""


def _resolve(path: str | None, folder: str) -> str:
    if path is None or not str(path).strip():
        return ""
    path = os.path.expanduser(str(path).strip())
    return path if os.path.isabs(path) else os.path.normpath(os.path.join(folder, path))


def _content_digest(path: str, what: str) -> str:
    if not path:
        return ""
    if not os.path.isfile(path):
        raise EditsError(f"{what} '{path}' does not exist: check the path (CSV paths are relative to the CSV).")
    return file_digest(path)[:16]


def read_edits_file(path: str) -> list[dict]:
    """Rows of an edits CSV: ``image`` and ``prompt`` required, ``edit_mask``, ``keep_mask``, ``seed``,
    ``strength`` and ``negative_prompt`` optional (an empty cell takes the command's value). Paths are
    relative to the CSV's folder. Text is read verbatim.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise EditsError(f"Edits file '{path}' not found: check --edits_file.")
    folder = os.path.dirname(os.path.abspath(path))
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in ("image", "prompt") if c not in columns]
        if missing:
            raise EditsError(
                f"Edits file '{path}' lacks the column(s) {missing} (columns: {columns}); its header must name "
                f"'image,prompt' and optionally {list(EDITS_FILE_COLUMNS[2:])}."
            )
        unknown = [c for c in columns if c not in EDITS_FILE_COLUMNS]
        if unknown:
            raise EditsError(f"Edits file '{path}' has unknown columns {unknown}; allowed: {list(EDITS_FILE_COLUMNS)}.")
        rows = []
        for line, raw in enumerate(reader, start=2):
            row = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
            if not any(row.values()):
                continue
            if not row.get("image"):
                raise EditsError(f"Line {line} of '{path}' has no image: every row needs one.")
            parsed = {"image": _resolve(row["image"], folder), "prompt": row.get("prompt", ""), "line": line}
            for key in ("edit_mask", "keep_mask"):
                if row.get(key):
                    parsed[key] = _resolve(row[key], folder)
            if "negative_prompt" in row and row["negative_prompt"]:
                parsed["negative_prompt"] = row["negative_prompt"]
            if row.get("seed"):
                parsed["seed"] = as_int(row["seed"], f"seed on line {line} of '{path}'", 0, error=EditsError)
            if row.get("strength"):
                parsed["strength"] = check_strength(row["strength"], f"strength on line {line} of '{path}'")
            rows.append(parsed)
    if not rows:
        raise EditsError(f"Edits file '{path}' holds no edits: add rows 'image,prompt' under its header.")
    return rows


def edit_rows(image: str | None = None, edits_file: str | None = None) -> list[dict]:
    """The run's edits, checked (an edits file read once): the rows of ``edits_file`` (``read_edits_file``) or
    one row ``{"image"}`` for ``image`` (relative to the working folder). Exactly one of the two is given."""
    if bool(image) == bool(edits_file):
        raise EditsError(
            "Give exactly one of --image (one radiograph) and --edits_file (a CSV 'image,prompt,...'), "
            f"got {'both' if image else 'neither'}."
        )
    return read_edits_file(edits_file) if edits_file else [{"image": _resolve(image, os.getcwd())}]


def count_edits(rows: list[dict], num_samples: int = 1) -> int:
    """How many edited images the run makes, all ranks together: ``edit_rows``' rows times ``num_samples``."""
    return len(rows) * as_int(num_samples, "--num_samples", 1, error=EditsError)


def edit_jobs(
    rows: list[dict],
    prompt: str = "",
    negative_prompt: str = "",
    edit_mask: str | None = None,
    keep_mask: str | None = None,
    strength: float = 0.6,
    seed: int = 0,
    num_samples: int = 1,
    settings: dict | None = None,
) -> list[dict]:
    """One job per edited image of ``rows`` (``edit_rows``).

    A row's empty cells take the command's values (``prompt``, masks, ``strength``, checked by
    ``scripts.editing.settings.check_edit_settings``). Every row uses ``seed`` unless it has its own, so edits
    of one image with different prompts share their noise (paired counterfactuals); ``num_samples`` > 1 makes
    each edit with seeds ``seed, seed+1, ...``. ``settings`` (the run's image settings) enter the names.
    """
    settings = dict(settings or {})
    seed = as_int(seed, "--seed", 0, error=EditsError)
    num_samples = as_int(num_samples, "--num_samples", 1, error=EditsError)
    steps = int(settings.get("num_inference_steps", 1))
    command = {
        "prompt": coerce_text(prompt, key="prompt"),
        "negative_prompt": coerce_text(negative_prompt, key="negative_prompt"),
        "edit_mask": _resolve(edit_mask, os.getcwd()),
        "keep_mask": _resolve(keep_mask, os.getcwd()),
        "strength": float(strength),
        "seed": seed,
    }
    digests: dict[str, str] = {}
    jobs = []
    for row in rows:
        edit = {**command, **row}
        for key, what in (("image", "Input image"), ("edit_mask", "Edit mask"), ("keep_mask", "Keep mask")):
            if edit[key] and edit[key] not in digests:
                digests[edit[key]] = _content_digest(edit[key], what)
        for sample in range(num_samples):
            image_seed = edit["seed"] + sample
            identity = {
                "prompt": edit["prompt"],
                "negative_prompt": edit["negative_prompt"],
                "seed": image_seed,
                "strength": edit["strength"],
                "image_content": digests[edit["image"]],
                "edit_mask_content": digests.get(edit["edit_mask"], ""),
                "keep_mask_content": digests.get(edit["keep_mask"], ""),
                **settings,
            }
            stem = prompt_slug(os.path.splitext(os.path.basename(edit["image"]))[0], length=24)
            name = f"{len(jobs):05d}_{stem}_{prompt_slug(edit['prompt'], length=32)}_seed{image_seed}_"
            name += settings_digest(identity)
            jobs.append(
                {
                    "name": name,
                    "source_image": edit["image"],
                    "edit_mask": edit["edit_mask"],
                    "keep_mask": edit["keep_mask"],
                    "prompt": edit["prompt"],
                    "negative_prompt": edit["negative_prompt"],
                    "seed": image_seed,
                    "strength": edit["strength"],
                    "denoising_steps": denoising_steps(edit["strength"], steps),
                    "difference_file": f"{DIFFERENCE_DIR}/{name}.png",
                    "comparison_file": f"{COMPARISON_DIR}/{name}.png",
                }
            )
    return jobs
