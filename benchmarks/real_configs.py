"""The real models' architectures, written out, for benchmarks/gpu.py (no machine here can reach
a model hub, so nothing is downloaded: the benchmark builds these with random weights).

Each config is the constructor arguments of the class that loads the real checkpoint, copied
from the `config.json` of the repository named beside it (keys left at the class's default are
left out). The schedulers' configs are the real ones that the tiny builders (models/tiny_*.py)
already hold. The benchmark's timings depend on the shapes only, never on the weights' values.

The preprocessing models (depth estimator, safety classifier) are here too, with their image
processors' arguments. Face analysis is not: its ONNX models cannot be built from a config (the
benchmark uses the tiny profile's hand-set ones, models/tiny_faces.py).

`TINY` has the same structure shrunk to toy sizes, so `--scale tiny` runs the whole benchmark on
the CPU in seconds (tests/deploy/test_bench_gpu.py); its numbers mean nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling

from models import tiny_depth, tiny_flux, tiny_safety, tiny_sd15, tiny_sdxl

Config = dict[str, Any]

_SD_DOWN = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
_SD_UP = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")
_SDXL_DOWN = ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D")
_SDXL_UP = ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")
_VAE_DOWN = ("DownEncoderBlock2D",) * 4
_VAE_UP = ("UpDecoderBlock2D",) * 4


@dataclass(frozen=True)
class SD15Configs:
    unet: Config  # diffusers UNet2DConditionModel
    controlnet: Config  # diffusers ControlNetModel
    vae: Config  # diffusers AutoencoderKL
    text_encoder: Config  # transformers CLIPTextConfig
    scheduler: Config  # the base scheduler's config; requests pick theirs from it


@dataclass(frozen=True)
class SDXLConfigs:
    unet: Config
    identitynet: Config  # InstantID's IdentityNet: an SDXL ControlNetModel
    depth_controlnet: Config
    vae: Config
    text_encoder: Config  # CLIPTextConfig (CLIPTextModel)
    text_encoder_2: Config  # CLIPTextConfig (CLIPTextModelWithProjection)
    # diffusers IPAdapterPlusImageProjection: what `load_ip_adapter` makes of InstantID's
    # Resampler; its face tokens feed the UNet's IP-Adapter layers and the IdentityNet.
    resampler: Config
    scheduler: Config  # EulerDiscreteScheduler


@dataclass(frozen=True)
class FluxConfigs:
    transformer: Config  # diffusers FluxTransformer2DModel
    vae: Config
    text_encoder: Config  # CLIPTextConfig (CLIPTextModel; its pooled output)
    text_encoder_2: Config  # transformers T5Config (T5EncoderModel)
    scheduler: Config  # FlowMatchEulerDiscreteScheduler


@dataclass(frozen=True)
class PreprocessorConfigs:
    depth_backbone: Config  # transformers Dinov2Config
    depth: Config  # transformers DepthAnythingConfig (its backbone: the above)
    depth_processor: Config  # transformers DPTImageProcessor
    safety: Config  # transformers ViTConfig (ViTForImageClassification, labels normal/nsfw)
    safety_processor: Config  # transformers ViTImageProcessor


@dataclass(frozen=True)
class Configs:
    sd15: SD15Configs
    sdxl: SDXLConfigs
    flux: FluxConfigs
    preprocessors: PreprocessorConfigs


# --- real --------------------------------------------------------------------------------------

# openai/clip-vit-large-patch14's text tower: SD1.5's text_encoder, SDXL's and FLUX.1's first.
_CLIP_L: Config = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
}

# The SD/SDXL VAE's shape (stable-diffusion-v1-5/stable-diffusion-v1-5 vae/config.json;
# madebyollin/sdxl-vae-fp16-fix config.json is the same with its own scaling factor).
_SD_VAE: Config = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": _VAE_DOWN,
    "up_block_types": _VAE_UP,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
}

# SDXL's UNet and its full-size ControlNets share these (stabilityai/stable-diffusion-xl-base-1.0
# unet/config.json; InstantX/InstantID ControlNetModel/config.json and
# diffusers/controlnet-depth-sdxl-1.0 config.json repeat them).
_SDXL_SHARED: Config = {
    "in_channels": 4,
    "down_block_types": _SDXL_DOWN,
    "block_out_channels": (320, 640, 1280),
    "layers_per_block": 2,
    "attention_head_dim": (5, 10, 20),
    "transformer_layers_per_block": (1, 2, 10),
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
}
_SDXL_CONTROLNET: Config = {
    **_SDXL_SHARED,
    "conditioning_channels": 3,
    "conditioning_embedding_out_channels": (16, 32, 96, 256),
}

REAL = Configs(
    sd15=SD15Configs(
        # stable-diffusion-v1-5/stable-diffusion-v1-5 @451f4fe unet/config.json
        unet={
            "in_channels": 4,
            "out_channels": 4,
            "down_block_types": _SD_DOWN,
            "up_block_types": _SD_UP,
            "block_out_channels": (320, 640, 1280, 1280),
            "layers_per_block": 2,
            "attention_head_dim": 8,
            "cross_attention_dim": 768,
            "sample_size": 64,
        },
        # lllyasviel/control_v11f1p_sd15_depth @539f991 config.json
        controlnet={
            "in_channels": 4,
            "down_block_types": _SD_DOWN,
            "block_out_channels": (320, 640, 1280, 1280),
            "layers_per_block": 2,
            "attention_head_dim": 8,
            "cross_attention_dim": 768,
            "conditioning_channels": 3,
            "conditioning_embedding_out_channels": (16, 32, 96, 256),
        },
        vae={**_SD_VAE, "scaling_factor": 0.18215},
        text_encoder=_CLIP_L,
        scheduler=tiny_sd15.SCHEDULER_CONFIG,  # PNDMScheduler
    ),
    sdxl=SDXLConfigs(
        unet={
            **_SDXL_SHARED,
            "out_channels": 4,
            "up_block_types": _SDXL_UP,
            "sample_size": 128,
        },
        identitynet=_SDXL_CONTROLNET,
        depth_controlnet=_SDXL_CONTROLNET,
        # madebyollin/sdxl-vae-fp16-fix @207b116 config.json: decodes in fp16 without overflow
        vae={**_SD_VAE, "scaling_factor": 0.13025, "force_upcast": False},
        text_encoder=_CLIP_L,
        # stable-diffusion-xl-base-1.0 text_encoder_2/config.json (OpenCLIP ViT-bigG/14's text)
        text_encoder_2={
            "vocab_size": 49408,
            "hidden_size": 1280,
            "intermediate_size": 5120,
            "num_hidden_layers": 32,
            "num_attention_heads": 20,
            "max_position_embeddings": 77,
            "hidden_act": "gelu",
            "projection_dim": 1280,
        },
        # InstantX/InstantID ip-adapter.bin's Resampler (InstantID's infer code: dim 1280,
        # depth 4, dim_head 64, heads 20, num_queries 16, embedding_dim 512, output_dim 2048,
        # ff_mult 4), in diffusers' names.
        resampler={
            "embed_dims": 512,
            "output_dims": 2048,
            "hidden_dims": 1280,
            "depth": 4,
            "dim_head": 64,
            "heads": 20,
            "num_queries": 16,
            "ffn_ratio": 4,
        },
        scheduler=tiny_sdxl.SCHEDULER_CONFIG,  # EulerDiscreteScheduler
    ),
    flux=FluxConfigs(
        # black-forest-labs/FLUX.1-Depth-dev transformer/config.json: FLUX.1 [dev] with the
        # packed depth-map latents concatenated to its input (in_channels 64 -> 128).
        transformer={
            "patch_size": 1,
            "in_channels": 128,
            "out_channels": 64,
            "num_layers": 19,
            "num_single_layers": 38,
            "attention_head_dim": 128,
            "num_attention_heads": 24,
            "joint_attention_dim": 4096,
            "pooled_projection_dim": 768,
            "guidance_embeds": True,
            "axes_dims_rope": (16, 56, 56),
        },
        # FLUX.1-Depth-dev vae/config.json
        vae={
            **_SD_VAE,
            "latent_channels": 16,
            "sample_size": 1024,
            "scaling_factor": 0.3611,
            "shift_factor": 0.1159,
            "use_quant_conv": False,
            "use_post_quant_conv": False,
        },
        text_encoder=_CLIP_L,
        # FLUX.1-Depth-dev text_encoder_2/config.json: google/t5-v1_1-xxl's encoder (4.7B)
        text_encoder_2={
            "vocab_size": 32128,
            "d_model": 4096,
            "d_kv": 64,
            "d_ff": 10240,
            "num_layers": 24,
            "num_heads": 64,
            "relative_attention_num_buckets": 32,
            "relative_attention_max_distance": 128,
            "feed_forward_proj": "gated-gelu",
            "layer_norm_epsilon": 1e-6,
            "tie_word_embeddings": False,
        },
        scheduler=tiny_flux.SCHEDULER_CONFIG,  # FlowMatchEulerDiscreteScheduler
    ),
    preprocessors=PreprocessorConfigs(
        # depth-anything/Depth-Anything-V2-Small-hf config.json: a DINOv2 ViT-S/14 backbone
        depth_backbone={
            "hidden_size": 384,
            "num_hidden_layers": 12,
            "num_attention_heads": 6,
            "mlp_ratio": 4,
            "patch_size": 14,
            "image_size": 518,
            "out_indices": (3, 6, 9, 12),
            "reshape_hidden_states": False,
        },
        depth={
            "patch_size": 14,
            "reassemble_hidden_size": 384,
            "neck_hidden_sizes": (48, 96, 192, 384),
            "fusion_hidden_size": 64,
            "head_hidden_size": 32,
            "depth_estimation_type": "relative",
        },
        # its preprocessor_config.json: the short side to 518, aspect kept, multiples of 14
        depth_processor={
            "do_resize": True,
            "size": {"height": 518, "width": 518},
            "keep_aspect_ratio": True,
            "ensure_multiple_of": 14,
            "resample": PILImageResampling.BICUBIC,
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "image_mean": list(IMAGENET_DEFAULT_MEAN),
            "image_std": list(IMAGENET_DEFAULT_STD),
            "do_pad": False,
        },
        # Falconsai/nsfw_image_detection config.json: ViT-B/16 at 224 pixels
        safety={
            "hidden_size": 768,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "intermediate_size": 3072,
            "image_size": 224,
            "patch_size": 16,
            "id2label": dict(enumerate(tiny_safety.LABELS)),
        },
        # its preprocessor_config.json
        safety_processor={
            "do_resize": True,
            "size": {"height": 224, "width": 224},
            "resample": PILImageResampling.BILINEAR,
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "image_mean": [0.5] * 3,
            "image_std": [0.5] * 3,
        },
    ),
)


# --- tiny: the same structures at toy sizes (CPU smoke test) ---------------------------------

_TINY_CLIP: Config = {
    "vocab_size": 1000,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 32,
}
_TINY_VAE: Config = {
    **_SD_VAE,
    "block_out_channels": (8, 16, 32, 32),
    "layers_per_block": 1,
    "norm_num_groups": 8,
}
_TINY_SDXL_SHARED: Config = {
    **_SDXL_SHARED,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "attention_head_dim": (2, 4),
    "transformer_layers_per_block": (1, 1),
    "cross_attention_dim": 64,  # both text encoders' hidden sizes, concatenated
    "addition_time_embed_dim": 8,
    "projection_class_embeddings_input_dim": 6 * 8 + 32,  # six size ids + pooled text
}
_TINY_SDXL_CONTROLNET: Config = {
    **_TINY_SDXL_SHARED,
    "conditioning_channels": 3,
    "conditioning_embedding_out_channels": (8, 16, 32, 32),
}
_TINY_SD_SHARED: Config = {
    "in_channels": 4,
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "attention_head_dim": 2,
    "cross_attention_dim": 32,
}

TINY = Configs(
    sd15=SD15Configs(
        unet={
            **_TINY_SD_SHARED,
            "out_channels": 4,
            "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
            "sample_size": 8,
        },
        controlnet={
            **_TINY_SD_SHARED,
            "conditioning_channels": 3,
            "conditioning_embedding_out_channels": (8, 16, 32, 32),
        },
        vae={**_TINY_VAE, "scaling_factor": 0.18215},
        text_encoder=_TINY_CLIP,
        scheduler=REAL.sd15.scheduler,
    ),
    sdxl=SDXLConfigs(
        unet={
            **_TINY_SDXL_SHARED,
            "out_channels": 4,
            "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
            "sample_size": 8,
        },
        identitynet=_TINY_SDXL_CONTROLNET,
        depth_controlnet=_TINY_SDXL_CONTROLNET,
        vae={**_TINY_VAE, "scaling_factor": 0.13025, "force_upcast": False},
        text_encoder=_TINY_CLIP,
        text_encoder_2={**_TINY_CLIP, "hidden_act": "gelu"},
        resampler={
            "embed_dims": 512,  # the face embedding stays ArcFace's 512
            "output_dims": 64,
            "hidden_dims": 64,
            "depth": 1,
            "dim_head": 64,
            "heads": 1,
            "num_queries": 16,
            "ffn_ratio": 4,
        },
        scheduler=REAL.sdxl.scheduler,
    ),
    flux=FluxConfigs(
        transformer={
            **REAL.flux.transformer,
            "num_layers": 1,
            "num_single_layers": 1,
            "attention_head_dim": 16,
            "num_attention_heads": 2,
            "joint_attention_dim": 32,
            "pooled_projection_dim": 32,
            "axes_dims_rope": (4, 6, 6),
        },
        vae={
            **REAL.flux.vae,
            "block_out_channels": (8, 16, 32, 32),
            "layers_per_block": 1,
            "norm_num_groups": 8,
        },
        text_encoder=_TINY_CLIP,
        text_encoder_2={
            **REAL.flux.text_encoder_2,
            "vocab_size": 1000,
            "d_model": 32,
            "d_kv": 8,
            "d_ff": 64,
            "num_layers": 2,
            "num_heads": 4,
            "relative_attention_num_buckets": 8,
        },
        scheduler=REAL.flux.scheduler,
    ),
    # models/tiny_depth.py's and models/tiny_safety.py's sizes
    preprocessors=PreprocessorConfigs(
        depth_backbone={
            **REAL.preprocessors.depth_backbone,
            "hidden_size": tiny_depth.BACKBONE_HIDDEN_SIZE,
            "num_hidden_layers": tiny_depth.BACKBONE_LAYERS,
            "num_attention_heads": tiny_depth.BACKBONE_ATTENTION_HEADS,
            "mlp_ratio": tiny_depth.BACKBONE_MLP_RATIO,
            "image_size": tiny_depth.PROCESSOR_SIZE,
            "out_indices": tuple(range(1, tiny_depth.BACKBONE_LAYERS + 1)),
        },
        depth={
            **REAL.preprocessors.depth,
            "reassemble_hidden_size": tiny_depth.BACKBONE_HIDDEN_SIZE,
            "neck_hidden_sizes": tiny_depth.NECK_HIDDEN_SIZES,
            "fusion_hidden_size": tiny_depth.FUSION_HIDDEN_SIZE,
            "head_hidden_size": tiny_depth.HEAD_HIDDEN_SIZE,
        },
        depth_processor={
            **REAL.preprocessors.depth_processor,
            "size": {"height": tiny_depth.PROCESSOR_SIZE, "width": tiny_depth.PROCESSOR_SIZE},
        },
        safety={
            **REAL.preprocessors.safety,
            "hidden_size": tiny_safety.HIDDEN_SIZE,
            "num_hidden_layers": tiny_safety.LAYERS,
            "num_attention_heads": tiny_safety.ATTENTION_HEADS,
            "intermediate_size": tiny_safety.INTERMEDIATE_SIZE,
            "image_size": tiny_safety.IMAGE_SIZE,
            "patch_size": tiny_safety.PATCH_SIZE,
        },
        safety_processor={
            **REAL.preprocessors.safety_processor,
            "size": {"height": tiny_safety.IMAGE_SIZE, "width": tiny_safety.IMAGE_SIZE},
        },
    ),
)

SCALES = {"real": REAL, "tiny": TINY}
