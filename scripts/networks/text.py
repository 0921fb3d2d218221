"""Report text → conditioning: the tokenizer, the null prompt, and the frozen CLIP text encoder.

Everything that turns words into the (B, 77, 1024) context of the diffusion UNet lives here, so that
training and sampling share one definition of each piece (in particular of the null prompt, see
``null_prompt_ids``).
"""

from __future__ import annotations

import logging
import os
import warnings
import weakref
from collections.abc import Sequence

import torch

from scripts.common.errors import CxrLdmError

logger = logging.getLogger(__name__)

MAX_TOKENS = 77
VOCAB_SIZE = 49408
BOS_ID = 49406
EOS_ID = 49407

#: A tokenizer's truncation warnings name at most this many prompts; the last one says the rest go unnamed
#: (a run over thousands of long reports would otherwise print a warning per prompt).
TRUNCATION_WARNINGS_NAMED = 5
_truncation_warnings: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> warnings given

#: How the "no text" prompt is tokenised. ``"empty_prompt"`` is the tokenised empty string
#: (BOS, EOS, then "!" padding, id 0), which is what the released model is sampled with and what this
#: bundle uses in training and sampling alike. ``"bos_eos"`` (BOS followed by 76 EOS) is what the
#: released model saw during training; choose it to reproduce that recipe exactly.
NULL_PROMPT_STYLES = ("empty_prompt", "bos_eos")

#: Where the Stable Diffusion 2.1-base text encoder can come from; printed when none can be loaded.
TEXT_ENCODER_HELP = (
    "The SD-2.1-base text encoder (the 'stabilityai/stable-diffusion-2-1-base' Hugging Face repository was "
    "withdrawn) is needed. Either run `python -m scripts.distribution.download text_encoder` (it converts "
    "LAION's OpenCLIP ViT-H/14, 'laion/CLIP-ViT-H-14-laion2B-s32B-b79K', into models/text_encoder), or put a "
    "transformers CLIPTextModel folder (config.json + model.safetensors) at models/text_encoder, or point "
    "--text_encoder_source at a local folder, an OpenCLIP checkpoint file, or a Hugging Face id/mirror "
    "that still hosts the text encoder."
)


class TextEncoderNotFoundError(CxrLdmError, RuntimeError):
    """No text encoder could be loaded from the configured source."""


def load_tokenizer(path: str):
    """Load the CLIP tokenizer shipped in the bundle (``tokenizer/``: vocab.json, merges.txt, configs).

    Loading is local only. Raises ``FileNotFoundError`` naming the folder when the files are missing,
    and ``ValueError`` when the vocabulary is not the 49,408-token CLIP one (transformers silently builds
    an empty tokenizer from wrong arguments, so the size is checked).
    """
    from transformers import CLIPTokenizer

    path = os.fspath(path)
    missing = [name for name in ("vocab.json", "merges.txt") if not os.path.isfile(os.path.join(path, name))]
    if missing:
        raise FileNotFoundError(
            f"Tokenizer files {missing} not found in '{path}': set --tokenizer_path to the bundle's 'tokenizer' "
            "folder (re-create it with `python -m scripts.distribution.convert_clip_bpe`)."
        )
    tokenizer = CLIPTokenizer.from_pretrained(path, local_files_only=True)
    if len(tokenizer) != VOCAB_SIZE:
        raise ValueError(
            f"Tokenizer in '{path}' has {len(tokenizer)} tokens, expected the CLIP vocabulary of {VOCAB_SIZE}."
        )
    return tokenizer


