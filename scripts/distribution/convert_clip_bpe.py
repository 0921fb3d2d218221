"""``python -m scripts.distribution.convert_clip_bpe``: the CLIP BPE file as ``transformers.CLIPTokenizer`` files.

It turns the CLIP byte-pair-encoding file into the ``vocab.json`` + ``merges.txt`` pair that
``transformers.CLIPTokenizer`` reads.

The bundle ships the result in ``tokenizer/`` so that tokenisation never needs a download. This module
records how those files were made (and lets anyone re-make them) from ``bpe_simple_vocab_16e6.txt.gz``,
the vocabulary file that OpenAI CLIP and the ``open_clip_torch`` wheel carry::

    python -m scripts.distribution.convert_clip_bpe --bpe_path bpe_simple_vocab_16e6.txt.gz --output_dir tokenizer
"""

from __future__ import annotations

import gzip
import json
import os

# CLIP keeps the first 49,152 - 256 - 2 merges of the file: 256 byte tokens, 256 end-of-word byte
# tokens, the merges, and the two special tokens make the 49,408-entry vocabulary.
VOCAB_SIZE = 49408
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"


def bytes_to_unicode() -> dict[int, str]:
    """The reversible byte -> printable-character table of GPT-2/CLIP byte-level BPE."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    # Insertion order matters: it is the order of the first 256 vocabulary entries ("!" is id 0).
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def convert(bpe_path: str, output_dir: str) -> str:
    """Write ``vocab.json``, ``merges.txt`` and the tokenizer configs to ``output_dir``; return it."""
    with gzip.open(bpe_path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    n_merges = VOCAB_SIZE - 2 * 256 - 2
    merges = [tuple(line.split()) for line in lines[1 : n_merges + 1]]
    byte_chars = list(bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    if len(tokens) != VOCAB_SIZE:
        raise ValueError(f"{bpe_path} gave {len(tokens)} tokens, expected {VOCAB_SIZE}: not the CLIP BPE file.")
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({tok: i for i, tok in enumerate(tokens)}, f, ensure_ascii=False)
    with open(os.path.join(output_dir, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    # The Stable Diffusion 2 tokenizer pads with "!" (id 0) after the end-of-text token.
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "unk_token": EOS_TOKEN,
        "pad_token": "!",
        "do_lower_case": True,
        "clean_up_tokenization_spaces": True,
    }
    with open(os.path.join(output_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    special = {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "unk_token": EOS_TOKEN, "pad_token": "!"}
    with open(os.path.join(output_dir, "special_tokens_map.json"), "w", encoding="utf-8") as f:
        json.dump(special, f, indent=2)
    return output_dir


if __name__ == "__main__":
    import fire

    fire.Fire(convert)
