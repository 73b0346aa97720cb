"""Depth maps from RGB images with a transformers depth estimator (Depth Anything / DPT).

Shared by every runner that conditions on depth. The map is near-is-bright, normalised per image
to 0..255 and resized to the size the pipeline generates at, as depth ControlNets expect.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import (
    AutoConfig,
    AutoModelForDepthEstimation,
    BaseImageProcessor,
    DPTImageProcessorPil,
    PreTrainedModel,
)

from runners.device import load_onto


class DepthEstimator:
    def __init__(self, processor: BaseImageProcessor, model: PreTrainedModel) -> None:
        """`model` already on its device and in its dtype; images go where it is."""
        self.processor = processor
        self.model = model.eval()
        self.device = model.device
        self.dtype = model.dtype

    @classmethod
    def from_pretrained(
        cls, model_dir: Path, device: torch.device, dtype: torch.dtype
    ) -> DepthEstimator:
        # The PIL processor by name (Depth Anything's is DPT's): AutoImageProcessor takes the
        # torchvision one wherever torchvision is installed (the GPU machine has it), which
        # resizes unlike the PIL one the tests run, and transformers 5.17 refuses it without.
        processor = DPTImageProcessorPil.from_pretrained(model_dir)
        config = AutoConfig.from_pretrained(model_dir)
        if getattr(config, "max_depth", 1) is None:
            # Relative-depth hub configs store "max_depth": null, which the head multiplies its
            # output by; the map is normalised per image below, so any scale will do.
            config.max_depth = 1
        model = AutoModelForDepthEstimation.from_pretrained(
            model_dir, config=config, dtype=dtype, **load_onto(device)
        )
        return cls(processor, model)

    @torch.inference_mode()
    def __call__(self, image: Image.Image, size: tuple[int, int]) -> Image.Image:
        """The depth map of `image` as an RGB image of `size` (width, height)."""
        inputs = self.processor(images=image.convert("RGB"), return_tensors="pt")
        pixel_values = inputs["pixel_values"].to(self.device, self.dtype)
        predicted = self.model(pixel_values=pixel_values).predicted_depth  # (1, h, w)
        width, height = size
        depth = torch.nn.functional.interpolate(
            predicted[:, None].float(), size=(height, width), mode="bicubic", align_corners=False
        )[0, 0]
        low, high = depth.min(), depth.max()
        # A flat prediction (possible with random tiny weights) maps to mid-grey, not NaN.
        scaled = (depth - low) / (high - low) if high > low else torch.full_like(depth, 0.5)
        grey = (scaled.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        return Image.fromarray(np.stack([grey] * 3, axis=-1))
