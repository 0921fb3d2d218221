"""Command line: `python -m scripts.prepare_dicom`, prepare own DICOM radiographs with a reports table.

The implementation is `scripts.data.prepare_dicom`.
"""

from scripts.data.prepare_dicom import main

if __name__ == "__main__":
    import fire

    fire.Fire(main, serialize=lambda summary: None)
