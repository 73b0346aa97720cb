"""Every model's weights: the `full` profile's real checkpoints, pinned to Hugging Face Hub
commits, each with the builder of its `tiny` copy, and the checkpoints each runner loads.

The names are shared by both profiles: in `tiny` the same names are built locally with random
weights (models/build.py, by each checkpoint's `tiny_builder`), in `full` they are pulled from
the Hub (models/pull.py).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Checkpoint:
    repo_id: str
    # A commit sha (40 hex digits), so that a pull is reproducible and works offline from a filled
    # HF cache; the puller refuses a branch or tag name.
    revision: str
    # File names (or glob patterns) to fetch; the puller checks that each one matched a file.
    allow_patterns: tuple[str, ...]
    description: str
    # The licence the repository states (docs/models.md, "Licences", lists them all).
    licence: str = ""
    # Gated on the Hub: the licence must be accepted at https://huggingface.co/<repo_id> by the
    # account whose token (HF_TOKEN) pulls it.
    gated: bool = False
    # What builds its `tiny` copy (the real architecture at toy sizes, random weights), as
    # "module:function" (models/build.py imports it only to build); None: not in `tiny`.
    tiny_builder: str | None = None


# Layouts of real repositories that the runners read and the tiny builds copy.
INSTANTID_IDENTITYNET_FOLDER = "ControlNetModel"  # InstantX/InstantID
INSTANTID_IP_ADAPTER_FILE = "ip-adapter.bin"
FACE_DETECTOR_FILE = "scrfd_10g_bnkps.onnx"  # antelopev2
FACE_RECOGNISER_FILE = "glintr100.onnx"


CHECKPOINTS: dict[str, Checkpoint] = {
    "sd15-base": Checkpoint(
        repo_id="stable-diffusion-v1-5/stable-diffusion-v1-5",
        revision="451f4fe16113bff5a5d2269ed5ad43b0592e9a14",
        allow_patterns=(
            "model_index.json",
            # Not used (no safety checker), but model_index.json lists it, and
            # from_pretrained fails when its folder is missing. It is one small JSON file.
            "feature_extractor/preprocessor_config.json",
            "scheduler/scheduler_config.json",
            "text_encoder/config.json",
            "text_encoder/model.fp16.safetensors",
            "tokenizer/merges.txt",
            "tokenizer/special_tokens_map.json",
            "tokenizer/tokenizer_config.json",
            "tokenizer/vocab.json",
            "unet/config.json",
            "unet/diffusion_pytorch_model.fp16.safetensors",
            "vae/config.json",
            "vae/diffusion_pytorch_model.fp16.safetensors",
        ),
        description="Stable Diffusion 1.5 (diffusers layout, no safety checker), fp16",
        licence="CreativeML OpenRAIL-M",
        tiny_builder="models.tiny_sd15:build_sd15_base",
    ),
    "sd15-controlnet-depth": Checkpoint(
        repo_id="lllyasviel/control_v11f1p_sd15_depth",
        revision="539f99181d33db39cf1af2e517cd8056785f0a87",
        allow_patterns=(
            "config.json",
            "diffusion_pytorch_model.fp16.safetensors",
        ),
        description="ControlNet 1.1 depth for SD 1.5, fp16",
        licence="OpenRAIL",
        tiny_builder="models.tiny_sd15:build_sd15_controlnet",
    ),
    "depth-estimator": Checkpoint(
        repo_id="depth-anything/Depth-Anything-V2-Small-hf",
        revision="5426e4f0f36572d16453bbda7a8389317b1bef99",
        allow_patterns=("config.json", "preprocessor_config.json", "model.safetensors"),
        description="Depth Anything V2 Small (relative depth), Apache-2.0",
        licence="Apache-2.0",
        tiny_builder="models.tiny_depth:build_depth_estimator",
    ),
    # flux-depth-pro: the diffusers layout of FLUX.1 Depth [dev], text encoders included
    # (CLIP-L and T5-XXL v1.1). Gated: accept the licence on the Hub and set HF_TOKEN to pull.
    "flux-depth-dev": Checkpoint(
        repo_id="black-forest-labs/FLUX.1-Depth-dev",
        revision="fb5e9b1bae41b8c8adcea4ea2a87b74dd298f07a",
        allow_patterns=(
            "model_index.json",
            "scheduler/scheduler_config.json",
            "text_encoder/config.json",
            "text_encoder/model.safetensors",
            "text_encoder_2/*.json",
            "text_encoder_2/model*.safetensors",
            "tokenizer/*.json",
            "tokenizer/merges.txt",
            "tokenizer_2/*.json",
            "tokenizer_2/spiece.model",
            "transformer/*.json",
            "transformer/diffusion_pytorch_model*.safetensors",
            "vae/config.json",
            "vae/diffusion_pytorch_model.safetensors",
        ),
        description="FLUX.1 Depth [dev] (diffusers layout), bf16, FLUX.1-dev non-commercial",
        licence="FLUX.1 [dev] Non-Commercial License",
        gated=True,
        tiny_builder="models.tiny_flux:build_flux_depth",
    ),
    "safety-checker": Checkpoint(
        repo_id="Falconsai/nsfw_image_detection",
        revision="04367978d3474804ab1a00a9bd6548b741764069",
        allow_patterns=("config.json", "preprocessor_config.json", "model.safetensors"),
        description="ViT image classifier, labels normal/nsfw (flux-depth-pro), Apache-2.0",
        licence="Apache-2.0",
        tiny_builder="models.tiny_safety:build_safety_classifier",
    ),
    "prompt-upsampler": Checkpoint(
        repo_id="Qwen/Qwen2.5-0.5B-Instruct",
        revision="7ae557604adf67be50417f59c2c2f167def9a775",
        allow_patterns=(
            "config.json",
            "generation_config.json",
            "model.safetensors",
            "merges.txt",
            "tokenizer.json",
            "tokenizer_config.json",
            "vocab.json",
        ),
        description="Qwen2.5 0.5B Instruct, rewrites prompts for prompt_upsampling, Apache-2.0",
        licence="Apache-2.0",
        # None: `tiny` runs the rule-based upsampler instead (Settings.prompt_upsampler).
    ),
    # instantid + insta-depth (runners/instantid.py): one SDXL base for both.
    "sdxl-base": Checkpoint(
        repo_id="stabilityai/stable-diffusion-xl-base-1.0",
        revision="462165984030d82259a11f4367a4eed129e94a7b",
        allow_patterns=(
            "model_index.json",
            "scheduler/scheduler_config.json",
            "text_encoder/config.json",
            "text_encoder/model.fp16.safetensors",
            "text_encoder_2/config.json",
            "text_encoder_2/model.fp16.safetensors",
            "tokenizer/merges.txt",
            "tokenizer/special_tokens_map.json",
            "tokenizer/tokenizer_config.json",
            "tokenizer/vocab.json",
            "tokenizer_2/merges.txt",
            "tokenizer_2/special_tokens_map.json",
            "tokenizer_2/tokenizer_config.json",
            "tokenizer_2/vocab.json",
            "unet/config.json",
            "unet/diffusion_pytorch_model.fp16.safetensors",
            # Its own VAE is replaced by sdxl-vae; the config keeps model_index.json's folder.
            "vae/config.json",
        ),
        description="SDXL 1.0 base, fp16 (diffusers layout), CreativeML Open RAIL++-M",
        licence="CreativeML Open RAIL++-M",
        tiny_builder="models.tiny_sdxl:build_sdxl_base",
    ),
    "sdxl-vae": Checkpoint(
        repo_id="madebyollin/sdxl-vae-fp16-fix",
        revision="207b116dae70ace3637169f1ddd2434b91b3a8cd",
        allow_patterns=("config.json", "diffusion_pytorch_model.safetensors"),
        description="SDXL VAE fine-tuned to decode in fp16 without overflow, MIT",
        licence="MIT",
        tiny_builder="models.tiny_sdxl:build_sdxl_vae",
    ),
    "instantid": Checkpoint(
        repo_id="InstantX/InstantID",
        revision="57b32dfee076092ad2930c71fd6d439c2c3b1820",
        allow_patterns=(
            f"{INSTANTID_IDENTITYNET_FOLDER}/config.json",
            f"{INSTANTID_IDENTITYNET_FOLDER}/diffusion_pytorch_model.safetensors",
            INSTANTID_IP_ADAPTER_FILE,
        ),
        description="InstantID: IdentityNet (SDXL ControlNet) + face IP-Adapter, Apache-2.0",
        licence="Apache-2.0",
        tiny_builder="models.tiny_instantid:build_instantid",
    ),
    "sdxl-controlnet-depth": Checkpoint(
        repo_id="diffusers/controlnet-depth-sdxl-1.0",
        revision="17bb97973f29801224cd66f192c5ffacf82648b4",
        allow_patterns=("config.json", "diffusion_pytorch_model.fp16.safetensors"),
        description="SDXL depth ControlNet (insta-depth), fp16, OpenRAIL++",
        licence="CreativeML Open RAIL++-M",
        tiny_builder="models.tiny_sdxl:build_sdxl_controlnet_depth",
    ),
    "face-analysis": Checkpoint(
        # insightface's antelopev2 pack (SCRFD-10G detector, ResNet100 Glint360K ArcFace), as
        # mirrored on the Hub; insightface's own release is not on the Hub. Non-commercial.
        repo_id="DIAMONIK7777/antelopev2",
        revision="ba0c3e10f4548361eb9a63265d87ce1140ab5a05",
        allow_patterns=(FACE_DETECTOR_FILE, FACE_RECOGNISER_FILE),
        description="insightface antelopev2: face detector + recogniser, research use only",
        licence="insightface models: non-commercial research only",
        tiny_builder="models.tiny_faces:build_face_models",
    ),
}

# The checkpoints whose repositories publish half-precision copies of their weights
# (`*.fp16.safetensors`): `full` pulls only those and loads them with variant="fp16", the precision
# the runners use on GPU; from_pretrained casts them to the runner's dtype (fp32 on the CPU). The
# others ship one precision (FLUX.1 and Qwen bf16, InstantID fp16, the rest fp32).
FP16_VARIANT = "fp16"
FP16_VARIANT_MODELS = frozenset(
    {"sd15-base", "sd15-controlnet-depth", "sdxl-base", "sdxl-controlnet-depth"}
)


def weights_variant(profile: str, name: str) -> str | None:
    """The `variant` to load model `name` with: "fp16" in `full` where the repository has one;
    None otherwise (the tiny builds save plain files)."""
    return FP16_VARIANT if profile == "full" and name in FP16_VARIANT_MODELS else None


# The models each runner loads, by name.
RUNNER_MODELS: dict[str, tuple[str, ...]] = {
    "sd15_depth": ("sd15-base", "sd15-controlnet-depth", "depth-estimator"),
    # prompt-upsampler only with the "llm" upsampler; `tiny` uses the rule-based one instead.
    "flux_depth": ("flux-depth-dev", "depth-estimator", "safety-checker", "prompt-upsampler"),
    "instantid": (
        "sdxl-base",
        "sdxl-vae",
        "instantid",
        "sdxl-controlnet-depth",
        "face-analysis",
        "depth-estimator",
    ),
}

# Every model the `tiny` profile builds: the same names, random weights (models/build.py).
TINY_MODELS: tuple[str, ...] = tuple(
    name for name, checkpoint in CHECKPOINTS.items() if checkpoint.tiny_builder is not None
)
