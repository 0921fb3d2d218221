"""The plan of a data set: sampled to follow its sources' labels or balanced per finding, prompts from the reports
(text and labels of one study), from templates or from a prompts file, and one-line errors for bad input."""

from __future__ import annotations

import csv
import gzip
import math
from collections import Counter

import pytest

from helpers.data import load_datalist
from helpers.datasets import labels_file
from scripts.data.layout import CHEXPERT_LABELS
from scripts.datasets.plan import DatasetPlanError, make_plan, prompt_rows, template_prompt, write_plan

TEMPLATES = {name: f"{name} template." for name in CHEXPERT_LABELS}


def _write_table(path, rows, columns=("subject_id", "study_id", *CHEXPERT_LABELS)):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


def _table(counts: dict[str, int]) -> list[dict]:
    """One study per row: ``counts[label]`` studies positive for that label alone."""
    rows = []
    for label, count in counts.items():
        for _ in range(count):
            rows.append({"subject_id": 10000000 + len(rows), "study_id": 50000000 + len(rows), label: "1.0"})
    return rows


def test_a_sampled_plan_follows_the_labels_and_is_prefix_stable(tmp_path):
    table = _write_table(tmp_path / "labels.csv", _table({"Cardiomegaly": 300, "Pneumothorax": 100}))
    plan = make_plan("labels", "sample", size=200, labels_file=table, templates=TEMPLATES, seed=5)
    share = sum(row["labels"]["Cardiomegaly"] == 1.0 for row in plan) / len(plan)
    assert 0.65 < share < 0.85  # 3:1 in the table (drawn without replacement: hypergeometric, sd ~0.02)
    assert [row["seed"] for row in plan] == list(range(5, 205)) and [row["index"] for row in plan] == list(range(200))
    assert len({(row["source_study_id"]) for row in plan}) == 200, "a study serves one image by default"
    larger = make_plan("labels", "sample", size=400, labels_file=table, templates=TEMPLATES, seed=5)
    assert [r["source_study_id"] for r in larger[:200]] == [r["source_study_id"] for r in plan]
    other_seed = make_plan("labels", "sample", size=200, labels_file=table, templates=TEMPLATES, seed=6)
    assert [r["source_study_id"] for r in other_seed] != [r["source_study_id"] for r in plan]
    twice = make_plan("labels", "sample", 700, labels_file=table, templates=TEMPLATES, max_images_per_report=2)
    assert max(Counter(r["source_study_id"] for r in twice).values()) == 2


def test_a_balanced_plan_gives_each_finding_its_count_and_keeps_rows_for_the_scarce_ones(tmp_path):
    rows = _table({"Cardiomegaly": 40, "Pleural Effusion": 10})
    # five studies positive for both: a naive draw for Cardiomegaly first could take them all
    rows += [{"subject_id": 1, "study_id": 60000000 + i, "Cardiomegaly": "1.0", "Fracture": "1.0"} for i in range(5)]
    table = _write_table(tmp_path / "labels.csv", rows)
    findings = ["Cardiomegaly", "Fracture", "Pleural Effusion"]
    plan = make_plan("labels", "balanced", per_finding=5, findings=findings, labels_file=table, templates=TEMPLATES)
    assert Counter(row["plan_finding"] for row in plan) == {name: 5 for name in findings}
    for row in plan:
        assert row["labels"][row["plan_finding"]] == 1.0
    assert len({row["source_study_id"] for row in plan}) == 15
    with pytest.raises(DatasetPlanError, match="Finding 'Fracture' has 5 positive prompts, serving 5 of the 6"):
        make_plan("labels", "balanced", per_finding=6, findings=findings, labels_file=table, templates=TEMPLATES)


def test_report_prompts_are_the_studys_sentences_and_its_labels(prepared_synthetic_dir):
    plan = make_plan(
        "reports", "sample", size=10, labels_file=str(labels_file(prepared_synthetic_dir)),
        datalist_file=str(prepared_synthetic_dir / "datalist.json"), dataset_dir=str(prepared_synthetic_dir),
    )  # fmt: skip
    by_study = {str(item["study_id"]): item for item in load_datalist(prepared_synthetic_dir)["training"]}
    with gzip.open(labels_file(prepared_synthetic_dir), "rt", newline="") as f:
        table = {row["study_id"]: row for row in csv.DictReader(f)}
    assert {row["label_source"] for row in plan} == {"label table"}
    for row in plan:
        item = by_study[row["source_study_id"]]
        assert row["prompt"] == " ".join(item["sentences"])
        truth = table[row["source_study_id"]]
        for name in CHEXPERT_LABELS:
            expected = float(truth[name]) if truth[name] else math.nan
            assert row["labels"][name] == expected or (math.isnan(expected) and math.isnan(row["labels"][name]))
        effusion = "effusion" in row["prompt"].lower() and "no pleural effusion" not in row["prompt"].lower()
        assert effusion == (row["labels"]["Pleural Effusion"] == 1.0), row["prompt"]
    assert {r["source_study_id"] for r in plan} <= set(by_study), "reports come from the training split only"


