"""Command line: `python -m scripts.tiny_text_encoder`, a small random text encoder for trials.

The implementation is `scripts.networks.tiny_text_encoder`.
"""

from scripts.networks.tiny_text_encoder import main

if __name__ == "__main__":
    import fire

    fire.Fire(main, serialize=lambda folder: None)
