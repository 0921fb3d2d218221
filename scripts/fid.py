"""Command line: `python -m scripts.fid`, FID between two image sets.

The implementation is `scripts.evaluation.fid`.
"""

from scripts.evaluation.fid import main

if __name__ == "__main__":
    import fire

    fire.Fire(main, serialize=lambda summary: None)
