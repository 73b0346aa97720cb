"""Tiny random-weight SDXL base, SDXL VAE and SDXL depth ControlNet, for the `tiny` profile.

The real diffusers/transformers architectures with tiny configs and seeded random weights, saved
in the real checkpoints' layouts, so the runner loads both profiles with the same calls:

    AutoencoderKL.from_pretrained(vae_dir)
    StableDiffusionXLPipeline.from_pretrained(base_dir, vae=vae)
    ControlNetModel.from_pretrained(controlnet_dir)

SDXL's shape is kept where the serving code depends on it: two text encoders whose hidden states
are concatenated into the cross-attention context (the second one with a projection, pooled into
the "text_time" added embedding with the six size/crop ids), a VAE that downsamples by 8, and
ControlNets that take the same added conditioning as the UNet.

The configs here are the real architecture's structure at toy widths: a copy kept on purpose of
benchmarks/real_configs.py (docs/architecture.md, "Copies kept on purpose"); a change of
architecture is made in both.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    EulerDiscreteScheduler,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from models.tiny_sd15 import _let_control_image_through
from models.tiny_tokenizer import build_clip_tokenizer
from settings import TINY_LONG_SIDE

SEED = 0

# --- text encoders: SDXL concatenates both encoders' penultimate hidden states ------------------
TEXT_HIDDEN_SIZE = 32
TEXT_2_HIDDEN_SIZE = 32
TEXT_2_PROJECTION_DIM = 32  # the pooled embedding fed to "text_time"
TEXT_INTERMEDIATE_SIZE = 64
TEXT_LAYERS = 2  # SDXL reads the penultimate layer, so at least two
TEXT_ATTENTION_HEADS = 4
TEXT_MAX_POSITIONS = 77
CROSS_ATTENTION_DIM = TEXT_HIDDEN_SIZE + TEXT_2_HIDDEN_SIZE

# --- UNet (ControlNets copy its encoder half) ---------------------------------------------------
UNET_BLOCK_OUT_CHANNELS = (32, 64)
UNET_LAYERS_PER_BLOCK = 1
UNET_ATTENTION_HEAD_DIM = (2, 4)  # heads per block, diffusers' historical name
UNET_DOWN_BLOCKS = ("DownBlock2D", "CrossAttnDownBlock2D")  # SDXL: no attention at full size
UNET_UP_BLOCKS = ("CrossAttnUpBlock2D", "UpBlock2D")
UNET_TRANSFORMER_LAYERS = (1, 1)
ADDITION_TIME_EMBED_DIM = 8
# "text_time": six micro-conditioning ids (original size, crop top-left, target size), each
# embedded to ADDITION_TIME_EMBED_DIM, plus the pooled text embedding.
TIME_IDS = 6
PROJECTION_CLASS_EMBEDDINGS_INPUT_DIM = TIME_IDS * ADDITION_TIME_EMBED_DIM + TEXT_2_PROJECTION_DIM
LATENT_CHANNELS = 4

# --- VAE: four blocks, three 2x downsamplings, latents 1/8 of the image, like SDXL's ------------
VAE_BLOCK_OUT_CHANNELS = (8, 16, 32, 32)
VAE_NORM_NUM_GROUPS = 8
VAE_SCALE_FACTOR = 2 ** (len(VAE_BLOCK_OUT_CHANNELS) - 1)
VAE_SCALING_FACTOR = 0.13025  # SDXL's latent scaling
UNET_SAMPLE_SIZE = TINY_LONG_SIDE // VAE_SCALE_FACTOR

# --- ControlNet: conditioning blocks map a full-size control image onto the 1/8 latent grid -----
CONTROLNET_CONDITIONING_CHANNELS = (8, 16, 32, 32)

# --- scheduler: SDXL base's scheduler_config.json ------------------------------------------------
SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "interpolation_type": "linear",
    "timestep_spacing": "leading",
    "steps_offset": 1,
    "use_karras_sigmas": False,
}


def unet_like_config() -> dict:
    """The settings the UNet and every ControlNet of this base must agree on."""
    return {
        "in_channels": LATENT_CHANNELS,
        "block_out_channels": UNET_BLOCK_OUT_CHANNELS,
        "layers_per_block": UNET_LAYERS_PER_BLOCK,
        "down_block_types": UNET_DOWN_BLOCKS,
        "attention_head_dim": UNET_ATTENTION_HEAD_DIM,
        "transformer_layers_per_block": UNET_TRANSFORMER_LAYERS,
        "use_linear_projection": True,
        "cross_attention_dim": CROSS_ATTENTION_DIM,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": ADDITION_TIME_EMBED_DIM,
        "projection_class_embeddings_input_dim": PROJECTION_CLASS_EMBEDDINGS_INPUT_DIM,
    }


def build_unet() -> UNet2DConditionModel:
    """The tiny SDXL UNet (random weights; seed before calling for reproducible ones)."""
    return UNet2DConditionModel(
        **unet_like_config(),
        out_channels=LATENT_CHANNELS,
        up_block_types=UNET_UP_BLOCKS,
        sample_size=UNET_SAMPLE_SIZE,
    )


def build_controlnet() -> ControlNetModel:
    """A tiny SDXL ControlNet for build_unet's UNet, whose control image changes the output."""
    controlnet = ControlNetModel(
        **unet_like_config(),
        conditioning_channels=3,
        conditioning_embedding_out_channels=CONTROLNET_CONDITIONING_CHANNELS,
    )
    _let_control_image_through(controlnet)
    return controlnet


