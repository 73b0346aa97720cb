"""Long-prompt weighting: prompts of any length, with A1111 weights, encoded as InstantID's demo
encodes them (`pipeline_stable_diffusion_xl_instantid_full.py`, its `LongPromptWeight`).

Syntax: `(words)` multiplies their weight by 1.1, `[words]` divides it by 1.1, `(words:1.5)`
sets a factor of 1.5; brackets nest (factors multiply) and an unclosed one runs to the end;
`\\(`, `\\)`, `\\[`, `\\]` and `\\\\` are the literal characters.

Encoding: each run of equal weight is tokenized on its own, the tokens are cut into chunks of 75
(each chunk framed by begin/end tokens, so nothing is cut), every chunk goes through the text
encoder alone and the chunks' hidden states are joined. A weighted token's embedding is moved
away from (weight > 1) or towards (weight < 1) the chunk's last token: last + (token - last) * w.
The prompt and its negative are padded with end tokens to the same length, as classifier-free
guidance needs both halves the same shape.

SDXL (instantid, insta-depth), as the reference does: both encoders read the first tokenizer's
ids, the last chunk is not padded to 77, and the pooled embedding is the second encoder's for the
last chunk. SD1.5 (sd1.5-controlnet-depth) pads every chunk to 77 as its pipeline always did, so
a prompt without weights within 75 tokens is encoded exactly as before.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from transformers import CLIPTokenizer
from transformers.modeling_utils import PreTrainedModel

CHUNK_TOKENS = 75  # a CLIP window of 77 less the begin and end tokens
UP = 1.1  # `(words)`
DOWN = 1 / 1.1  # `[words]`

# One match per piece: an escaped character, an opening bracket, a `:weight)` closing, a closing
# bracket, plain text, or a lone colon.
_PIECE = re.compile(r"\\[()\[\]\\]|\\|\(|\[|:([+-]?[.\d]+)\)|\)|]|[^\\()\[\]:]+|:")


def parse_weights(text: str) -> list[tuple[str, float]]:
    """`text` as runs of (text, weight), adjacent runs of equal weight merged."""
    runs: list[list] = []  # [text, weight], mutable while brackets close
    round_open: list[int] = []  # where each open `(` started, as an index into runs
    square_open: list[int] = []

    def multiply_from(start: int, factor: float) -> None:
        for run in runs[start:]:
            run[1] *= factor

    for match in _PIECE.finditer(text):
        piece, weight = match.group(0), match.group(1)
        if piece.startswith("\\"):
            runs.append([piece[1:], 1.0])  # a lone backslash is dropped
        elif piece == "(":
            round_open.append(len(runs))
        elif piece == "[":
            square_open.append(len(runs))
        elif weight is not None and round_open:
            multiply_from(round_open.pop(), float(weight))
        elif piece == ")" and round_open:
            multiply_from(round_open.pop(), UP)
        elif piece == "]" and square_open:
            multiply_from(square_open.pop(), DOWN)
        else:
            runs.append([piece, 1.0])
    for start in round_open:  # unclosed brackets weigh to the end
        multiply_from(start, UP)
    for start in square_open:
        multiply_from(start, DOWN)

    merged: list[tuple[str, float]] = []
    for piece, weight in runs:
        if merged and merged[-1][1] == weight:
            merged[-1] = (merged[-1][0] + piece, weight)
        else:
            merged.append((piece, weight))
    return merged or [("", 1.0)]


def _half(weight: float) -> float:
    """The reference holds weights in float16 (1.1 becomes 1.0996): the same factors here."""
    return float(torch.tensor(weight, dtype=torch.float16))


def tokens_with_weights(tokenizer: CLIPTokenizer, text: str) -> tuple[list[int], list[float]]:
    """Token ids (no begin/end tokens, never cut) and one weight per token."""
    ids: list[int] = []
    weights: list[float] = []
    for piece, weight in parse_weights(text):
        piece_ids = tokenizer(piece, truncation=False).input_ids[1:-1]
        ids += piece_ids
        weights += [_half(weight)] * len(piece_ids)
    return ids, weights


@dataclass(frozen=True)
class _Tokens:
    """A prompt and its negative as token chunks of the same count and lengths."""

    chunks: list[list[int]]
    weights: list[list[float]]
    negative_chunks: list[list[int]]
    negative_weights: list[list[float]]


def _tokenize(
    tokenizer: CLIPTokenizer, prompt: str, negative_prompt: str, pad_to_window: bool
) -> _Tokens:
    ids, weights = tokens_with_weights(tokenizer, prompt)
    negative_ids, negative_weights = tokens_with_weights(tokenizer, negative_prompt)
    length = max(len(ids), len(negative_ids))
    eos = tokenizer.eos_token_id
    ids, weights = ids + [eos] * (length - len(ids)), weights + [1.0] * (length - len(weights))
    negative_ids = negative_ids + [eos] * (length - len(negative_ids))
    negative_weights = negative_weights + [1.0] * (length - len(negative_weights))
    pad = tokenizer.pad_token_id if pad_to_window else None
    return _Tokens(
        *_chunked(ids, weights, tokenizer, pad),
        *_chunked(negative_ids, negative_weights, tokenizer, pad),
    )


def _chunked(
    ids: list[int], weights: list[float], tokenizer: CLIPTokenizer, pad: int | None
) -> tuple[list[list[int]], list[list[float]]]:
    """Chunks of 75 tokens, each framed by begin and end tokens. Without `pad`, as the reference:
    a last chunk always follows the full ones, only begin and end when the tokens fill them
    exactly. With `pad`, as many chunks as the tokens need (at least one), each padded to the
    77-token window."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    chunks, chunk_weights = [], []
    if pad is None:
        starts = range(0, len(ids) - len(ids) % CHUNK_TOKENS + 1, CHUNK_TOKENS)
    else:
        starts = range(0, max(len(ids), 1), CHUNK_TOKENS)
    for start in starts:
        part = ids[start : start + CHUNK_TOKENS]
        part_weights = weights[start : start + CHUNK_TOKENS]
        filler = CHUNK_TOKENS - len(part) if pad is not None else 0
        chunks.append([bos, *part, eos, *[pad] * filler])
        chunk_weights.append([1.0, *part_weights, 1.0, *[1.0] * filler])
    return chunks, chunk_weights


