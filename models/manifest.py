"""The `full` profile's real checkpoints, pinned to Hugging Face Hub commits.

The names are shared by both profiles: in `tiny` the same names are built locally with random
weights (models/build.py), in `full` they are pulled from the Hub (models/pull.py).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Checkpoint:
    repo_id: str
    # A commit sha, so that a pull is reproducible and works offline from a filled HF cache.
    revision: str
    # File names (or glob patterns) to fetch; the puller checks that each one matched a file.
    allow_patterns: tuple[str, ...]
    description: str


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
            "text_encoder/model.safetensors",
            "text_encoder/model.fp16.safetensors",
            "tokenizer/merges.txt",
            "tokenizer/special_tokens_map.json",
            "tokenizer/tokenizer_config.json",
            "tokenizer/vocab.json",
            "unet/config.json",
            "unet/diffusion_pytorch_model.safetensors",
            "unet/diffusion_pytorch_model.fp16.safetensors",
            "vae/config.json",
            "vae/diffusion_pytorch_model.safetensors",
            "vae/diffusion_pytorch_model.fp16.safetensors",
        ),
        description="Stable Diffusion 1.5 (diffusers layout, no safety checker), fp32 + fp16",
    ),
    "sd15-controlnet-depth": Checkpoint(
        repo_id="lllyasviel/control_v11f1p_sd15_depth",
        revision="539f99181d33db39cf1af2e517cd8056785f0a87",
        allow_patterns=(
            "config.json",
            "diffusion_pytorch_model.safetensors",
            "diffusion_pytorch_model.fp16.safetensors",
        ),
        description="ControlNet 1.1 depth for SD 1.5, fp32 + fp16",
    ),
    "depth-estimator": Checkpoint(
        repo_id="depth-anything/Depth-Anything-V2-Small-hf",
        revision="5426e4f0f36572d16453bbda7a8389317b1bef99",
        allow_patterns=("config.json", "preprocessor_config.json", "model.safetensors"),
        description="Depth Anything V2 Small (relative depth), Apache-2.0",
    ),
}

# The models each runner loads, by name.
RUNNER_MODELS: dict[str, tuple[str, ...]] = {
    "sd15_depth": ("sd15-base", "sd15-controlnet-depth", "depth-estimator"),
}

# Every model the `tiny` profile builds: the same names, random weights (models/build.py).
TINY_MODELS: tuple[str, ...] = ("sd15-base", "sd15-controlnet-depth", "depth-estimator")
