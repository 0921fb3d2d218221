"""Command line: `python -m scripts.pack`, the model-zoo release zip.

The implementation is `scripts.distribution.pack`.
"""

from scripts.distribution.pack import pack

if __name__ == "__main__":
    import fire

    fire.Fire(pack)
