"""A tiny CLIP tokenizer built locally (no download), for the `tiny` profile's text encoder.

It has the real CLIP tokenizer's structure: byte-level BPE whose vocabulary starts with the 256
byte characters and their end-of-word ("</w>") forms, then merged tokens, then the two special
tokens last (so the end-of-text token has the highest id, as in CLIP). Only a handful of merges
are included, enough to turn a few common prompt words into single tokens.
"""

from __future__ import annotations

from tokenizers import pre_tokenizers
from transformers import CLIPTokenizer

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
END_OF_WORD = "</w>"

# BPE merges in priority order; they spell "photo", "of" and "cat" as whole words.
TINY_MERGES: tuple[tuple[str, str], ...] = (
    ("p", "h"),
    ("ph", "o"),
    ("pho", "t"),
    ("phot", "o</w>"),
    ("o", "f</w>"),
    ("c", "a"),
    ("ca", "t</w>"),
)


def build_clip_tokenizer(model_max_length: int = 77) -> CLIPTokenizer:
    """A CLIPTokenizer with a tiny vocabulary; deterministic, no files needed."""
    # Sorted: the alphabet is a set, and the ids must not depend on iteration order.
    byte_chars = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = [*byte_chars, *(char + END_OF_WORD for char in byte_chars)]
    tokens += [left + right for left, right in TINY_MERGES]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    vocab = {token: token_id for token_id, token in enumerate(tokens)}
    return CLIPTokenizer(
        vocab=vocab,
        merges=list(TINY_MERGES),
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        model_max_length=model_max_length,
    )
