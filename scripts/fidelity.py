"""Command line: `python -m scripts.fidelity`, FID, KID and PRDC between two image sets per feature extractor.

The implementation is `scripts.evaluation.compare`.
"""

from scripts.evaluation.compare import main

if __name__ == "__main__":
    import fire

    fire.Fire(main, serialize=lambda summary: None)
