"""IP-Adapter attention whose scale travels with each call, never stored on the shared UNet.

diffusers' IPAdapterAttnProcessor2_0 reads its scale from the processor object
(`pipe.set_ip_adapter_scale` writes it), so two requests with different adapter strengths
would share one mutable value. Here the scale comes in through the UNet's
`cross_attention_kwargs={"ip_adapter_scale": s}` on every call, and the face tokens come in as
`encoder_hidden_states=(text_tokens, face_tokens)`: the loaded modules hold weights only.

`enhance_face_region` confines the face attention as InstantID's demo pipeline does: with
`cross_attention_kwargs={"ip_adapter_mask": m}` ((rows, 1, H, W) at the output's pixels, one
mask per row, ones for a row without), every layer multiplies the face attention's output by the
mask resized (nearest) to its own token grid, so outside the face the identity adds nothing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import (
    Attention,
    AttnProcessor2_0,
    IPAdapterAttnProcessor2_0,
)
from torch import nn

SCALE_KWARG = "ip_adapter_scale"
MASK_KWARG = "ip_adapter_mask"


class FaceAdapterAttnProcessor(nn.Module):
    """Cross-attention over the text plus, scaled per call, over the face tokens."""

    def __init__(self, to_k_ip: nn.Linear, to_v_ip: nn.Linear) -> None:
        super().__init__()
        self.to_k_ip = to_k_ip
        self.to_v_ip = to_v_ip

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        ip_adapter_scale: float | torch.Tensor = 0.0,
        ip_adapter_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`ip_adapter_scale`: one float for every row, or a tensor of one scale per row of
        `hidden_states` (a batch of samples with different adapter strengths).
        `ip_adapter_mask`: None, or (rows, 1, H, W) weights of the face attention per pixel."""
        text_tokens, face_tokens = encoder_hidden_states
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        spatial_shape = None
        if hidden_states.ndim == 4:
            spatial_shape = hidden_states.shape
            batch, channels, height, width = spatial_shape
            hidden_states = hidden_states.view(batch, channels, height * width).transpose(1, 2)
        if attention_mask is not None:
            batch, length = hidden_states.shape[0], text_tokens.shape[1]
            attention_mask = attn.prepare_attention_mask(attention_mask, length, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if attn.norm_cross:
            text_tokens = attn.norm_encoder_hidden_states(text_tokens)
        out = _attend(attn, query, attn.to_k(text_tokens), attn.to_v(text_tokens), attention_mask)
        # At 0 the face adds exactly nothing: skip its attention. A per-row tensor is never all
        # zero (the sampler passes the float 0 then).
        if isinstance(ip_adapter_scale, torch.Tensor) or ip_adapter_scale != 0:
            face = _attend(attn, query, self.to_k_ip(face_tokens), self.to_v_ip(face_tokens), None)
            if ip_adapter_mask is not None:
                face = face * _on_token_grid(ip_adapter_mask, face.shape[1]).to(face.dtype)
            if isinstance(ip_adapter_scale, torch.Tensor):
                ip_adapter_scale = ip_adapter_scale.view(-1, 1, 1).to(face.dtype)
            out = out + ip_adapter_scale * face

        out = attn.to_out[1](attn.to_out[0](out))  # linear projection, then dropout
        if spatial_shape is not None:
            out = out.transpose(-1, -2).reshape(spatial_shape)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


class SelfAttnProcessor(AttnProcessor2_0):
    """diffusers' processor for the other attention layers, accepting (and ignoring) the per-call
    IP-Adapter scale that the UNet hands every layer along with cross_attention_kwargs."""

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        ip_adapter_scale: float | torch.Tensor = 0.0,
        ip_adapter_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


def _on_token_grid(mask: torch.Tensor, tokens: int) -> torch.Tensor:
    """(rows, 1, H, W) pixel weights as (rows, tokens, 1): one per token of a layer whose grid is
    the image shrunk by the same factor on both sides. Nearest, as the reference resizes it."""
    height, width = mask.shape[-2:]
    ratio = (height * width / tokens) ** 0.5
    grid = (round(height / ratio), round(width / ratio))
    return F.interpolate(mask, size=grid, mode="nearest").reshape(mask.shape[0], -1, 1)


def _attend(
    attn: Attention,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
) -> torch.Tensor:
    batch = query.shape[0]
    head_dim = key.shape[-1] // attn.heads

    def heads(x: torch.Tensor) -> torch.Tensor:
        return x.view(batch, -1, attn.heads, head_dim).transpose(1, 2)

    out = F.scaled_dot_product_attention(heads(query), heads(key), heads(value), attn_mask=mask)
    return out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)


def use_per_call_scale(unet: UNet2DConditionModel) -> nn.Module:
    """Swap the processors diffusers' `load_ip_adapter` installed for per-call-scale ones (same
    weights), and take the face projection out of the UNet, so that a call projects the face
    embedding once and hands the tokens to both the UNet and the IdentityNet.

    Returns the projection (the Resampler): face embedding (B, 1, 512) -> tokens (B, N, width).
    """
    processors: dict[str, nn.Module] = {}
    for name, processor in unet.attn_processors.items():
        if isinstance(processor, IPAdapterAttnProcessor2_0):
            [to_k_ip], [to_v_ip] = processor.to_k_ip, processor.to_v_ip  # one adapter loaded
            processors[name] = FaceAdapterAttnProcessor(to_k_ip, to_v_ip)
        else:
            processors[name] = SelfAttnProcessor()
    unet.set_attn_processor(processors)
    [projection] = unet.encoder_hid_proj.image_projection_layers
    # Without encoder_hid_proj the UNet passes encoder_hidden_states through as given: the
    # (text, face) pair our processors read.
    unet.encoder_hid_proj = None
    return projection
