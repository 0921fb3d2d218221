"""Command line: `python -m scripts.synthetic_mimic`, a synthetic MIMIC-format data set.

The implementation is `scripts.data.synthetic`.
"""

from scripts.data.synthetic import main

if __name__ == "__main__":
    import fire

    fire.Fire(main)
