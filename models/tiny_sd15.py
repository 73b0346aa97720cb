"""Tiny random-weight Stable Diffusion 1.5 + depth ControlNet, for the `tiny` profile.

These are the real diffusers/transformers architectures (UNet2DConditionModel, AutoencoderKL,
CLIPTextModel, ControlNetModel) with tiny configs and seeded random weights. They are saved in
the same folder layout as the real checkpoints, so the runner loads both with the same calls:

    ControlNetModel.from_pretrained(controlnet_dir)
    StableDiffusionControlNetPipeline.from_pretrained(
        base_dir, controlnet=controlnet, safety_checker=None, requires_safety_checker=False
    )

The images they generate are noise; they exist to exercise the serving stack quickly on CPU.

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
    PNDMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel

from models.tiny_tokenizer import build_clip_tokenizer
from settings import TINY_LONG_SIDE

SEED = 0

# --- UNet (the ControlNet copies its encoder half) ------------------------------------------
UNET_BLOCK_OUT_CHANNELS = (32, 64)
UNET_LAYERS_PER_BLOCK = 1
UNET_ATTENTION_HEAD_DIM = 2  # diffusers' historical name: this is the number of heads
UNET_DOWN_BLOCKS = ("CrossAttnDownBlock2D", "DownBlock2D")
UNET_UP_BLOCKS = ("UpBlock2D", "CrossAttnUpBlock2D")
CROSS_ATTENTION_DIM = 32  # = the text encoder's hidden size
LATENT_CHANNELS = 4

# --- VAE: four blocks, so three 2x downsamplings: latents are 1/8 of the image, like SD 1.5 ---
VAE_BLOCK_OUT_CHANNELS = (8, 16, 32, 32)
VAE_NORM_NUM_GROUPS = 8  # must divide every VAE channel count
VAE_SCALE_FACTOR = 2 ** (len(VAE_BLOCK_OUT_CHANNELS) - 1)
VAE_SCALING_FACTOR = 0.18215  # SD 1.5's latent scaling

# The pipeline's default output size is sample_size * VAE_SCALE_FACTOR: the tiny long side.
UNET_SAMPLE_SIZE = TINY_LONG_SIDE // VAE_SCALE_FACTOR

# --- ControlNet: four conditioning blocks (three 2x downsamplings) map a full-size control ----
# image onto the 1/8 latent grid, like the real one's (16, 32, 96, 256).
CONTROLNET_CONDITIONING_CHANNELS = (8, 16, 32, 32)

# --- CLIP text encoder ------------------------------------------------------------------------
TEXT_HIDDEN_SIZE = CROSS_ATTENTION_DIM
TEXT_INTERMEDIATE_SIZE = 64
TEXT_LAYERS = 2
TEXT_ATTENTION_HEADS = 4
TEXT_MAX_POSITIONS = 77  # = the tokenizer's model_max_length, as in CLIP

# --- Scheduler: SD 1.5's scheduler_config.json --------------------------------------------------
SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    # The real file's value: DDIM and DDPM, built from this config, must not clip the sample.
    "clip_sample": False,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
}


def _unet_like_config() -> dict:
    """The settings the UNet and the ControlNet must agree on."""
    return {
        "in_channels": LATENT_CHANNELS,
        "block_out_channels": UNET_BLOCK_OUT_CHANNELS,
        "layers_per_block": UNET_LAYERS_PER_BLOCK,
        "down_block_types": UNET_DOWN_BLOCKS,
        "cross_attention_dim": CROSS_ATTENTION_DIM,
        "attention_head_dim": UNET_ATTENTION_HEAD_DIM,
    }


def _build_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        **_unet_like_config(),
        out_channels=LATENT_CHANNELS,
        up_block_types=UNET_UP_BLOCKS,
        sample_size=UNET_SAMPLE_SIZE,
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
    )


def _build_text_encoder(vocab_size: int, bos_id: int, eos_id: int, pad_id: int) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=TEXT_HIDDEN_SIZE,
        intermediate_size=TEXT_INTERMEDIATE_SIZE,
        num_hidden_layers=TEXT_LAYERS,
        num_attention_heads=TEXT_ATTENTION_HEADS,
        max_position_embeddings=TEXT_MAX_POSITIONS,
        hidden_act="quick_gelu",  # as in SD 1.5's text encoder
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )
    return CLIPTextModel(config)


def build_sd15_base(dest: Path) -> None:
    """Save a tiny Stable Diffusion 1.5 pipeline folder (no safety checker) into `dest`."""
    tokenizer = build_clip_tokenizer(model_max_length=TEXT_MAX_POSITIONS)
    # Re-seed before each component, so that each one's weights do not depend on the others.
    torch.manual_seed(SEED)
    unet = _build_unet()
    torch.manual_seed(SEED)
    vae = _build_vae()
    torch.manual_seed(SEED)
    text_encoder = _build_text_encoder(
        vocab_size=len(tokenizer),
        bos_id=tokenizer.bos_token_id,
        eos_id=tokenizer.eos_token_id,
        pad_id=tokenizer.pad_token_id,
    )
    pipeline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        # from_config keeps clip_sample, which PNDM itself does not take, for the other kinds.
        scheduler=PNDMScheduler.from_config(SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(dest)


def build_sd15_controlnet(dest: Path) -> None:
    """Save a tiny depth ControlNet matching build_sd15_base's UNet into `dest`."""
    torch.manual_seed(SEED)
    controlnet = ControlNetModel(
        **_unet_like_config(),
        conditioning_channels=3,
        conditioning_embedding_out_channels=CONTROLNET_CONDITIONING_CHANNELS,
    )
    _let_control_image_through(controlnet)
    controlnet.save_pretrained(dest)


def _let_control_image_through(controlnet: ControlNetModel) -> None:
    """Re-initialise the control path so that the control image changes the output.

    An untrained ControlNet adds exactly nothing: its output convolutions start at zero. And with
    PyTorch's default init, the conditioning encoder's eight random convolutions shrink the
    control signal about tenfold. He-normal weights (and zero biases) keep its scale instead.
    """
    convolutions = [
        *(m for m in controlnet.controlnet_cond_embedding.modules() if isinstance(m, nn.Conv2d)),
        *controlnet.controlnet_down_blocks,
        controlnet.controlnet_mid_block,
    ]
    with torch.no_grad():
        for conv in convolutions:
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            nn.init.zeros_(conv.bias)