def tokenize(tokenizer, prompts: Sequence[str], warn_truncation: bool = True) -> torch.Tensor:
    """Token ids of ``prompts``: LongTensor (B, 77), BOS ... EOS then padding, truncated to 77 tokens.

    A prompt longer than 77 tokens is truncated (the text encoder has 77 positions) with a warning that
    names it, so a user knows the end of a long report was not seen; after ``TRUNCATION_WARNINGS_NAMED``
    such warnings for one tokenizer (one run), further truncated prompts are not named.
    """
    prompts = list(prompts)
    encoded = tokenizer(prompts, padding="max_length", truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
    if warn_truncation:
        full_lengths = [len(ids) for ids in tokenizer(prompts, truncation=False)["input_ids"]]
        for prompt, length in zip(prompts, full_lengths):
            given = _truncation_warnings.get(tokenizer, 0)
            if length <= MAX_TOKENS or given >= TRUNCATION_WARNINGS_NAMED:
                continue
            _truncation_warnings[tokenizer] = given + 1
            short = prompt if len(prompt) <= 60 else prompt[:57] + "..."
            last = given + 1 == TRUNCATION_WARNINGS_NAMED
            warnings.warn(
                f"Prompt '{short}' is {length} tokens long and was truncated to {MAX_TOKENS}: the text after that "
                "is ignored." + (" Further truncated prompts of this run are not named." if last else ""),
                stacklevel=2,
            )
    return encoded["input_ids"]


def null_prompt_ids(tokenizer, style: str = "empty_prompt") -> torch.Tensor:
    """Token ids (77,) of the null prompt used for classifier-free guidance, in training and sampling.

    Args:
        tokenizer: the bundle's CLIP tokenizer.
        style: one of ``NULL_PROMPT_STYLES`` (see there).
    """
    if style == "empty_prompt":
        return tokenize(tokenizer, [""], warn_truncation=False)[0]
    if style == "bos_eos":
        return torch.tensor([BOS_ID] + [EOS_ID] * (MAX_TOKENS - 1), dtype=torch.long)
    raise ValueError(f"null_prompt must be one of {NULL_PROMPT_STYLES}, got {style!r}.")


def prompt_ids(tokenizer, prompts: Sequence[str], null_prompt: str = "empty_prompt") -> torch.Tensor:
    """Token ids (B, 77) of ``prompts``, where the empty prompt "" maps to the null prompt of ``null_prompt``."""
    ids = tokenize(tokenizer, prompts)
    null = null_prompt_ids(tokenizer, null_prompt)
    for i, prompt in enumerate(prompts):
        if prompt == "":
            ids[i] = null
    return ids


@torch.inference_mode()
def encode_ids(text_encoder, token_ids: torch.Tensor) -> torch.Tensor:
    """Context (B, 77, hidden) of token ids (B, 77): the encoder's ``last_hidden_state``."""
    device = next(text_encoder.parameters()).device
    return text_encoder(token_ids.to(device)).last_hidden_state


# ---------------------------------------------------------------------------------------------------
# Text encoder loading


class TextEncoderMismatchError(CxrLdmError, ValueError):
    """The text encoder's output width is not the UNet's cross-attention width."""


def check_context_width(text_encoder, cross_attention_dim: int) -> None:
    """Fail at build time when the text encoder's width (hidden size) is not the UNet's ``cross_attention_dim``.

    Otherwise the first UNet call fails deep inside cross-attention with a matrix-shape error.
    """
    config = getattr(text_encoder, "config", None)
    width = getattr(config, "hidden_size", None)
    if width is None or int(width) == int(cross_attention_dim):
        return
    raise TextEncoderMismatchError(
        f"The text encoder gives {int(width)}-wide embeddings but the UNet's cross_attention_dim is "
        f"{int(cross_attention_dim)}: use a text encoder of width {int(cross_attention_dim)} (--text_encoder_source; "
        "this model needs the SD-2.x / OpenCLIP ViT-H/14 text tower) or set network_def#cross_attention_dim."
    )


def _is_openclip_file(path: str) -> bool:
    return os.path.isfile(path) and path.endswith((".bin", ".pt", ".pth", ".safetensors"))


def load_text_encoder(
    source: str,
    subfolder: str | None = "text_encoder",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
):
    """Load the frozen text encoder (``transformers.CLIPTextModel``, in ``eval()`` mode, on ``device``).

    ``source`` may be
      - a local CLIPTextModel folder (``config.json`` + weights), or a pipeline folder holding one in
        ``subfolder`` (e.g. a local copy of a Stable Diffusion 2.1-base repository);
      - a local OpenCLIP ViT-H/14 checkpoint file (``open_clip_pytorch_model.bin`` or
        ``open_clip_model.safetensors``), converted on the fly (see ``convert_openclip_text_tower``);
      - ``openclip:<hub id>``: the same checkpoint fetched from a Hugging Face repository;
      - any other Hugging Face id or mirror hosting an SD-2.x text encoder (in ``subfolder``).

    Raises ``TextEncoderNotFoundError`` with what to download and where to put it when nothing loads.
    """
    from transformers import CLIPTextModel

    source = os.fspath(source)
    try:
        if os.path.isdir(source):
            folder = source
            if not os.path.isfile(os.path.join(folder, "config.json")) and subfolder:
                folder = os.path.join(source, subfolder)
            if not os.path.isfile(os.path.join(folder, "config.json")):
                raise TextEncoderNotFoundError(
                    f"'{source}' holds no CLIPTextModel (no config.json). {TEXT_ENCODER_HELP}"
                )
            model = CLIPTextModel.from_pretrained(folder, local_files_only=True, dtype=dtype)
        elif _is_openclip_file(source):
            model = convert_openclip_text_tower(load_state_dict_file(source))
        elif source.startswith("openclip:"):
            model = convert_openclip_text_tower(load_state_dict_file(_hub_openclip_file(source[len("openclip:") :])))
        elif source.startswith(("/", ".", "~")) or source.count("/") > 1 or "\\" in source:
            # a path (a hub id is "name" or "org/name") that does not exist
            raise TextEncoderNotFoundError(f"Text encoder source '{source}' does not exist. {TEXT_ENCODER_HELP}")
        else:
            model = CLIPTextModel.from_pretrained(source, subfolder=subfolder or "", dtype=dtype)
    except TextEncoderNotFoundError:
        raise
    except (OSError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise TextEncoderNotFoundError(
            f"Could not load the text encoder from '{source}' ({first_line}). {TEXT_ENCODER_HELP}"
        ) from None
    model = model.to(device=device, dtype=dtype).eval()
    model.requires_grad_(False)
    return model


def _hub_openclip_file(repo_id: str) -> str:
    from huggingface_hub import hf_hub_download

    last_error: Exception | None = None
    for filename in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
        try:
            return hf_hub_download(repo_id, filename)
        except Exception as error:  # noqa: BLE001 - any hub failure means "try the next file name"
            last_error = error
    raise OSError(f"no OpenCLIP checkpoint in '{repo_id}': {last_error}")


def load_state_dict_file(path: str) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` or (``weights_only``) PyTorch checkpoint file."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


def convert_openclip_text_tower(state_dict: dict[str, torch.Tensor], num_layers: int | None = None):
    """Build the SD-2 text encoder (a ``CLIPTextModel``) from an OpenCLIP checkpoint's text tower.

    Stable Diffusion 2 conditions on the *penultimate* layer of the OpenCLIP ViT-H/14 text transformer
    followed by its final layer norm. A CLIPTextModel with one layer fewer than the checkpoint, whose
    ``final_layer_norm`` is OpenCLIP's ``ln_final``, computes exactly that as ``last_hidden_state``.

    Args:
        state_dict: OpenCLIP ``CLIP`` state dict (keys ``token_embedding.weight``, ``positional_embedding``,
            ``transformer.resblocks.{i}.*``, ``ln_final.*``; ``visual.*`` keys are ignored).
        num_layers: layers to keep; default all but the last.
    """
    from transformers import CLIPTextConfig, CLIPTextModel

    if "token_embedding.weight" not in state_dict:
        raise ValueError("not an OpenCLIP checkpoint: it has no 'token_embedding.weight'")
    vocab_size, hidden = state_dict["token_embedding.weight"].shape
    positions = state_dict["positional_embedding"].shape[0]
    total_layers = 1 + max(int(k.split(".")[2]) for k in state_dict if k.startswith("transformer.resblocks."))
    keep = total_layers - 1 if num_layers is None else num_layers
    intermediate = state_dict["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=keep,
        num_attention_heads=max(1, hidden // 64),
        max_position_embeddings=positions,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
        projection_dim=state_dict["text_projection"].shape[-1] if "text_projection" in state_dict else hidden,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=0,
    )
    new = {
        "text_model.embeddings.token_embedding.weight": state_dict["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": state_dict["positional_embedding"],
        "text_model.final_layer_norm.weight": state_dict["ln_final.weight"],
        "text_model.final_layer_norm.bias": state_dict["ln_final.bias"],
    }
    for i in range(keep):
        old, dst = f"transformer.resblocks.{i}.", f"text_model.encoder.layers.{i}."
        for part in ("weight", "bias"):
            q, k, v = state_dict[old + f"attn.in_proj_{part}"].chunk(3, dim=0)
            new[dst + f"self_attn.q_proj.{part}"] = q
            new[dst + f"self_attn.k_proj.{part}"] = k
            new[dst + f"self_attn.v_proj.{part}"] = v
            new[dst + f"self_attn.out_proj.{part}"] = state_dict[old + f"attn.out_proj.{part}"]
            new[dst + f"layer_norm1.{part}"] = state_dict[old + f"ln_1.{part}"]
            new[dst + f"layer_norm2.{part}"] = state_dict[old + f"ln_2.{part}"]
            new[dst + f"mlp.fc1.{part}"] = state_dict[old + f"mlp.c_fc.{part}"]
            new[dst + f"mlp.fc2.{part}"] = state_dict[old + f"mlp.c_proj.{part}"]
    model = CLIPTextModel(config)
    # transformers 4 names the weights "text_model.*"; transformers 5 drops that prefix.
    if not any(k.startswith("text_model.") for k in model.state_dict()):
        new = {k[len("text_model.") :]: v for k, v in new.items()}
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in new.items()}, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(f"OpenCLIP conversion left keys unmatched: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model
