"""Report text → FINDINGS / IMPRESSION → sentences, on header variants seen in real chest X-ray reports."""

from __future__ import annotations

import pytest

from scripts.data.report_sections import classify_header, extract_sections, report_sentences, split_sentences

PREAMBLE = (
    " EXAMINATION:  CHEST (PA AND LAT)\n \n INDICATION:  ___F with cough  // eval for pneumonia\n \n"
    " COMPARISON:  None.\n \n"
)

# (name, report text, expected findings, expected impression)
TRICKY_REPORTS = [
    (
        "standard upper case, text on the next lines",
        PREAMBLE
        + " FINDINGS: \n \n The lungs are clear.  Heart size is\n normal.\n \n IMPRESSION: \n \n No acute process.\n",
        "The lungs are clear. Heart size is normal.",
        "No acute process.",
    ),
    (
        "misspelled FINIDNGS / IMPRESSON",
        PREAMBLE + " FINIDNGS: Small left effusion.\n IMPRESSON: Effusion.\n",
        "Small left effusion.",
        "Effusion.",
    ),
    (
        "misspelled FIDNINGS / IMPERSSION",
        " FIDNINGS:  No pneumothorax.\n\n IMPERSSION:  Normal chest.\n",
        "No pneumothorax.",
        "Normal chest.",
    ),
    (
        "FINDINGS AND IMPRESSION merged",
        PREAMBLE + " FINDINGS AND IMPRESSION:\n Mild cardiomegaly.  No effusion.\n",
        "",
        "Mild cardiomegaly. No effusion.",
    ),
    (
        "FINDINGS/IMPRESSION with a slash",
        " FINDINGS/IMPRESSION: Right lower lobe opacity.\n",
        "",
        "Right lower lobe opacity.",
    ),
    (
        "impression only, no findings section",
        PREAMBLE + " IMPRESSION:  No acute cardiopulmonary process.\n",
        "",
        "No acute cardiopulmonary process.",
    ),
    (
        "findings only, no impression section",
        " FINDINGS:  Lungs are clear.\n",
        "Lungs are clear.",
        "",
    ),
    (
        "lower case headers",
        " findings: lungs are clear.\n impression: normal.\n",
        "lungs are clear.",
        "normal.",
    ),
    (
        "title case headers with text on the same line",
        " Findings: Lungs are clear.\n\n Impression: Normal study.\n",
        "Lungs are clear.",
        "Normal study.",
    ),
    (
        "extra white space before the colon and tabs",
        "   FINDINGS   :\t\tThere is a   small   effusion.\n\n\n   IMPRESSION :   Effusion.   \n",
        "There is a small effusion.",
        "Effusion.",
    ),
    (
        "headers without a colon on their own line",
        " FINDINGS\n Heart is enlarged.\n IMPRESSION\n Cardiomegaly.\n",
        "Heart is enlarged.",
        "Cardiomegaly.",
    ),
    (
        "singular FINDING and plural IMPRESSIONS",
        " FINDING: Left apical pneumothorax.\n IMPRESSIONS: Pneumothorax.\n",
        "Left apical pneumothorax.",
        "Pneumothorax.",
    ),
    (
        "CONCLUSION instead of IMPRESSION",
        " FINDINGS: Clear lungs.\n CONCLUSION: Normal.\n",
        "Clear lungs.",
        "Normal.",
    ),
    (
        "numbered impression list",
        " FINDINGS: See below.\n IMPRESSION:\n 1. Small right effusion.\n 2. No pneumothorax.\n",
        "See below.",
        "1. Small right effusion. 2. No pneumothorax.",
    ),
    (
        "header in the middle of a wrapped line",
        " FINDINGS: The lungs are clear. IMPRESSION: Normal chest\n radiograph.\n",
        "The lungs are clear.",
        "Normal chest radiograph.",
    ),
    (
        "section after the impression is excluded",
        " IMPRESSION: Small effusion.\n \n NOTIFICATION:  Discussed with Dr. ___ at 10:15 on ___.\n",
        "",
        "Small effusion.",
    ),
    (
        "recommendation section in lower case after findings",
        " FINDINGS: Nodule in the right upper lobe.\n Recommendation(s): CT in 3 months.\n IMPRESSION: Nodule.\n",
        "Nodule in the right upper lobe.",
        "Nodule.",
    ),
    (
        "a colon inside a sentence of the findings is not a header",
        " FINDINGS:\n Lines and tubes: the catheter tip is in the SVC.\n No effusion.\n IMPRESSION: Catheter in "
        "place.\n",
        "Lines and tubes: the catheter tip is in the SVC. No effusion.",
        "Catheter in place.",
    ),
    (
        "an upper-case abbreviation in the middle of a line is not a header",
        " FINDINGS: Right PICC ends in the SVC. PICC: unchanged.  COMPARISON: ___.\n IMPRESSION: Line in place.\n",
        "Right PICC ends in the SVC. PICC: unchanged.",
        "Line in place.",
    ),
    (
        "PA AND LATERAL CHEST FINDINGS header",
        " PA AND LATERAL CHEST FINDINGS: Normal heart size.\n IMPRESSION: Normal.\n",
        "Normal heart size.",
        "Normal.",
    ),
    (
        "WET READ and FINAL REPORT preamble are not findings",
        " WET READ: ___ ___ 9:45 PM\n  Possible effusion.\n \n                                 FINAL REPORT\n"
        " FINDINGS: Small effusion.\n IMPRESSION: Effusion.\n",
        "Small effusion.",
        "Effusion.",
    ),
    (
        "no sections at all",
        " EXAMINATION:  CHEST\n \n INDICATION:  ___ \n \n Portable chest radiograph.  Lungs clear.\n",
        "",
        "",
    ),
    (
        "repeated findings sections are joined",
        " FINDINGS: Left effusion.\n ADDENDUM: none.\n FINDINGS: Right effusion.\n",
        "Left effusion. Right effusion.",
        "",
    ),
]


