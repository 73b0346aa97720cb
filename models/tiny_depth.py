"""Tiny random-weight Depth Anything (V2 architecture), for the `tiny` profile.

The real transformers architecture (DepthAnythingForDepthEstimation on a DINOv2 backbone) with a
tiny config and seeded random weights, plus an image processor configured like Depth Anything V2's
(keep aspect ratio, sides a multiple of the 14-pixel patch, ImageNet normalisation) but with a
small target size so that CPU runs are fast. It loads with the same calls as the real one:

    AutoModelForDepthEstimation.from_pretrained(dir)
    DPTImageProcessorPil.from_pretrained(dir)

The configs here are the real architecture's structure at toy widths: a copy kept on purpose of
benchmarks/real_configs.py (docs/architecture.md, "Copies kept on purpose"); a change of
architecture is made in both.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    DepthAnythingConfig,
    DepthAnythingForDepthEstimation,
    Dinov2Config,
    DPTImageProcessorPil,
)
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling

SEED = 0

PATCH_SIZE = 14  # DINOv2's patch size; the processor resizes to multiples of it
PROCESSOR_SIZE = 4 * PATCH_SIZE  # the real one uses 518 = 37 patches

# --- DINOv2 backbone: DPT needs four feature maps, here one per layer ---------------------------
BACKBONE_HIDDEN_SIZE = 32
BACKBONE_LAYERS = 4
BACKBONE_ATTENTION_HEADS = 2
BACKBONE_MLP_RATIO = 2

# --- DPT neck and head ----------------------------------------------------------------------------
NECK_HIDDEN_SIZES = (8, 16, 32, 32)  # one per backbone feature map
FUSION_HIDDEN_SIZE = 16
HEAD_HIDDEN_SIZE = 8


def build_depth_estimator(dest: Path) -> None:
    """Save a tiny Depth Anything model and its image processor into `dest`."""
    backbone_config = Dinov2Config(
        hidden_size=BACKBONE_HIDDEN_SIZE,
        num_hidden_layers=BACKBONE_LAYERS,
        num_attention_heads=BACKBONE_ATTENTION_HEADS,
        mlp_ratio=BACKBONE_MLP_RATIO,
        patch_size=PATCH_SIZE,
        image_size=PROCESSOR_SIZE,
        out_indices=list(range(1, BACKBONE_LAYERS + 1)),
        reshape_hidden_states=False,
    )
    config = DepthAnythingConfig(
        backbone_config=backbone_config,
        patch_size=PATCH_SIZE,
        reassemble_hidden_size=BACKBONE_HIDDEN_SIZE,
        neck_hidden_sizes=list(NECK_HIDDEN_SIZES),
        fusion_hidden_size=FUSION_HIDDEN_SIZE,
        head_hidden_size=HEAD_HIDDEN_SIZE,
        depth_estimation_type="relative",
    )
    torch.manual_seed(SEED)
    model = DepthAnythingForDepthEstimation(config)

    # The PIL flavour: the default (torchvision) flavour needs torchvision, which we do not
    # install. Both save "image_processor_type": "DPTImageProcessor", exactly like the real one;
    # runners/depth.py loads the PIL flavour by name, wherever torchvision is installed or not.
    processor = DPTImageProcessorPil(
        do_resize=True,
        size={"height": PROCESSOR_SIZE, "width": PROCESSOR_SIZE},
        keep_aspect_ratio=True,
        ensure_multiple_of=PATCH_SIZE,
        resample=PILImageResampling.BICUBIC,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(IMAGENET_DEFAULT_MEAN),
        image_std=list(IMAGENET_DEFAULT_STD),
        do_pad=False,
    )
    model.save_pretrained(dest)
    processor.save_pretrained(dest)
