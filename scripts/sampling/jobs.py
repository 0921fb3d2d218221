"""What to generate: prompts from the command line or a prompts file, expanded into one job per image.

A job is a dict ``{"prompt", "negative_prompt", "seed", "name"}``: what differs between the images of a
run. ``name`` is the file stem of the image (without extension): ``<index>_<prompt-slug>_seed<seed>_<hash>``,
where the hash covers everything that decides the pixels beyond float rounding: prompt, negative prompt, seed,
and the config's ``image_settings`` (the sampler's identity: steps, guidance, scheduler, null prompt, scale
factor, latent shape, precision, guidance and cache intervals; the model's: version and fingerprints of the
weights files; the output format). Equal values spelled differently (``7`` and ``7.0``) hash alike.
Switches that change only float rounding (compile, channels-last, batched guidance, batch size) are not in the
name: they are written to the manifest (``manifest_settings``). The same command therefore gives the same names
on every run (so a re-run skips images already written, also with another batch size or image count), and
names never collide, within a run or across runs with other settings.
"""

from __future__ import annotations

import csv
import os
import re
import unicodedata
from collections.abc import Mapping, Sequence

from scripts.common.distributed import rank_and_world
from scripts.common.errors import CxrLdmError
from scripts.common.hashing import settings_digest
from scripts.sampling.settings import as_int
from scripts.sampling.writer import existing_image

PROMPTS_FILE_COLUMNS = ("prompt", "negative_prompt", "seed", "num_samples")


class PromptsError(CxrLdmError, ValueError):
    """Bad prompts or prompts file."""


def coerce_text(value, key: str = "prompt") -> str:
    """A prompt as text, whatever type the command-line parser made of it.

    Strings pass through. ``python -m monai.bundle`` parses values with ``fire``, which reads ``123`` as a
    number, ``True`` as a boolean and ``effusion, cardiomegaly`` as a tuple: these are turned back into text
    (``str``; tuples joined with ", "). Quoting the text twice (``--prompt "'007'"``) keeps it verbatim.
    """
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (tuple, list)):
        return ", ".join(coerce_text(v, key=key) for v in value)
    if isinstance(value, (bool, int, float)):
        return str(value)
    raise PromptsError(f"--{key} must be text, got {type(value).__name__}: {value!r}.")