def _text_config(vocab_size: int, hidden_size: int, tokenizer) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=TEXT_INTERMEDIATE_SIZE,
        num_hidden_layers=TEXT_LAYERS,
        num_attention_heads=TEXT_ATTENTION_HEADS,
        max_position_embeddings=TEXT_MAX_POSITIONS,
        projection_dim=TEXT_2_PROJECTION_DIM,
        hidden_act="gelu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _build_vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(VAE_BLOCK_OUT_CHANNELS),
        up_block_types=("UpDecoderBlock2D",) * len(VAE_BLOCK_OUT_CHANNELS),
        block_out_channels=VAE_BLOCK_OUT_CHANNELS,
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=VAE_NORM_NUM_GROUPS,
        sample_size=TINY_LONG_SIDE,
        scaling_factor=VAE_SCALING_FACTOR,
        # Like the fp16-fix VAE the full profile uses: safe to decode in half precision.
        force_upcast=False,
    )


def build_sdxl_vae(dest: Path) -> None:
    """Save a tiny SDXL VAE (the full profile's is the fp16-safe one) into `dest`."""
    torch.manual_seed(SEED)
    _build_vae().save_pretrained(dest)


def build_sdxl_base(dest: Path) -> None:
    """Save a tiny SDXL base pipeline folder (two text encoders, UNet, VAE) into `dest`."""
    tokenizer = build_clip_tokenizer(model_max_length=TEXT_MAX_POSITIONS)
    tokenizer_2 = build_clip_tokenizer(model_max_length=TEXT_MAX_POSITIONS)
    # Re-seed before each component, so that each one's weights do not depend on the others.
    torch.manual_seed(SEED)
    unet = build_unet()
    torch.manual_seed(SEED)
    vae = _build_vae()
    torch.manual_seed(SEED)
    text_encoder = CLIPTextModel(_text_config(len(tokenizer), TEXT_HIDDEN_SIZE, tokenizer))
    torch.manual_seed(SEED + 1)
    text_encoder_2 = CLIPTextModelWithProjection(
        _text_config(len(tokenizer_2), TEXT_2_HIDDEN_SIZE, tokenizer_2)
    )
    pipeline = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=EulerDiscreteScheduler(**SCHEDULER_CONFIG),
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
    pipeline.save_pretrained(dest)


def build_sdxl_controlnet_depth(dest: Path) -> None:
    """Save a tiny SDXL depth ControlNet matching build_sdxl_base's UNet into `dest`."""
    torch.manual_seed(SEED + 2)
    build_controlnet().save_pretrained(dest)
