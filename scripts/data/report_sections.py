"""Free-text radiology report → FINDINGS / IMPRESSION sections → sentences.

MIMIC-CXR reports are plain text with section headers such as ``FINDINGS:`` and ``IMPRESSION:``, written
by hand: headers are misspelled (``FINIDNGS:``, ``IMPRESSON:``), merged (``FINDINGS AND IMPRESSION:``),
lower- or title-case, missing their colon, padded with spaces, placed mid-line after a wrapped
sentence, or absent. Sentences wrap across lines and impressions are often numbered lists.
Everything here is rules (no model download), so preparation is fast and reproducible.

Public functions:
    extract_sections(text) -> {"findings": str, "impression": str}
    split_sentences(text) -> list[str]
    report_sentences(text) -> list[str]   findings sentences, then impression sentences
    report_sentences_with_fallback(text) -> (list[str], bool)   the same, else the last paragraph's
"""

from __future__ import annotations

import re

FINDINGS_WORDS = ("FINDINGS", "FINDING")
IMPRESSION_WORDS = ("IMPRESSION", "IMPRESSIONS", "CONCLUSION", "CONCLUSIONS")

#: Other section names of chest X-ray reports; they end a FINDINGS/IMPRESSION section whatever their case.
OTHER_SECTIONS = {
    "ADDENDUM",
    "CLINICAL HISTORY",
    "CLINICAL INDICATION",
    "CLINICAL INFORMATION",
    "COMPARISON",
    "COMPARISONS",
    "EXAM",
    "EXAMINATION",
    "HISTORY",
    "INDICATION",
    "INDICATIONS",
    "NOTIFICATION",
    "PROCEDURE",
    "REASON FOR EXAM",
    "REASON FOR EXAMINATION",
    "RECOMMENDATION",
    "RECOMMENDATIONS",
    "REFERENCE EXAM",
    "TECHNIQUE",
    "TYPE OF EXAMINATION",
    "WET READ",
}

#: Words ending in "." that do not end a sentence.
ABBREVIATIONS = {
    "approx",
    "apprx",
    "cf",
    "dr",
    "e.g",
    "eg",
    "fig",
    "i.e",
    "ie",
    "incl",
    "mr",
    "mrs",
    "ms",
    "st",
    "vs",
    "viz",
}

# A header at the start of a line: a short label (letters, spaces, "&", "/", "-") and a colon.
_LINE_HEADER = re.compile(r"^[ \t]*(?P<label>[A-Za-z][A-Za-z &/()'-]{0,48}?)[ \t]*:", re.MULTILINE)
# An upper-case header after the end of a sentence on the same line ("... normal. IMPRESSION: ...").
_INLINE_HEADER = re.compile(r"(?<=[.!?])[ \t]+(?P<label>[A-Z][A-Z &/]{2,40}?)[ \t]*:")
# A line holding only a header word without a colon ("FINDINGS", "Impression").
_BARE_HEADER = re.compile(r"^[ \t]*(?P<label>[A-Za-z][A-Za-z &/]{3,40}?)[ \t]*$", re.MULTILINE)


def _edit_distance(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, 1):
        current = [i]
        for j, char_b in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


def _like(word: str, targets: tuple[str, ...]) -> bool:
    """Whether ``word`` is one of ``targets`` up to the typos seen in real reports (≤ 2 edits, ≥ 6 letters)."""
    return len(word) >= 6 and any(_edit_distance(word, target) <= 2 for target in targets)


def classify_header(label: str, require_target: bool = False, known_only: bool = False) -> str | None:
    """Section kind of a header label: ``"findings"``, ``"impression"``, ``"other"``, or ``None`` (not a header).

    A label naming both findings and impression (``FINDINGS AND IMPRESSION``) counts as ``"impression"``.
    A label that is neither counts as another section only when it is upper case or a known section name,
    so that a sentence such as "Lines and tubes: unchanged" is not mistaken for a header; with
    ``known_only`` (headers in the middle of a line) only known section names count.
    """
    words = re.sub(r"[^A-Za-z ]", " ", re.sub(r"\((s)\)", r"\1", label, flags=re.IGNORECASE)).upper().split()
    if not words or len(words) > 6:
        return None
    if words == ["REPORT"] and not require_target and not known_only:
        # "REPORT:" heads the body of reports written without FINDINGS / IMPRESSION headers
        return "findings"
    findings = any(_like(word, FINDINGS_WORDS) for word in words)
    impression = any(_like(word, IMPRESSION_WORDS) for word in words)
    if impression:
        return "impression"
    if findings:
        return "findings"
    if require_target:
        return None
    if " ".join(words) in OTHER_SECTIONS or (label.isupper() and len(words) <= 4 and not known_only):
        return "other"
    return None


