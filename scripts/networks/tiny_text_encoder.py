"""``python -m scripts.networks.tiny_text_encoder``: a small random text encoder with the CLIP vocabulary, no download.

``python -m scripts.networks.tiny_text_encoder --output_dir models/tiny_text_encoder`` writes a 2-layer
``CLIPTextModel`` (hidden size 32, the tiny UNet's ``cross_attention_dim``) with the 49,408-token CLIP
vocabulary and 77 positions, loadable with ``--text_encoder_source models/tiny_text_encoder``. Its
weights are random: prompts steer a model trained with it, but it knows no language.
"""

from __future__ import annotations

import os

VOCAB_SIZE = 49408
MAX_POSITIONS = 77


def make_tiny_text_encoder(hidden_size: int = 32, num_layers: int = 2, seed: int = 0):
    """A ``CLIPTextModel`` (eval mode) of width ``hidden_size`` with random weights drawn from ``seed``."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    if int(hidden_size) < 2 or int(hidden_size) % 2:
        raise ValueError(f"hidden_size must be an even number >= 2 (2 attention heads), got {hidden_size}.")
    torch.manual_seed(int(seed))
    config = CLIPTextConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=int(hidden_size),
        intermediate_size=2 * int(hidden_size),
        num_hidden_layers=int(num_layers),
        num_attention_heads=2,
        max_position_embeddings=MAX_POSITIONS,
        hidden_act="gelu",
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=0,
    )
    return CLIPTextModel(config).eval()


def main(
    output_dir: str = "models/tiny_text_encoder", hidden_size: int = 32, num_layers: int = 2, seed: int = 0
) -> str:
    """Write the tiny text encoder to ``output_dir`` (a ``save_pretrained`` folder); return the folder."""
    make_tiny_text_encoder(hidden_size, num_layers, seed).save_pretrained(output_dir)
    print(
        f"Tiny text encoder (hidden size {hidden_size}) written to {output_dir}: pass --text_encoder_source "
        f"{output_dir}"
    )
    return os.fspath(output_dir)


if __name__ == "__main__":
    import fire

    fire.Fire(main, serialize=lambda folder: None)
