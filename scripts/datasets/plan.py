"""What a synthetic data set holds: its *plan*, one row per image, drawn from labelled sources.

A plan row is ``{"index", "prompt", "seed", "view", "plan_finding", "source_subject_id", "source_study_id",
"label_source", "labels"}``: ``labels`` maps each of the 14 CheXpert findings to 1.0 (positive), 0.0 (negative), -1.0
(uncertain) or NaN (not mentioned); image ``index`` of the plan is job ``index`` of the inference workflow
(one image per row, seed ``seed + index``), so a row and its image are found by position.

Sources (``plan_source``), each a list of *candidates* ``{"prompt", "labels", ...}``:

- ``reports``: the items of one section of a prepared datalist (``python -m scripts.data.prepare``) whose study
  has a row in a CheXpert-format label table; the prompt is the study's report sentences, so text and labels
  agree by construction (without a table, the labels are the evaluation's keyword rules on the report);
- ``labels``: the rows of a label table alone; the prompt is built from the row's positive findings by the
  templates (``template_prompt``);
- ``prompts_file``: a CSV with a ``prompt`` column and any of the 14 label columns (a missing one is NaN).

Modes (``plan_mode``): ``sample`` draws ``plan_size`` candidates at random, so the plan follows the sources'
label distribution; ``balanced`` draws ``plan_per_finding`` candidates positive for each finding of
``plan_findings`` (the scarcest first, so a common finding never uses up the rows a rare one needs). A
candidate serves at most ``max_images_per_report`` images (each with its own seed). Draws are seeded and
prefix-stable: a larger ``sample`` plan starts with the rows of a smaller one.

Every check here runs before any model loads; a problem is one ``DatasetPlanError`` line naming the fix.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping, Sequence

import numpy as np

from scripts.common.distributed import is_main_process
from scripts.common.errors import CxrLdmError
from scripts.common.files import atomic_path
from scripts.data.layout import CHEXPERT_LABELS
from scripts.evaluation.labels import label_value, read_label_table
from scripts.evaluation.plan import report_text
from scripts.sampling.jobs import coerce_text

SOURCES = ("reports", "labels", "prompts_file")
MODES = ("sample", "balanced")
NO_FINDING = "No Finding"
#: columns a plan prompts file may have besides the 14 labels
PROMPTS_FILE_COLUMNS = ("prompt", "view", "subject_id", "study_id")
#: columns of plan.csv before the labels
PLAN_COLUMNS = (
    "index",
    "prompt",
    "seed",
    "view",
    "plan_finding",
    "source_subject_id",
    "source_study_id",
    "label_source",
)
LABELS_HELP = (
    "a CheXpert-format table has study_id and the 14 label columns "
    + ", ".join(CHEXPERT_LABELS)
    + " (like MIMIC-CXR-JPG's mimic-cxr-2.0.0-chexpert.csv.gz)"
)


class DatasetPlanError(CxrLdmError, ValueError):
    """A data-set plan that cannot be made from its inputs."""


def check_findings(findings) -> list[str]:
    """``findings`` as a list of CheXpert label names; an unknown name is an error naming the known ones."""
    names = [findings] if isinstance(findings, str) else list(findings or [])
    unknown = [name for name in names if name not in CHEXPERT_LABELS]
    if unknown:
        raise DatasetPlanError(
            f"Unknown finding(s) {unknown} in --plan_findings: use CheXpert label names, {list(CHEXPERT_LABELS)}."
        )
    return names


def _labels_of(row: Mapping, where: str) -> dict[str, float]:
    labels = {}
    for name in CHEXPERT_LABELS:
        try:
            labels[name] = label_value(row.get(name, ""))
        except ValueError:
            raise DatasetPlanError(
                f"{where}: label {name!r} is {row.get(name)!r}; label cells are 1, 0, -1 or blank."
            ) from None
    return labels


def read_labelled_table(path: str | None, need_study_id: bool) -> list[dict]:
    """Rows of a CheXpert-format table: ``{"labels", "subject_id", "study_id"}`` (ids as text without ``s``/``p``)."""
    if not path:
        raise DatasetPlanError(
            "This plan needs a label table: set --chexpert_labels_file to a CheXpert-format CSV (" + LABELS_HELP + ")."
        )
    if not os.path.isfile(os.fspath(path)):
        raise DatasetPlanError(f"Label table '{path}' not found: check --chexpert_labels_file.")
    columns, rows = read_label_table(path)
    missing = [c for c in (("study_id",) if need_study_id else ()) + CHEXPERT_LABELS if c not in columns]
    if missing:
        raise DatasetPlanError(f"Label table '{path}' lacks the columns {missing}: {LABELS_HELP}.")
    return [
        {
            "labels": _labels_of(row, f"Label table '{path}' line {line}"),
            "subject_id": str(row.get("subject_id", "") or "").lstrip("p"),
            "study_id": str(row.get("study_id", "") or "").lstrip("s"),
        }
        for line, row in enumerate(rows, start=2)
    ]


def template_prompt(labels: Mapping[str, float], templates: Mapping[str, str]) -> str:
    """The prompt of a label set: the template sentence of each positive finding in CheXpert order, or the
    ``No Finding`` sentence when none other is positive (uncertain and negative findings are not named)."""
    positives = [name for name in CHEXPERT_LABELS if name != NO_FINDING and labels.get(name) == 1.0]
    return " ".join(templates[name] for name in positives) if positives else templates[NO_FINDING]


def check_templates(templates: Mapping[str, str]) -> dict[str, str]:
    """The templates, one sentence per CheXpert finding; a missing or unknown finding is an error."""
    templates = dict(templates or {})
    missing = [name for name in CHEXPERT_LABELS if not str(templates.get(name, "")).strip()]
    unknown = [name for name in templates if name not in CHEXPERT_LABELS]
    if missing or unknown:
        raise DatasetPlanError(
            f"--plan_templates needs one sentence for each CheXpert finding (missing {missing}, unknown {unknown})."
        )
    return {name: str(text).strip() for name, text in templates.items()}


def keyword_labels(text: str) -> dict[str, float]:
    """Labels of a report without a label table: 1.0 for the findings the evaluation's keyword rules find in it
    (``scripts.evaluation.pathology``: negations skipped, no uncertainty), NaN (not mentioned) for the others."""
    from scripts.evaluation.pathology import text_findings

    found = text_findings(text)
    return {name: 1.0 if name in found else math.nan for name in CHEXPERT_LABELS}


def report_candidates(datalist_file: str, dataset_dir: str, section: str, labels_file: str | None) -> list[dict]:
    """Candidates of the ``reports`` source: datalist items of ``section`` with a report, labelled by the study's
    row of ``labels_file`` (items without one are left out), or by keyword rules on the report without a table."""
    from scripts.data.images import datalist_items

    table = {row["study_id"]: row for row in read_labelled_table(labels_file, True)} if labels_file else None
    try:
        items = datalist_items(datalist_file, section, dataset_dir)
    except (FileNotFoundError, ValueError) as error:
        raise DatasetPlanError(f"{error} (plan_source 'reports' reads --datalist_file, --plan_section).") from None
    candidates = []
    for item in items:
        prompt, study = report_text(item), str(item.get("study_id", "")).lstrip("s")
        if not prompt or (table is not None and study not in table):
            continue
        labels = table[study]["labels"] if table is not None else keyword_labels(prompt)
        candidates.append(
            {"prompt": prompt, "labels": labels, "subject_id": str(item.get("subject_id", "")), "study_id": study,
             "label_source": "label table" if table is not None else "report keywords"}
        )  # fmt: skip
    if not candidates:
        raise DatasetPlanError(
            f"No item of section '{section}' of '{datalist_file}' has both a report and a row in '{labels_file}': "
            "give the label table of the prepared data (matched by study_id)."
        )
    return candidates


def prompts_file_candidates(path: str | None) -> list[dict]:
    """Candidates of the ``prompts_file`` source: rows of a CSV with ``prompt`` and label columns."""
    if not path or not os.path.isfile(os.fspath(path)):
        raise DatasetPlanError(f"Plan prompts file '{path}' not found: set --plan_prompts_file to a CSV.")
    columns, rows = read_label_table(path)
    if "prompt" not in columns:
        raise DatasetPlanError(f"Plan prompts file '{path}' has no 'prompt' column (columns: {columns}).")
    unknown = [c for c in columns if c not in PROMPTS_FILE_COLUMNS + CHEXPERT_LABELS]
    if unknown:
        raise DatasetPlanError(
            f"Plan prompts file '{path}' has unknown columns {unknown}: allowed are {list(PROMPTS_FILE_COLUMNS)} and "
            f"the CheXpert labels {list(CHEXPERT_LABELS)}."
        )
    candidates = []
    for line, row in enumerate(rows, start=2):
        prompt = coerce_text(row.get("prompt", "")).strip()
        if prompt:
            candidate = {"prompt": prompt, "labels": _labels_of(row, f"Plan prompts file '{path}' line {line}")}
            candidate["label_source"] = "prompts file"
            candidate.update({k: str(row.get(k, "") or "") for k in ("view", "subject_id", "study_id")})
            candidates.append(candidate)
    return candidates


def _passes(count: int, seed: int, stream: int, passes: int):
    """Candidate indices, a fresh seeded permutation of ``range(count)`` per pass."""
    for number in range(passes):
        yield from np.random.default_rng([int(seed), stream, number]).permutation(count).tolist()


def sample_rows(candidates: Sequence[dict], size: int, seed: int, max_per_candidate: int) -> list[tuple[int, str]]:
    """(candidate index, "") of a ``sample`` plan of ``size`` rows."""
    capacity = len(candidates) * max_per_candidate
    if size > capacity:
        raise DatasetPlanError(
            f"The plan asks for {size} images but its {len(candidates)} prompts serve at most {capacity} with "
            f"--plan_max_images_per_report {max_per_candidate}: lower --plan_size or raise "
            "--plan_max_images_per_report."
        )
    draws = _passes(len(candidates), seed, 0, max_per_candidate)
    return [(next(draws), "") for _ in range(size)]


def balanced_rows(
    candidates: Sequence[dict], findings: Sequence[str], per_finding: int, seed: int, max_per_candidate: int
) -> list[tuple[int, str]]:
    """(candidate index, finding) of a ``balanced`` plan: ``per_finding`` rows positive for each finding."""
    positives = {f: [i for i, c in enumerate(candidates) if c["labels"].get(f) == 1.0] for f in findings}
    used = [0] * len(candidates)
    chosen: dict[str, list[int]] = {}
    for finding in sorted(findings, key=lambda f: (len(positives[f]), CHEXPERT_LABELS.index(f))):
        members, picked = positives[finding], []
        for position in _passes(len(members), seed, 1 + CHEXPERT_LABELS.index(finding), max_per_candidate):
            if len(picked) == per_finding:
                break
            if used[members[position]] < max_per_candidate:
                used[members[position]] += 1
                picked.append(members[position])
        if len(picked) < per_finding:
            raise DatasetPlanError(
                f"Finding {finding!r} has {len(members)} positive prompts, serving {len(picked)} of the "
                f"{per_finding} images asked (--plan_max_images_per_report {max_per_candidate}, rows shared with "
                "scarcer findings): lower --plan_per_finding, raise --plan_max_images_per_report or leave it out "
                "of --plan_findings."
            )
        chosen[finding] = picked
    return [(index, finding) for finding in findings for index in chosen[finding]]


def make_plan(
    source: str = "reports",
    mode: str = "sample",
    size: int = 1000,
    per_finding: int = 100,
    findings: Sequence[str] = CHEXPERT_LABELS,
    seed: int = 0,
    max_images_per_report: int = 1,
    view: str = "PA",
    labels_file: str | None = None,
    datalist_file: str | None = None,
    dataset_dir: str | None = None,
    section: str = "training",
    prompts_file: str | None = None,
    templates: Mapping[str, str] | None = None,
) -> list[dict]:
    """The plan's rows (module docstring), checked; raises ``DatasetPlanError`` before anything loads."""
    from scripts.sampling.settings import as_int

    if source not in SOURCES or mode not in MODES:
        raise DatasetPlanError(
            f"--plan_source must be one of {list(SOURCES)} and --plan_mode one of {list(MODES)}, got {source!r}, "
            f"{mode!r}."
        )
    findings = check_findings(findings)
    size, per_finding = as_int(size, "--plan_size", 0), as_int(per_finding, "--plan_per_finding", 0)
    max_images = as_int(max_images_per_report, "--plan_max_images_per_report", 1)
    if (mode == "sample" and size == 0) or (mode == "balanced" and (per_finding == 0 or not findings)):
        raise DatasetPlanError(
            "The plan is empty: set --plan_size above 0 (mode sample), or --plan_per_finding above 0 and at least one "
            "of --plan_findings (mode balanced)."
        )
    if source == "reports":
        candidates = report_candidates(datalist_file, dataset_dir, section, labels_file)
    elif source == "labels":
        texts = check_templates(templates)
        rows = read_labelled_table(labels_file, need_study_id=False)
        candidates = [
            {**row, "prompt": template_prompt(row["labels"], texts), "label_source": "label table (template prompt)"}
            for row in rows
        ]
    else:
        candidates = prompts_file_candidates(prompts_file)
    if not candidates:
        raise DatasetPlanError(f"The plan is empty: its source ({source}) holds no rows with a prompt.")
    if mode == "sample":
        drawn = sample_rows(candidates, size, seed, max_images)
    else:
        drawn = balanced_rows(candidates, findings, per_finding, seed, max_images)
    return [
        {
            "index": index,
            "prompt": candidates[c]["prompt"],
            "seed": int(seed) + index,
            "view": candidates[c].get("view") or str(view),
            "plan_finding": finding,
            "source_subject_id": candidates[c].get("subject_id", ""),
            "source_study_id": candidates[c].get("study_id", ""),
            "label_source": candidates[c]["label_source"],
            "labels": dict(candidates[c]["labels"]),
        }
        for index, (c, finding) in enumerate(drawn)
    ]


def prompt_rows(plan: Sequence[dict], negative_prompt="") -> list[dict]:
    """The inference workflow's prompt rows of a plan: one image per row, with the row's seed."""
    negative = coerce_text(negative_prompt, key="negative_prompt")
    return [{"prompt": r["prompt"], "negative_prompt": negative, "seed": r["seed"], "num_samples": 1} for r in plan]


def label_text(value: float) -> str:
    """A label as the CheXpert tables write it: ``1.0``, ``0.0``, ``-1.0`` or blank."""
    return "" if value is None or math.isnan(value) else f"{float(value):.1f}"


def write_plan(plan: Sequence[dict], path: str) -> str | None:
    """``plan.csv`` (rank 0): ``PLAN_COLUMNS`` then the 14 labels; returns ``path``."""
    if not is_main_process():
        return None
    with atomic_path(path) as temporary, open(temporary, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow([*PLAN_COLUMNS, *CHEXPERT_LABELS])
        for row in plan:
            labels = [label_text(row["labels"][name]) for name in CHEXPERT_LABELS]
            writer.writerow([*(row[column] for column in PLAN_COLUMNS), *labels])
    return path