def test_without_a_label_table_report_labels_come_from_the_keyword_rules(prepared_synthetic_dir):
    plan = make_plan(
        "reports", "sample", size=12, datalist_file=str(prepared_synthetic_dir / "datalist.json"),
        dataset_dir=str(prepared_synthetic_dir), seed=1,
    )  # fmt: skip
    assert {row["label_source"] for row in plan} == {"report keywords"}
    for row in plan:
        effusion = "effusion" in row["prompt"].lower() and "no pleural effusion" not in row["prompt"].lower()
        assert effusion == (row["labels"]["Pleural Effusion"] == 1.0), row["prompt"]
        assert all(value == 1.0 or math.isnan(value) for value in row["labels"].values())
    assert any(row["labels"]["Pleural Effusion"] == 1.0 for row in plan)


def test_templates_prompts_file_and_plan_csv(tmp_path):
    assert template_prompt({"Edema": 1.0, "Cardiomegaly": 1.0, "Fracture": -1.0}, TEMPLATES) == (
        "Cardiomegaly template. Edema template."
    )
    assert template_prompt({"Edema": 0.0}, TEMPLATES) == "No Finding template."
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("prompt,Edema,view\nMild edema.,1,AP\nClear lungs.,0,\n", encoding="utf-8")
    plan = make_plan("prompts_file", "sample", size=2, prompts_file=str(prompts), seed=3)
    assert sorted((r["prompt"], r["labels"]["Edema"], r["view"]) for r in plan) == [
        ("Clear lungs.", 0.0, "PA"), ("Mild edema.", 1.0, "AP")
    ]  # fmt: skip
    assert math.isnan(plan[0]["labels"]["Cardiomegaly"])
    assert prompt_rows(plan)[0] == {"prompt": plan[0]["prompt"], "negative_prompt": "", "seed": 3, "num_samples": 1}
    write_plan(plan, str(tmp_path / "plan.csv"))
    with open(tmp_path / "plan.csv", newline="") as f:
        written = list(csv.DictReader(f))
    assert [(r["prompt"], r["seed"], r["Edema"], r["Cardiomegaly"]) for r in written] == [
        (row["prompt"], str(row["seed"]), f"{row['labels']['Edema']:.1f}", "") for row in plan
    ]


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"findings": ["Cardiomegaly", "Heart Big"]}, r"Unknown finding\(s\) \['Heart Big'\] in --plan_findings"),
        ({"size": 0}, "The plan is empty: set --plan_size above 0"),
        ({"mode": "balanced", "findings": []}, "The plan is empty"),
        ({"size": 5}, r"asks for 5 images but its 3 prompts serve at most 3 .* raise --plan_max_images_per_report"),
        ({"labels_file": "SHORT"}, r"lacks the columns \['Pneumothorax', 'Support Devices'\]: a CheXpert-format"),
        ({"labels_file": None}, "This plan needs a label table: set --chexpert_labels_file"),
        ({"source": "prompts_file", "prompts_file": "BAD"}, r"unknown columns \['Pleural Effusions'\]"),
    ],
)
def test_bad_plans_are_one_line_errors_naming_the_fix(tmp_path, arguments, message):
    table = _write_table(tmp_path / "labels.csv", _table({"Cardiomegaly": 3}))
    short = _write_table(tmp_path / "short.csv", _table({"Edema": 1}), ("study_id", *CHEXPERT_LABELS[:-2]))
    bad = tmp_path / "bad.csv"
    bad.write_text("prompt,Pleural Effusions\nEffusion.,1\n", encoding="utf-8")
    paths = {"SHORT": short, "BAD": str(bad)}
    settings = {"source": "labels", "mode": "sample", "size": 2, "labels_file": table, "templates": TEMPLATES}
    settings.update(
        {key: paths.get(value, value) if isinstance(value, str) else value for key, value in arguments.items()}
    )
    with pytest.raises(DatasetPlanError, match=message) as error:
        make_plan(**settings)
    assert "\n" not in str(error.value)
