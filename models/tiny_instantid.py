"""Tiny random-weight InstantID (IdentityNet + face IP-Adapter) for the tiny SDXL base.

Saved in the layout of the real repository (InstantX/InstantID), so both profiles load the same
way:

    <dest>/ControlNetModel/        IdentityNet: an SDXL ControlNet whose cross-attention reads the
                                   projected face tokens (not the text)
    <dest>/ip-adapter.bin          torch.save({"image_proj": ..., "ip_adapter": ...}):
        image_proj   the Resampler (IP-Adapter Plus) that turns one 512-d ArcFace embedding into
                     NUM_QUERIES tokens of the UNet's cross-attention width, in the original
                     key names (layers.N.0.to_kv, layers.N.1.3, ...)
        ip_adapter   to_k_ip / to_v_ip of every cross-attention layer, keyed by the layer's index
                     among all the UNet's attention processors ("1.to_k_ip.weight", ...)

diffusers' own `load_ip_adapter` reads this file (tests/runners/test_instantid_runner.py checks it).
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.embeddings import IPAdapterPlusImageProjection

from models.manifest import INSTANTID_IDENTITYNET_FOLDER, INSTANTID_IP_ADAPTER_FILE
from models.tiny_faces import EMBEDDING_SIZE
from models.tiny_sdxl import CROSS_ATTENTION_DIM, build_controlnet, build_unet

SEED = 3

# The Resampler: the real one is 1280 wide, 20 heads of 64, depth 4, 16 queries, output 2048.
# diffusers infers its heads as width // 64, so the tiny one keeps 64-wide heads.
RESAMPLER_HEAD_DIM = 64
RESAMPLER_HEADS = 1
RESAMPLER_DEPTH = 4
RESAMPLER_FF_MULT = 4
NUM_QUERIES = 16


def build_instantid(dest: Path) -> None:
    """Save a tiny IdentityNet and ip-adapter.bin into `dest`, as InstantX/InstantID lays them."""
    torch.manual_seed(SEED)
    build_controlnet().save_pretrained(dest / INSTANTID_IDENTITYNET_FOLDER)
    torch.manual_seed(SEED)
    resampler = image_proj_state(
        embed_dims=EMBEDDING_SIZE,
        output_dims=CROSS_ATTENTION_DIM,
        hidden_dims=RESAMPLER_HEAD_DIM * RESAMPLER_HEADS,
        depth=RESAMPLER_DEPTH,
        dim_head=RESAMPLER_HEAD_DIM,
        heads=RESAMPLER_HEADS,
        num_queries=NUM_QUERIES,
        ffn_ratio=RESAMPLER_FF_MULT,
    )
    state = {
        "image_proj": resampler,
        "ip_adapter": ip_adapter_state(build_unet(), CROSS_ATTENTION_DIM),
    }
    torch.save(state, dest / INSTANTID_IP_ADAPTER_FILE)


def image_proj_state(**resampler_config: int) -> dict[str, torch.Tensor]:
    """A random Resampler (IPAdapterPlusImageProjection's arguments), in the original IP-Adapter
    key names (the inverse of diffusers' conversion in
    UNet2DConditionLoadersMixin._convert_ip_adapter_image_proj_to_diffusers)."""
    resampler = IPAdapterPlusImageProjection(**resampler_config)
    diffusers_state = resampler.state_dict()
    state = {
        key: value
        for key, value in diffusers_state.items()
        if not key.startswith("layers.")  # latents, proj_in, proj_out, norm_out keep their names
    }
    for i in range(resampler_config["depth"]):
        layer = f"layers.{i}"
        renames = {
            "ln0.weight": "0.norm1.weight",
            "ln0.bias": "0.norm1.bias",
            "ln1.weight": "0.norm2.weight",
            "ln1.bias": "0.norm2.bias",
            "attn.to_q.weight": "0.to_q.weight",
            "attn.to_out.0.weight": "0.to_out.weight",
            "ff.0.weight": "1.0.weight",
            "ff.0.bias": "1.0.bias",
            "ff.1.net.0.proj.weight": "1.1.weight",
            "ff.1.net.2.weight": "1.3.weight",
        }
        for new, old in renames.items():
            state[f"{layer}.{old}"] = diffusers_state[f"{layer}.{new}"]
        # The original attends with one fused key-value projection.
        state[f"{layer}.0.to_kv.weight"] = torch.cat(
            [
                diffusers_state[f"{layer}.attn.to_k.weight"],
                diffusers_state[f"{layer}.attn.to_v.weight"],
            ]
        )
    return {key: value.contiguous() for key, value in state.items()}


def ip_adapter_state(unet: UNet2DConditionModel, face_dim: int) -> dict[str, torch.Tensor]:
    """Random to_k_ip / to_v_ip (from the Resampler's `face_dim`-wide tokens) for each
    cross-attention layer of `unet`, keyed as InstantID saves them: the index among *all*
    attention processors (self-attention ones have none)."""
    state = {}
    for index, name in enumerate(unet.attn_processors):
        if not name.endswith("attn2.processor"):
            continue
        attention = unet.get_submodule(name.removesuffix(".processor"))
        for projection in ("to_k_ip", "to_v_ip"):
            layer = torch.nn.Linear(face_dim, attention.to_k.out_features, bias=False)
            state[f"{index}.{projection}.weight"] = layer.weight.detach().clone()
    return state
