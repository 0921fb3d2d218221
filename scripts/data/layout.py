"""The MIMIC-CXR file layout, which the synthetic data set copies and preparation reads and writes.

Images are ``files/p<first two digits>/p<subject_id>/s<study_id>/<dicom_id>.jpg`` and each study's report
is ``s<study_id>.txt`` in its subject's folder.
"""

from __future__ import annotations

#: the 14 CheXpert findings of ``mimic-cxr-2.0.0-chexpert.csv``, in its column order
CHEXPERT_LABELS = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Enlarged Cardiomediastinum",
    "Fracture",
    "Lung Lesion",
    "Lung Opacity",
    "No Finding",
    "Pleural Effusion",
    "Pleural Other",
    "Pneumonia",
    "Pneumothorax",
    "Support Devices",
)


def subject_folder(subject_id: int | str) -> str:
    """``p<first two digits>/p<subject_id>``, relative to the ``files`` folder."""
    return f"p{str(subject_id)[:2]}/p{subject_id}"


def image_path(subject_id: int | str, study_id: int | str, dicom_id: str, extension: str = "jpg") -> str:
    """``files/.../s<study_id>/<dicom_id>.<extension>``, relative to the data set's root."""
    return f"files/{subject_folder(subject_id)}/s{study_id}/{dicom_id}.{extension}"
