"""Which findings an image stands for: its labels when the data carries them, else keyword rules on its text.

The per-pathology breakdown of the evaluation compares, for each CheXpert finding, the generated images
whose prompt names it with the real images whose report names it. A finding is *positive* for an item

1. when labels are given for it (a ``labels`` dict of the item, e.g. CheXGenBench's ``chexpert_labels``
   column, or the study's row of a CheXpert label file): the finding's label is 1 (0, -1 uncertain and
   blank are not positive);
2. otherwise by ``KEYWORD_RULES`` on its text: a sentence mentions one of the finding's patterns
   (case-insensitive) and no negation cue (``NEGATION``: no, without, negative for, free of, clear of,
   resolved, absence of, not) comes before it in that sentence. "No Finding" is positive when no other
   finding except Support Devices is (CheXpert's definition).

The rules are deliberately simple (no uncertainty or double negation handling, e.g. "cannot exclude
pneumonia" counts as pneumonia); a label file gives exact groups.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

from scripts.data.layout import CHEXPERT_LABELS

NO_FINDING = "No Finding"
SUPPORT_DEVICES = "Support Devices"
#: CheXpert findings, in the order of the label files (and of CheXGenBench's per-pathology tables)
FINDINGS = CHEXPERT_LABELS
#: finding -> regular expressions (case-insensitive) of a sentence that names it
KEYWORD_RULES = {
    "Atelectasis": [r"atelecta"],
    "Cardiomegaly": [
        r"cardiomegaly",
        r"\b(heart|cardiac silhouette|cardiac size|heart size)\b[^.;]*\b(enlarged|enlargement|large)\b",
        r"\benlarged (heart|cardiac)",
    ],
    "Consolidation": [r"consolidat"],
    "Edema": [r"o?edema", r"vascular congestion", r"heart failure"],
    "Enlarged Cardiomediastinum": [r"(widen|enlarg)\w*[^.;]*mediastin", r"mediastin\w*[^.;]*(widen|enlarg)"],
    "Fracture": [r"fractur"],
    "Lung Lesion": [r"nodul", r"\bmass(es)?\b", r"\blesions?\b", r"\btumou?r", r"neoplas"],
    "Lung Opacity": [r"opacit", r"infiltrat", r"hazy|haziness"],
    "Pleural Effusion": [r"effusion"],
    "Pleural Other": [r"pleural thicken", r"pleural plaque", r"fibrothorax", r"pleural scar"],
    "Pneumonia": [r"pneumonia", r"infection"],
    "Pneumothorax": [r"pneumothora"],
    SUPPORT_DEVICES: [
        r"\btubes?\b",
        r"catheter",
        r"\blines?\b",
        r"pacemaker",
        r"\bpacer\b",
        r"\bstents?\b",
        r"\bclips?\b",
        r"\bwires?\b",
        r"\bpicc\b",
        r"\bports?\b",
        r"\bdevices?\b",
        r"\bdrains?\b",
    ],  # fmt: skip
}
NEGATION = r"\b(no|without|negative for|free of|clear of|resolved|absence of|not)\b"
_SENTENCES = re.compile(r"(?<=[.;!?])\s+|\n+")


def _mentions(sentence: str, patterns: Sequence[str]) -> bool:
    for pattern in patterns:
        for match in re.finditer(pattern, sentence, flags=re.IGNORECASE):
            if not re.search(NEGATION, sentence[: match.start()], flags=re.IGNORECASE):
                return True
    return False


def text_findings(text: str) -> set[str]:
    """Findings that ``text`` (report sentences or a prompt) states as present, by ``KEYWORD_RULES``."""
    sentences = [s for s in _SENTENCES.split(str(text or "")) if s.strip()]
    found = {finding for finding, patterns in KEYWORD_RULES.items() if any(_mentions(s, patterns) for s in sentences)}
    if not (found - {SUPPORT_DEVICES}):
        found.add(NO_FINDING)
    return found


def label_findings(labels: Mapping[str, object]) -> set[str]:
    """Findings whose label is 1 in a CheXpert-style ``labels`` dict (values 1, 0, -1, blank or NaN)."""
    positive = set()
    for finding, value in labels.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if not math.isnan(number) and number == 1.0:
            positive.add(str(finding))
    return positive


def item_findings(item: Mapping, text: str, labels_by_study: Mapping[str, Mapping] | None = None) -> tuple[set, str]:
    """(positive findings, how they were decided: ``"labels"`` or ``"keywords"``) of one item.

    ``item["labels"]`` (a dict) wins, then ``labels_by_study[str(item["study_id"])]``, then ``text``.
    """
    if isinstance(item.get("labels"), Mapping):
        return label_findings(item["labels"]), "labels"
    study = str(item.get("study_id", "")).lstrip("s")
    if labels_by_study and study in labels_by_study:
        return label_findings(labels_by_study[study]), "labels"
    return text_findings(text), "keywords"


def groups(findings_per_item: Sequence[set[str]]) -> dict[str, list[int]]:
    """finding -> indices of the items positive for it, in ``FINDINGS`` order (empty groups left out)."""
    result = {}
    for finding in FINDINGS:
        members = [i for i, found in enumerate(findings_per_item) if finding in found]
        if members:
            result[finding] = members
    return result
