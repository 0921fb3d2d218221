"""Command line: `python -m scripts.download`, fetch the large files of large_files.yml.

The implementation is `scripts.distribution.download`.
"""

from scripts.distribution.download import main

if __name__ == "__main__":
    import fire

    fire.Fire(main)
