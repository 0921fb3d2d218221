"""Command line: `python -m scripts.metrics diversity ...`, MS-SSIM diversity of a folder.

The implementation is `scripts.evaluation.metrics`.
"""

from scripts.evaluation.metrics import diversity_cli

if __name__ == "__main__":
    import fire

    fire.Fire({"diversity": diversity_cli})
