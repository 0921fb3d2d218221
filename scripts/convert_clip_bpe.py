"""Command line: `python -m scripts.convert_clip_bpe`, CLIP BPE file to tokenizer files.

The implementation is `scripts.distribution.convert_clip_bpe`.
"""

from scripts.distribution.convert_clip_bpe import convert

if __name__ == "__main__":
    import fire

    fire.Fire(convert)