@pytest.mark.parametrize("name, text, findings, impression", TRICKY_REPORTS, ids=[case[0] for case in TRICKY_REPORTS])
def test_extract_sections_handles_header_variants(name, text, findings, impression):
    assert extract_sections(text) == {"findings": findings, "impression": impression}


def test_table_has_at_least_fifteen_header_variants():
    assert len({case[0] for case in TRICKY_REPORTS}) >= 15


@pytest.mark.parametrize(
    "label, kind",
    [
        ("FINDINGS", "findings"),
        ("FINDNGS", "findings"),
        ("IMPRESION", "impression"),
        ("FINDINGS AND IMPRESSION", "impression"),
        ("TECHNIQUE", "other"),
        ("Comparison", "other"),
        ("Lines and tubes", None),
        ("FIND", "other"),  # too short to be a misspelled FINDINGS: an unknown upper-case section
        ("EXTRA NOTE", "other"),
    ],
)
def test_classify_header(label, kind):
    assert classify_header(label) == kind
    assert classify_header(label, require_target=True) == (kind if kind in ("findings", "impression") else None)


def test_split_sentences_keeps_decimals_abbreviations_and_removes_list_numbers():
    text = (
        "1. A 1.5 cm nodule, e.g. a granuloma, is seen.  2. Compare with Dr. ___ approx. 3 weeks ago!\n"
        "3) Is there a left-\n sided effusion? ___.  Measures 5 mm. No pneumothorax."
    )
    assert split_sentences(text) == [
        "A 1.5 cm nodule, e.g. a granuloma, is seen.",
        "Compare with Dr. ___ approx. 3 weeks ago!",
        "Is there a left-sided effusion?",
        "Measures 5 mm.",
        "No pneumothorax.",
    ]


def test_split_sentences_splits_on_paragraphs_without_a_full_stop():
    assert split_sentences("Heart size normal\n\nNo effusion") == ["Heart size normal", "No effusion"]


def test_report_sentences_are_findings_then_impression_in_order():
    text = " IMPRESSION:\n 1. Effusion.\n 2. Cardiomegaly.\n\n FINDINGS: Large left\n effusion.  Big heart.\n"
    assert report_sentences(text) == ["Large left effusion.", "Big heart.", "Effusion.", "Cardiomegaly."]
    assert report_sentences(" INDICATION: cough.\n") == []


def test_report_header_holds_the_findings():
    text = (
        "                                 FINAL REPORT\n"
        " EXAMINATION:  Chest radiograph.\n\n"
        " REPORT:  The heart is mildly enlarged.  Small right pleural effusion.\n\n"
        " NOTIFICATION:  Discussed with the team.\n"
    )
    assert report_sentences(text) == ["The heart is mildly enlarged.", "Small right pleural effusion."]


@pytest.mark.parametrize(
    "text, sentences, from_fallback",
    [
        # no header at all: the last paragraph, as MIMIC-CXR's own extractor does
        (" Comparison to prior.\n\n Lungs are clear.  No effusion.\n", ["Lungs are clear.", "No effusion."], True),
        # a trailing named section other than findings/impression is passed over
        (" Mild cardiomegaly.\n\n COMPARISON: None.\n", ["Mild cardiomegaly."], True),
        # recognised sections win over the fallback
        (" FINDINGS: Normal heart.\n\n Trailing text.\n", ["Normal heart.", "Trailing text."], False),
        (" INDICATION: ___\n\n COMPARISON: None.\n", [], False),
    ],
)
def test_reports_without_sections_fall_back_to_the_last_paragraph(text, sentences, from_fallback):
    from scripts.data.report_sections import report_sentences_with_fallback

    found, fallback = report_sentences_with_fallback(text)
    assert fallback is from_fallback
    assert found == sentences
