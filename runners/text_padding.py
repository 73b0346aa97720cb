"""Prompts of different lengths in one pipeline call: each sample's encoded prompt is padded to
the call's longest, and the padding is masked out of every cross-attention that reads the text.

A sample's text tokens then get exactly the attention weights they get alone (a masked key's
weight is exp(-10000) = 0), so its image is the one it makes alone, and prompt length never
splits a call.

How the mask reaches the attention: diffusers' ControlNetModel takes no text mask, and its SD1.5
pipeline passes none to the ControlNet or the UNet. So `mask_text_attention` puts a forward
pre-hook on each attention layer of a module that reads the prompt (a PyTorch hook, not a
change to diffusers): while a call runs `with padding_masked(mask)`, every cross-attention whose
text has the mask's length gets it as its `attention_mask` (an additive bias, as diffusers makes
of `encoder_attention_mask`). Outside such a block, or when every prompt of a call has the same
length (no mask is made), the hooks do nothing and the modules compute exactly what they did.
One pipeline call at a time runs per process (the pipelines' lock), so one active mask is enough.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from diffusers.models.attention_processor import Attention
from torch import nn

# diffusers' own value for a masked key (UNet2DConditionModel, encoder_attention_mask).
MASKED = -10000.0
_HOOKED = "_depthid_text_mask_hooked"


class _Active:
    """The mask of the call now running: (samples, tokens), 1 for a token, 0 for padding."""

    mask: torch.Tensor | None = None


_active = _Active()


def pad_texts(texts: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(1, L_i, C) contexts as one (n, L, C) batch, L the longest, shorter ones padded with zeros
    at the end; and their (n, L) mask, or None when every L_i is the same (nothing to mask)."""
    longest = max(text.shape[1] for text in texts)
    if all(text.shape[1] == longest for text in texts):
        return torch.cat(texts), None
    mask = torch.zeros((len(texts), longest), device=texts[0].device)
    padded = []
    for row, text in enumerate(texts):
        mask[row, : text.shape[1]] = 1.0
        padded.append(nn.functional.pad(text, (0, 0, 0, longest - text.shape[1])))
    return torch.cat(padded), mask


@contextlib.contextmanager
def padding_masked(mask: torch.Tensor | None) -> Iterator[None]:
    """Within this block, hooked cross-attention masks out the padding `mask` marks (None: no
    padding, nothing changes)."""
    _active.mask = mask
    try:
        yield
    finally:
        _active.mask = None


def mask_text_attention(module: nn.Module) -> None:
    """Hook every attention layer of `module` (a UNet or ControlNet reading the prompt) so that
    `padding_masked` reaches it. Once per module; the hooks live as long as it does."""
    if getattr(module, _HOOKED, False):
        return
    for layer in module.modules():
        if isinstance(layer, Attention) and layer.is_cross_attention:
            layer.register_forward_pre_hook(_apply_mask, with_kwargs=True)
    setattr(module, _HOOKED, True)


def _apply_mask(layer: Attention, args: tuple, kwargs: dict[str, Any]) -> tuple | None:
    mask = _active.mask
    if mask is None:
        return None
    context = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
    if isinstance(context, tuple):  # the InstantID UNet: (text tokens, face tokens)
        context = context[0]
    rows = args[0].shape[0] if args else kwargs["hidden_states"].shape[0]
    # Only the text the mask was made for: same length, and the rows of its samples (twice with
    # classifier-free guidance). Face tokens (IdentityNet) are another length, never masked.
    if context is None or context.shape[1] != mask.shape[1] or rows % mask.shape[0]:
        return None
    if kwargs.get("attention_mask") is not None:
        return None  # a mask of the caller's own: never overridden
    bias = (1.0 - mask.repeat(rows // mask.shape[0], 1)) * MASKED
    kwargs["attention_mask"] = bias[:, None, :].to(context.dtype)
    return args, kwargs
