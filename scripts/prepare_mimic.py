"""Command line: `python -m scripts.prepare_mimic`, prepare MIMIC-CXR or own data for training.

The implementation is `scripts.data.prepare`.
"""

from scripts.data.prepare import main

if __name__ == "__main__":
    import fire

    fire.Fire(main)