def token_count(tokenizer: CLIPTokenizer, prompt: str, negative_prompt: str, window: bool) -> int:
    """The length of the encoded sequence (samples of one batch must agree on it)."""
    tokens = _tokenize(tokenizer, prompt, negative_prompt, pad_to_window=window)
    return sum(len(chunk) for chunk in tokens.chunks)


def _weighted(hidden: torch.Tensor, weights: list[float]) -> torch.Tensor:
    """(L, C) hidden states of one chunk with each weighted token moved along (token - last)."""
    hidden = hidden.clone()
    last = hidden[-1]
    for index, weight in enumerate(weights):
        if weight != 1.0:
            hidden[index] = last + (hidden[index] - last) * weight
    return hidden


@dataclass(frozen=True)
class SDXLEmbeddings:
    """One sample's text conditioning for SDXL: (1, L, C) contexts and (1, P) pooled ones."""

    prompt: torch.Tensor
    negative: torch.Tensor
    pooled: torch.Tensor
    negative_pooled: torch.Tensor


def encode_sdxl(
    tokenizer: CLIPTokenizer,
    text_encoder: PreTrainedModel,
    text_encoder_2: PreTrainedModel,
    prompt: str,
    negative_prompt: str,
    device: torch.device,
) -> SDXLEmbeddings:
    """One sample's prompt and negative prompt, as InstantID's demo encodes them.

    The reference feeds both encoders the first tokenizer's ids (the second tokenizer splits runs
    of "!" differently); each chunk alone, batch of one, so a sample encodes the same in any
    batch. `device`: where the encoders run (with model CPU offload, where the hooks move them).
    """
    tokens = _tokenize(tokenizer, prompt, negative_prompt, pad_to_window=False)

    def encode(chunks: list[list[int]], weights: list[list[float]]) -> tuple[torch.Tensor, ...]:
        hidden_chunks, pooled = [], None
        for chunk, chunk_weights in zip(chunks, weights, strict=True):
            ids = torch.tensor([chunk], dtype=torch.long, device=device)
            first = text_encoder(ids, output_hidden_states=True)
            second = text_encoder_2(ids, output_hidden_states=True)
            pooled = second[0]
            hidden = torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1)[0]
            hidden_chunks.append(_weighted(hidden, chunk_weights))
        return torch.cat(hidden_chunks)[None], pooled

    prompt_embeds, pooled = encode(tokens.chunks, tokens.weights)
    negative_embeds, negative_pooled = encode(tokens.negative_chunks, tokens.negative_weights)
    return SDXLEmbeddings(prompt_embeds, negative_embeds, pooled, negative_pooled)


def encode_sd15(
    tokenizer: CLIPTokenizer,
    text_encoder: PreTrainedModel,
    prompt: str,
    negative_prompt: str,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One sample's (1, L, C) prompt and negative contexts for SD1.5: chunks padded to 77 and
    the last hidden state, as the SD1.5 pipeline encodes a prompt."""
    tokens = _tokenize(tokenizer, prompt, negative_prompt, pad_to_window=True)

    def encode(chunks: list[list[int]], weights: list[list[float]]) -> torch.Tensor:
        hidden_chunks = []
        for chunk, chunk_weights in zip(chunks, weights, strict=True):
            ids = torch.tensor([chunk], dtype=torch.long, device=device)
            hidden = text_encoder(ids)[0][0]
            hidden_chunks.append(_weighted(hidden, chunk_weights))
        return torch.cat(hidden_chunks)[None]

    return (
        encode(tokens.chunks, tokens.weights),
        encode(tokens.negative_chunks, tokens.negative_weights),
    )