def read_prompts_file(path: str) -> list[dict]:
    """Rows of a prompts file: ``{"prompt", optional "negative_prompt", "seed", "num_samples"}``.

    - ``.csv``: a header with a ``prompt`` column, optional ``negative_prompt``, ``seed``, ``num_samples``.
    - anything else (``.txt``): one prompt per line; blank lines and lines starting with ``#`` are skipped.

    Text is read verbatim: it is never evaluated as a config expression.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise PromptsError(f"Prompts file '{path}' not found: check --prompts_file.")
    with open(path, newline="", encoding="utf-8-sig") as f:
        if path.lower().endswith(".csv"):
            reader = csv.DictReader(f)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            if "prompt" not in columns:
                raise PromptsError(
                    f"Prompts file '{path}' has no 'prompt' column (columns: {columns}); add a header line "
                    "'prompt[,seed,num_samples,negative_prompt]'."
                )
            unknown = [c for c in columns if c not in PROMPTS_FILE_COLUMNS]
            if unknown:
                raise PromptsError(
                    f"Prompts file '{path}' has unknown columns {unknown}; allowed: {list(PROMPTS_FILE_COLUMNS)}."
                )
            rows = []
            for line_number, raw in enumerate(reader, start=2):
                row = {k.strip(): (v if v is not None else "") for k, v in raw.items() if k is not None}
                if not row.get("prompt", "").strip() and not any(str(v).strip() for v in row.values()):
                    continue
                parsed = {"prompt": row.get("prompt", "").strip(), "line": line_number}
                if "negative_prompt" in row:
                    parsed["negative_prompt"] = row["negative_prompt"].strip()
                if str(row.get("seed", "")).strip():
                    parsed["seed"] = as_int(
                        row["seed"], f"seed on line {line_number} of '{path}'", 0, error=PromptsError
                    )
                if str(row.get("num_samples", "")).strip():
                    parsed["num_samples"] = as_int(
                        row["num_samples"], f"num_samples on line {line_number} of '{path}'", 0, error=PromptsError
                    )
                rows.append(parsed)
        else:
            rows = [
                {"prompt": line.strip(), "line": i}
                for i, line in enumerate(f, start=1)
                if line.strip() and not line.lstrip().startswith("#")
            ]
    if not rows:
        raise PromptsError(
            f"Prompts file '{path}' holds no prompts: write one prompt per line (.txt) or a CSV with a 'prompt' column."
        )
    return rows


def prompt_slug(text: str, length: int = 40) -> str:
    """File-name part of a prompt: lower-case words of any script joined by "-", at most ``length`` characters.

    Letters and digits of every alphabet are kept ("Épanchement" -> "épanchement", "胸腔积液" stays);
    only the empty prompt is called ``null-prompt``; a prompt without letters or digits is ``prompt``.
    """
    text = unicodedata.normalize("NFC", text).lower()
    slug = re.sub(r"[\W_]+", "-", text).strip("-")[:length].strip("-")
    if slug:
        return slug
    return "null-prompt" if not text.strip() else "prompt"


def image_name(index: int, prompt: str, negative_prompt: str, seed: int, settings: dict) -> str:
    """File stem of one image (see the module docstring)."""
    digest = settings_digest({"prompt": prompt, "negative_prompt": negative_prompt, "seed": seed, **settings})
    return f"{index:05d}_{prompt_slug(prompt)}_seed{seed}_{digest}"


def prompt_rows(
    prompt=None, negative_prompt="", prompts_file: str | None = None, seed: int = 0, num_samples: int = 1
) -> list[dict]:
    """The run's prompts, checked: one row ``{"prompt", "negative_prompt", "seed", "num_samples"}`` per prompt.

    Without ``prompts_file``: one row, ``num_samples`` images of ``prompt`` from ``seed``. With it: a row per
    line, whose ``num_samples`` is its own, else the command's, and whose first seed is its own, else
    ``seed + 1000 * row index``; an empty negative prompt cell takes the command's.
    """
    seed = as_int(seed, "--seed", 0, error=PromptsError)
    num_samples = as_int(num_samples, "--num_samples", 1, error=PromptsError)
    default_negative = coerce_text(negative_prompt, key="negative_prompt")
    rows = read_prompts_file(prompts_file) if prompts_file else [{"prompt": coerce_text(prompt, key="prompt")}]
    return [
        {
            "prompt": row["prompt"],
            "negative_prompt": row.get("negative_prompt", default_negative),
            "seed": row.get("seed", seed + 1000 * index if prompts_file else seed),
            "num_samples": row.get("num_samples", num_samples),
        }
        for index, row in enumerate(rows)
    ]


def count_images(rows: Sequence[dict]) -> int:
    """How many images the run makes (``prompt_rows``' rows), all ranks together, whatever is already written."""
    return sum(int(row["num_samples"]) for row in rows)


def image_settings(sampler, model_identity: Mapping, output_format: str, **extra) -> dict:
    """Everything besides prompt and seed that decides an image: ``sampler.identity()``, the model's identity
    (version, weights fingerprints...), the output format, and ``extra`` (editing's image size)."""
    return {**sampler.identity(), **model_identity, "output_format": output_format, **extra}


def manifest_settings(image_settings: Mapping, sampler, batch_size: int) -> dict:
    """The manifest's shared columns: ``image_settings`` plus what only changes float rounding, the sampler's
    ``speed_switches()`` and the ``batch_size`` (images per UNet call)."""
    return {**image_settings, **sampler.speed_switches(), "batch_size": int(batch_size)}


def sampling_jobs(rows: Sequence[dict], settings: Mapping | None = None) -> list[dict]:
    """One job ``{"prompt", "negative_prompt", "seed", "name"}`` per image: ``num_samples`` images of each of
    ``rows`` (``prompt_rows``), with seeds ``row seed, row seed + 1, ...``; ``settings`` (``image_settings``)
    enter the names."""
    settings = dict(settings or {})
    jobs = []
    for row in rows:
        for sample in range(int(row["num_samples"])):
            seed = int(row["seed"]) + sample
            job = {"prompt": row["prompt"], "negative_prompt": row["negative_prompt"], "seed": seed}
            jobs.append({**job, "name": image_name(len(jobs), **job, settings=settings)})
    return jobs


def pending_jobs(
    jobs: Sequence[dict], output_dir: str, rank: int | None = None, world_size: int | None = None
) -> list[dict]:
    """The jobs whose image is not yet in ``output_dir`` (so a re-run resumes), this rank's share only.

    Under ``torchrun`` (or with ``rank``/``world_size`` given) rank r takes jobs r, r+W, r+2W, ...
    """
    if world_size is None:
        rank, world_size = rank_and_world()
    shard = [job for i, job in enumerate(jobs) if i % world_size == rank]
    return [job for job in shard if existing_image(output_dir, job["name"]) is None]


def collate_jobs(jobs: Sequence[dict]) -> dict:
    """Batch of jobs: a dict of lists (strings stay strings, seeds stay ints); tensors (editing's input images
    and masks, each (1, H, W)) are stacked to (B, 1, H, W)."""
    import torch

    return {
        key: torch.stack([job[key] for job in jobs]) if torch.is_tensor(jobs[0][key]) else [job[key] for job in jobs]
        for key in jobs[0]
    }


def prepare_job_batch(batchdata: dict, device=None, non_blocking: bool = False, **kwargs):
    """``prepare_batch`` of the sampling evaluator: the job batch is the sampler's input, there is no target."""
    return batchdata, None


def report_nothing_to_do(jobs: Sequence[dict], output_dir: str) -> None:
    """Called instead of the sampler when every image (of this rank's share) exists."""
    print(f"All images of this run are already in {output_dir}: nothing to generate.")