def extract_sections(text: str) -> dict[str, str]:
    """FINDINGS and IMPRESSION text of a report (each ``""`` when absent), whitespace collapsed.

    A section runs from its header to the next recognised header. Repeated sections are joined with a space.
    """
    return {kind: " ".join(" ".join(bodies).split()) for kind, bodies in _section_bodies(text).items()}


def _section_bodies(text: str) -> dict[str, list[str]]:
    """Raw text (line breaks kept) of each FINDINGS / IMPRESSION section of ``text``, in order."""
    headers: dict[int, tuple[int, str]] = {}  # start -> (end of header, kind)
    for pattern, options in (
        (_LINE_HEADER, {}),
        (_INLINE_HEADER, {"known_only": True}),
        (_BARE_HEADER, {"require_target": True}),
    ):
        for match in pattern.finditer(text):
            kind = classify_header(match.group("label"), **options)
            if kind is None:
                continue
            start, end = match.start("label"), match.end()
            if not any(start < other_end and other_start < end for other_start, (other_end, _) in headers.items()):
                headers[start] = (end, kind)
    sections = {"findings": [], "impression": []}
    starts = sorted(headers)
    for index, start in enumerate(starts):
        end_of_header, kind = headers[start]
        if kind == "other":
            continue
        stop = starts[index + 1] if index + 1 < len(starts) else len(text)
        body = text[end_of_header:stop].strip()
        if body:
            sections[kind].append(body)
    return sections


# "1. ", "2) " enumerators at the start of the text, of a line, or after the end of a sentence.
_ENUMERATOR = re.compile(r"(?:(?<=^)|(?<=\n)|(?<=[.!?:;])|(?<=\s\s))[ \t]*\(?\d{1,2}[.)](?=\s+[A-Za-z_])")
_SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)")


def split_sentences(text: str) -> list[str]:
    """Sentences of a report section, in order, whitespace collapsed, list numbers removed.

    A sentence ends at ".", "!" or "?" followed by white space, except after abbreviations (``e.g.``,
    ``approx.``, ``Dr.``); decimals (``1.5 cm``) do not end sentences. Pieces without a letter
    (``"."``, ``"___."``) are dropped.
    """
    text = re.sub(r"(?<=[A-Za-z])-[ \t]*\n\s*(?=[A-Za-z])", "-", text)  # "left-\n sided" wrapped at a hyphen
    text = _ENUMERATOR.sub("\n\n", text)
    pieces: list[str] = []
    for block in re.split(r"\n\s*\n", text):  # list items and paragraphs are sentence boundaries
        block = " ".join(block.split())
        start = 0
        for match in _SENTENCE_END.finditer(block):
            last_word = block[start : match.start()].rsplit(" ", 1)[-1].lower()
            if match.group() == "." and last_word in ABBREVIATIONS:
                continue
            pieces.append(block[start : match.end()])
            start = match.end()
        pieces.append(block[start:])
    return [piece.strip() for piece in pieces if re.search(r"[A-Za-z]{2}", piece)]


def report_sentences(text: str) -> list[str]:
    """Findings sentences followed by impression sentences of a report (``[]`` when it has neither)."""
    bodies = _section_bodies(text)
    return [
        sentence for kind in ("findings", "impression") for body in bodies[kind] for sentence in split_sentences(body)
    ]


def last_paragraph_sentences(text: str) -> list[str]:
    """Sentences of the last paragraph of a report that is not another named section (``[]`` if none).

    The fallback of MIMIC-CXR's own section extractor for reports without FINDINGS / IMPRESSION headers:
    their conclusion is usually the last paragraph. Paragraphs are separated by blank lines; one that
    starts with another section's header (``COMPARISON:``, ``NOTIFICATION:``) is passed over.
    """
    for paragraph in reversed(re.split(r"\n[ \t]*\n", text)):
        header = _LINE_HEADER.match(paragraph.lstrip("\n"))
        if header and classify_header(header.group("label")) == "other":
            continue
        sentences = split_sentences(paragraph)
        if sentences:
            return sentences
    return []


def report_sentences_with_fallback(text: str) -> tuple[list[str], bool]:
    """``report_sentences(text)``, or the last paragraph's when the report has no recognised section.

    Returns the sentences and whether the last-paragraph fallback gave them.
    """
    sentences = report_sentences(text)
    if sentences:
        return sentences, False
    sentences = last_paragraph_sentences(text)
    return sentences, bool(sentences)
