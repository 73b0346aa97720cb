"""Tiny random-weight FLUX.1 Depth [dev], for the `tiny` profile.

The real diffusers/transformers architectures with tiny configs and seeded random weights, saved
in the layout of black-forest-labs/FLUX.1-Depth-dev, so the runner loads both with one call:

    FluxControlPipeline.from_pretrained(dir)

- transformer: FluxTransformer2DModel with guidance embedding and control channels. Flux packs
  2x2 patches of its 16-channel latents into 64 channels; FLUX.1 Depth concatenates the packed
  latents of the depth map to them, so `in_channels` is 2 x 64 = 128 and `out_channels` 64.
- vae: AutoencoderKL with 16 latent channels and three 2x downsamplings (1/8, like Flux's).
- text_encoder / tokenizer: CLIP (pooled prompt embedding), the shared tiny CLIP tokenizer.
- text_encoder_2 / tokenizer_2: T5 encoder (per-token embeddings) with a tiny Unigram
  tokenizer built here (T5's tokenizer type, no sentencepiece file needed).

The images they generate are noise; they exist to exercise the serving stack quickly on CPU.

The configs here are the real architecture's structure at toy widths: a copy kept on purpose of
benchmarks/real_configs.py (docs/architecture.md, "Copies kept on purpose"); a change of
architecture is made in both.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxControlPipeline,
    FluxTransformer2DModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel, T5Tokenizer

from models.tiny_tokenizer import build_clip_tokenizer

SEED = 0

# --- latents: Flux's VAE has 16 channels; the transformer sees 2x2 patches packed into 64 ------
LATENT_CHANNELS = 16
PACKED_CHANNELS = LATENT_CHANNELS * 2 * 2
CONTROL_IN_CHANNELS = 2 * PACKED_CHANNELS  # noisy latents + depth-map latents, as FLUX.1 Depth

# --- transformer: one double-stream and one single-stream block --------------------------------
ATTENTION_HEADS = 2
ATTENTION_HEAD_DIM = 16
ROPE_AXES_DIMS = (4, 6, 6)  # per position axis (text index, row, column); sums to the head dim
DOUBLE_BLOCKS = 1
SINGLE_BLOCKS = 1

# --- VAE: four blocks, so three 2x downsamplings: latents are 1/8 of the image, like Flux ------
VAE_BLOCK_OUT_CHANNELS = (8, 16, 32, 32)
VAE_NORM_NUM_GROUPS = 8  # must divide every VAE channel count
VAE_SCALING_FACTOR = 0.3611  # FLUX.1's latent scaling and shift
VAE_SHIFT_FACTOR = 0.1159

# --- CLIP text encoder: only its pooled output is used -----------------------------------------
CLIP_HIDDEN_SIZE = 32
CLIP_INTERMEDIATE_SIZE = 64
CLIP_LAYERS = 2
CLIP_ATTENTION_HEADS = 4
CLIP_MAX_POSITIONS = 77

# --- T5 encoder: gated-GELU feed-forward, as T5 v1.1 (FLUX.1 uses T5-XXL v1.1) -----------------
T5_D_MODEL = 32
T5_D_KV = 8
T5_D_FF = 64
T5_LAYERS = 2
T5_HEADS = 4
T5_RELATIVE_BUCKETS = 8
T5_MAX_LENGTH = 512  # FLUX.1 [dev]'s T5 sequence length

# --- T5 tokenizer: a Unigram vocabulary of characters and a few whole words ---------------------
# Unigram picks the segmentation with the highest total score: whole words (one piece) beat
# their spelling in characters (several pieces), so common prompt words are single tokens.
T5_PAD, T5_EOS, T5_UNK = "<pad>", "</s>", "<unk>"
WORD_BOUNDARY = "▁"  # sentencepiece's word-start marker
T5_CHARACTERS = string.ascii_letters + string.digits + string.punctuation
T5_WORDS = ("a", "an", "the", "of", "in", "on", "with", "and", "photo", "cat", "house")
T5_CHARACTER_SCORE = -5.0
T5_WORD_SCORE = -3.0

# --- scheduler: FLUX.1 [dev]'s scheduler_config.json -------------------------------------------
SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}


def build_t5_tokenizer() -> T5Tokenizer:
    """A T5 (Unigram) tokenizer with a tiny vocabulary; deterministic, no files needed."""
    # T5's layout: <pad>=0, </s>=1, <unk>=2, then the pieces.
    vocab = [(T5_PAD, 0.0), (T5_EOS, 0.0), (T5_UNK, 0.0), (WORD_BOUNDARY, T5_CHARACTER_SCORE)]
    vocab += [(char, T5_CHARACTER_SCORE) for char in T5_CHARACTERS]
    vocab += [(WORD_BOUNDARY + char, T5_CHARACTER_SCORE) for char in T5_CHARACTERS]
    vocab += [(WORD_BOUNDARY + word, T5_WORD_SCORE) for word in T5_WORDS]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=T5_MAX_LENGTH)


def _build_transformer(joint_attention_dim: int, pooled_projection_dim: int):
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=CONTROL_IN_CHANNELS,
        out_channels=PACKED_CHANNELS,
        num_layers=DOUBLE_BLOCKS,
        num_single_layers=SINGLE_BLOCKS,
        attention_head_dim=ATTENTION_HEAD_DIM,
        num_attention_heads=ATTENTION_HEADS,
        joint_attention_dim=joint_attention_dim,
        pooled_projection_dim=pooled_projection_dim,
        guidance_embeds=True,  # FLUX.1 [dev] is guidance-distilled: guidance is an input
        axes_dims_rope=ROPE_AXES_DIMS,
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
        scaling_factor=VAE_SCALING_FACTOR,
        shift_factor=VAE_SHIFT_FACTOR,
        use_quant_conv=False,  # as in Flux's VAE
        use_post_quant_conv=False,
    )


def _build_clip(vocab_size: int, bos_id: int, eos_id: int, pad_id: int) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=CLIP_HIDDEN_SIZE,
        intermediate_size=CLIP_INTERMEDIATE_SIZE,
        num_hidden_layers=CLIP_LAYERS,
        num_attention_heads=CLIP_ATTENTION_HEADS,
        max_position_embeddings=CLIP_MAX_POSITIONS,
        hidden_act="quick_gelu",
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )
    return CLIPTextModel(config)


def _build_t5(vocab_size: int, pad_id: int, eos_id: int) -> T5EncoderModel:
    config = T5Config(
        vocab_size=vocab_size,
        d_model=T5_D_MODEL,
        d_kv=T5_D_KV,
        d_ff=T5_D_FF,
        num_layers=T5_LAYERS,
        num_heads=T5_HEADS,
        relative_attention_num_buckets=T5_RELATIVE_BUCKETS,
        feed_forward_proj="gated-gelu",
        pad_token_id=pad_id,
        eos_token_id=eos_id,
        is_encoder_decoder=False,
        use_cache=False,
    )
    return T5EncoderModel(config)


def build_flux_depth(dest: Path) -> None:
    """Save a tiny FLUX.1 Depth [dev] pipeline folder into `dest`."""
    tokenizer = build_clip_tokenizer(model_max_length=CLIP_MAX_POSITIONS)
    tokenizer_2 = build_t5_tokenizer()
    # Re-seed before each component, so that each one's weights do not depend on the others.
    torch.manual_seed(SEED)
    text_encoder = _build_clip(
        vocab_size=len(tokenizer),
        bos_id=tokenizer.bos_token_id,
        eos_id=tokenizer.eos_token_id,
        pad_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(SEED)
    text_encoder_2 = _build_t5(
        vocab_size=len(tokenizer_2),
        pad_id=tokenizer_2.pad_token_id,
        eos_id=tokenizer_2.eos_token_id,
    )
    torch.manual_seed(SEED)
    transformer = _build_transformer(
        joint_attention_dim=T5_D_MODEL, pooled_projection_dim=CLIP_HIDDEN_SIZE
    )
    torch.manual_seed(SEED)
    vae = _build_vae()
    pipeline = FluxControlPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )
    pipeline.save_pretrained(dest)
