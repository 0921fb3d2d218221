"""Tokenizer shipped in the bundle, the null prompt, and text-encoder sources (incl. the OpenCLIP conversion)."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from helpers.bundle import TOKENIZER_DIR
from helpers.networks import make_tiny_text_encoder, openclip_state_dict
from scripts.networks import text


def test_shipped_tokenizer_is_the_clip_vocabulary(tokenizer):
    assert len(tokenizer) == 49408
    ids = text.tokenize(tokenizer, ["a photo of a cat", ""])
    assert ids.shape == (2, 77) and ids.dtype == torch.long
    # Known CLIP ids: BOS, "a", "photo", "of", "a", "cat", EOS, then "!" (id 0) padding as in SD-2.
    assert ids[0, :8].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407, 0]
    assert ids[1, :3].tolist() == [49406, 49407, 0] and ids[1, 2:].eq(0).all()


def test_null_prompt_styles(tokenizer):
    empty = text.null_prompt_ids(tokenizer, "empty_prompt")
    assert torch.equal(empty, text.tokenize(tokenizer, [""])[0])
    bos_eos = text.null_prompt_ids(tokenizer, "bos_eos")
    assert bos_eos[0] == 49406 and bos_eos[1:].eq(49407).all() and bos_eos.shape == (77,)
    ids = text.prompt_ids(tokenizer, ["", "Cardiomegaly"], null_prompt="bos_eos")
    assert torch.equal(ids[0], bos_eos) and not torch.equal(ids[1], bos_eos)
    with pytest.raises(ValueError, match="null_prompt must be one of"):
        text.null_prompt_ids(tokenizer, "minus_one")


def test_truncation_warns_and_keeps_77_tokens(tokenizer):
    long_prompt = "left basal opacity " * 40
    with pytest.warns(UserWarning, match="truncated to 77"):
        ids = text.tokenize(tokenizer, [long_prompt])
    assert ids.shape == (1, 77) and ids[0, -1] == 49407


def test_truncation_warnings_name_a_few_prompts_per_run_then_stop():
    tokenizer = text.load_tokenizer(TOKENIZER_DIR)  # a run's own tokenizer
    prompts = [f"case {i}: " + "left basal opacity " * 40 for i in range(7)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ids = text.tokenize(tokenizer, prompts)
        text.tokenize(tokenizer, prompts[:2])
    messages = [str(w.message) for w in caught]
    assert ids.shape == (7, 77) and len(messages) == text.TRUNCATION_WARNINGS_NAMED == 5
    assert all(f"'case {i}:" in m for i, m in enumerate(messages))
    assert "not named" in messages[-1] and not any("not named" in m for m in messages[:-1])
    with pytest.warns(UserWarning, match="case 0"):  # another run (tokenizer) names its own prompts again
        text.tokenize(text.load_tokenizer(TOKENIZER_DIR), prompts[:1])


def test_missing_tokenizer_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        text.load_tokenizer(tmp_path)
    assert len(text.load_tokenizer(TOKENIZER_DIR)) == 49408


def _openclip_penultimate(state, ids, heads=2):
    """Independent reference: OpenCLIP's text transformer run to its penultimate block, then ln_final."""
    x = state["token_embedding.weight"][ids] + state["positional_embedding"]
    width = x.shape[-1]
    layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("transformer.resblocks."))
    causal = torch.full((77, 77), float("-inf")).triu(1)
    for i in range(layers - 1):
        p = f"transformer.resblocks.{i}."
        attention = torch.nn.MultiheadAttention(width, heads, batch_first=True)
        attention.load_state_dict(
            {
                "in_proj_weight": state[p + "attn.in_proj_weight"],
                "in_proj_bias": state[p + "attn.in_proj_bias"],
                "out_proj.weight": state[p + "attn.out_proj.weight"],
                "out_proj.bias": state[p + "attn.out_proj.bias"],
            }
        )
        h = F.layer_norm(x, (width,), state[p + "ln_1.weight"], state[p + "ln_1.bias"])
        x = x + attention(h, h, h, attn_mask=causal, need_weights=False)[0]
        h = F.layer_norm(x, (width,), state[p + "ln_2.weight"], state[p + "ln_2.bias"])
        h = F.gelu(F.linear(h, state[p + "mlp.c_fc.weight"], state[p + "mlp.c_fc.bias"]))
        x = x + F.linear(h, state[p + "mlp.c_proj.weight"], state[p + "mlp.c_proj.bias"])
    return F.layer_norm(x, (width,), state["ln_final.weight"], state["ln_final.bias"])


def test_openclip_conversion_matches_penultimate_layer_plus_final_norm(tokenizer, tmp_path):
    state = openclip_state_dict()
    ids = text.tokenize(tokenizer, ["Right pleural effusion.", ""])
    expected = _openclip_penultimate(state, ids)
    model = text.convert_openclip_text_tower(state)
    assert model.config.num_hidden_layers == 2  # one fewer than the checkpoint
    with torch.no_grad():
        torch.testing.assert_close(model(ids).last_hidden_state, expected, rtol=1e-4, atol=1e-4)
    # The same through load_text_encoder from a checkpoint file, as users point --text_encoder_source at it.
    path = tmp_path / "open_clip_model.safetensors"
    save_file(state, str(path))
    loaded = text.load_text_encoder(str(path))
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    torch.testing.assert_close(text.encode_ids(loaded, ids), expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="not an OpenCLIP checkpoint"):
        text.convert_openclip_text_tower({"visual.proj": torch.zeros(1)})


def test_text_encoder_sources_and_clear_errors(tmp_path):
    make_tiny_text_encoder().save_pretrained(tmp_path / "pipeline" / "text_encoder")
    model = text.load_text_encoder(str(tmp_path / "pipeline"), device="cpu")
    assert model.config.hidden_size == 32 and not model.training
    with pytest.raises(text.TextEncoderNotFoundError, match="does not exist"):
        text.load_text_encoder(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(text.TextEncoderNotFoundError, match="no CLIPTextModel"):
        text.load_text_encoder(str(tmp_path / "empty"))
    # A hub id that cannot be reached (tests run with HF_HUB_OFFLINE=1) is one clear message, not a traceback
    # from the hub client.
    with pytest.raises(text.TextEncoderNotFoundError, match="scripts.distribution.download text_encoder") as info:
        text.load_text_encoder("stabilityai/stable-diffusion-2-1-base")
    assert info.value.__cause__ is None
