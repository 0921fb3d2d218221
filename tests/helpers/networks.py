"""Tiny networks: the bundle's own definitions at test size, with weights that make their outputs matter."""

from __future__ import annotations

from pathlib import Path

import torch

from scripts.networks.weights import fill_zero_initialised  # noqa: F401  (re-exported for the tests)

from .bundle import tiny_parser

#: Width of the tiny text encoder: the tiny UNet's cross_attention_dim (configs/tiny/inference.json).
TINY_TEXT_HIDDEN = 32


def make_tiny_text_encoder(hidden: int = TINY_TEXT_HIDDEN, layers: int = 2, seed: int = 0):
    """A 2-layer CLIPTextModel with the CLIP vocabulary and 77 positions (random weights)."""
    from scripts.networks.tiny_text_encoder import make_tiny_text_encoder as make

    return make(hidden_size=hidden, num_layers=layers, seed=seed)


def randomize_zero_layers(network: torch.nn.Module, std: float = 0.05) -> torch.nn.Module:
    """Give zero-initialised layers (MONAI's UNet output and attention projections) random weights.

    A freshly built DiffusionModelUNet outputs exactly 0, so prompts and guidance would have no effect.
    """
    with torch.no_grad():
        for parameter in network.parameters():
            if parameter.abs().max() == 0:
                parameter.normal_(0.0, std)
    return network


def tiny_sampling_parts(tokenizer, **extra) -> dict:
    """The tiny config's parser, a UNet with random (non-zero) weights, the autoencoder, a tiny text encoder and
    ``tokenizer`` (seeded: the same networks in every test module), plus ``extra`` entries."""
    parser = tiny_parser()
    torch.manual_seed(0)
    return {
        "parser": parser,
        "unet": randomize_zero_layers(parser.get_parsed_content("network_def")).eval(),
        "autoencoder": parser.get_parsed_content("autoencoder_def").eval(),
        "text_encoder": make_tiny_text_encoder(),
        "tokenizer": tokenizer,
        **extra,
    }


def write_tiny_weights(model_dir: Path, seed: int = 0) -> Path:
    """Random tiny autoencoder / UNet weights (new MONAI layout) and a tiny text encoder in ``model_dir``."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    parser = tiny_parser()
    torch.manual_seed(seed)
    autoencoder = parser.get_parsed_content("autoencoder_def")
    unet = parser.get_parsed_content("network_def")
    randomize_zero_layers(unet)
    torch.save(autoencoder.state_dict(), model_dir / "autoencoder.pt")
    torch.save(unet.state_dict(), model_dir / "model.pt")
    make_tiny_text_encoder(seed=seed).save_pretrained(model_dir / "text_encoder")
    return model_dir


def openclip_state_dict(width=128, layers=3, vocab=49408, context=77, seed=0):
    """A random OpenCLIP ``CLIP`` text-tower state dict (heads of 64 channels, as OpenCLIP; plus a visual key)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g) * 0.2  # noqa: E731
    state = {
        "token_embedding.weight": r(vocab, width),
        "positional_embedding": r(context, width),
        "ln_final.weight": 1 + r(width),
        "ln_final.bias": r(width),
        "text_projection": r(width, width),
        "logit_scale": torch.tensor(4.6),
        "visual.proj": r(4, 4),
    }
    for i in range(layers):
        p = f"transformer.resblocks.{i}."
        state.update(
            {
                p + "ln_1.weight": 1 + r(width),
                p + "ln_1.bias": r(width),
                p + "attn.in_proj_weight": r(3 * width, width),
                p + "attn.in_proj_bias": r(3 * width),
                p + "attn.out_proj.weight": r(width, width),
                p + "attn.out_proj.bias": r(width),
                p + "ln_2.weight": 1 + r(width),
                p + "ln_2.bias": r(width),
                p + "mlp.c_fc.weight": r(4 * width, width),
                p + "mlp.c_fc.bias": r(4 * width),
                p + "mlp.c_proj.weight": r(width, 4 * width),
                p + "mlp.c_proj.bias": r(width),
            }
        )
    return state
