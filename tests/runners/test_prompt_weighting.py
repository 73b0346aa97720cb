"""Long-prompt weighting (runners/prompt_weighting.py) on the tiny text encoders: the A1111
syntax, no 77-token cut, weights moving embeddings the expected way, and where the encoding
equals diffusers' own."""

from __future__ import annotations

import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

from models.store import require_model
from runners.prompt_weighting import (
    CHUNK_TOKENS,
    encode_sd15,
    encode_sdxl,
    parse_weights,
    token_count,
    tokens_with_weights,
)

CPU = torch.device("cpu")

# --- the syntax ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "runs"),
    [
        ("normal text", [("normal text", 1.0)]),
        ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
        ("a [small] cat", [("a ", 1.0), ("small", 1 / 1.1), (" cat", 1.0)]),
        ("(worst quality:1.2), ok", [("worst quality", 1.2), (", ok", 1.0)]),
        ("((nested))", [("nested", pytest.approx(1.21))]),
        ("((a:1.5) b)", [("a", pytest.approx(1.65)), (" b", 1.1)]),
        ("(unclosed", [("unclosed", 1.1)]),
        ("(same)(weight)", [("sameweight", 1.1)]),  # equal weights merge into one run
        (r"\(literal\)", [("(literal)", 1.0)]),
        ("a: b", [("a: b", 1.0)]),  # a colon outside a weight is text
        ("", [("", 1.0)]),
    ],
)
def test_a1111_weights(text, runs):
    assert parse_weights(text) == runs


# --- the encoders -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sdxl(tiny_settings) -> StableDiffusionXLPipeline:
    return StableDiffusionXLPipeline.from_pretrained(require_model(tiny_settings, "sdxl-base"))


@pytest.fixture(scope="module")
def sd15(tiny_settings) -> StableDiffusionPipeline:
    return StableDiffusionPipeline.from_pretrained(
        require_model(tiny_settings, "sd15-base"), safety_checker=None
    )


def xl(pipe: StableDiffusionXLPipeline, prompt: str, negative: str = ""):
    encoders = (pipe.tokenizer, pipe.text_encoder, pipe.text_encoder_2)
    return encode_sdxl(*encoders, prompt, negative, CPU)


def words(count: int) -> str:
    """`count` one-token words (the tiny vocabulary has every byte as a token)."""
    return " ".join("abcdefghijklmnopqrstuvwxyz"[i % 26] for i in range(count))


def test_a_long_prompt_is_never_cut(sdxl):
    ids, _ = tokens_with_weights(sdxl.tokenizer, words(100))
    assert len(ids) == 100
    text = xl(sdxl, words(100))
    # A chunk of 75 and one of 25, each between a begin and an end token.
    assert text.prompt.shape[1] == (CHUNK_TOKENS + 2) + (25 + 2)
    assert text.negative.shape == text.prompt.shape  # the negative is padded to match


def test_prompts_differing_after_token_77_encode_differently(sdxl, sd15):
    head = words(80)
    one, other = f"{head} cat", f"{head} photo"
    assert not torch.equal(xl(sdxl, one).prompt, xl(sdxl, other).prompt)
    assert not torch.equal(
        encode_sd15(sd15.tokenizer, sd15.text_encoder, one, "", CPU)[0],
        encode_sd15(sd15.tokenizer, sd15.text_encoder, other, "", CPU)[0],
    )


@torch.inference_mode()
def test_a_weighted_word_moves_away_from_the_end_token(sdxl):
    plain = xl(sdxl, "photo of a cat").prompt[0]
    up = xl(sdxl, "photo of a (cat:1.5)").prompt[0]
    down = xl(sdxl, "photo of a (cat:0.5)").prompt[0]
    cat = len(tokens_with_weights(sdxl.tokenizer, "photo of a cat")[0])  # last word, after BOS
    end = plain[-1]
    assert torch.equal(up[:cat], plain[:cat]) and torch.equal(up[-1], end)
    # weight w: end + (token - end) * w, exactly along the line from the end token
    torch.testing.assert_close(up[cat] - end, 1.5 * (plain[cat] - end))
    torch.testing.assert_close(down[cat] - end, 0.5 * (plain[cat] - end))
    assert (up[cat] - end).norm() > (plain[cat] - end).norm() > (down[cat] - end).norm()


@torch.inference_mode()
def test_sdxl_short_prompt_is_diffusers_context_without_the_padding(sdxl):
    """The reference does not pad the last chunk to 77: the tokens up to the end token are
    exactly diffusers' (CLIP is causal), the padding after it is gone, the pooled is the same."""
    prompt, negative = "photo of a cat", "dull"  # the negative is shorter: the prompt sets L
    ours = xl(sdxl, prompt, negative)
    embeds, negative_embeds, pooled, negative_pooled = sdxl.encode_prompt(
        prompt, negative_prompt=negative, device=torch.device("cpu")
    )
    length = ours.prompt.shape[1]
    assert length == len(tokens_with_weights(sdxl.tokenizer, prompt)[0]) + 2
    torch.testing.assert_close(ours.prompt, embeds[:, :length])
    torch.testing.assert_close(ours.pooled, pooled)
    torch.testing.assert_close(ours.negative_pooled, negative_pooled)
    negative_length = len(tokens_with_weights(sdxl.tokenizer, negative)[0]) + 2
    torch.testing.assert_close(
        ours.negative[:, :negative_length], negative_embeds[:, :negative_length]
    )


@torch.inference_mode()
def test_sd15_unweighted_prompt_within_77_is_bit_identical_to_diffusers(sd15):
    prompt, negative = "photo of a cat by a lake", "blurry"
    ours, ours_negative = encode_sd15(sd15.tokenizer, sd15.text_encoder, prompt, negative, CPU)
    embeds, negative_embeds = sd15.encode_prompt(
        prompt, torch.device("cpu"), 1, True, negative_prompt=negative
    )
    assert torch.equal(ours, embeds) and torch.equal(ours_negative, negative_embeds)


def test_token_count_is_the_encoded_length(sdxl, sd15):
    for prompt, negative in [("a cat", ""), (words(100), "blurry"), ("x", words(160))]:
        expected = xl(sdxl, prompt, negative).prompt.shape[1]
        assert token_count(sdxl.tokenizer, prompt, negative, window=False) == expected
        sd15_embeds = encode_sd15(sd15.tokenizer, sd15.text_encoder, prompt, negative, CPU)[0]
        assert token_count(sd15.tokenizer, prompt, negative, window=True) == sd15_embeds.shape[1]
