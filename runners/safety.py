"""The image safety checker: a transformers image classifier scores each generated image.

`full` loads Falconsai/nsfw_image_detection, `tiny` a random-weight classifier of the same
architecture and labels (models/tiny_safety.py). The score is the classifier's probability of
its `nsfw` label. safety_tolerance t (1 strictest .. 6 most permissive) picks threshold t from
settings.safety_thresholds; an image whose score is at or above it is blocked.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from transformers import (
    AutoModelForImageClassification,
    BaseImageProcessor,
    PreTrainedModel,
    ViTImageProcessorPil,
)

from runners.device import load_onto

UNSAFE_LABEL = "nsfw"
MIN_TOLERANCE = 1


def threshold_for(tolerance: int, thresholds: Sequence[float]) -> float:
    """The P(nsfw) at or above which an image is blocked at `tolerance` (1-based)."""
    if not MIN_TOLERANCE <= tolerance <= len(thresholds):
        raise ValueError(f"safety_tolerance {tolerance} is outside 1..{len(thresholds)}")
    return thresholds[tolerance - MIN_TOLERANCE]


def is_blocked(score: float, tolerance: int, thresholds: Sequence[float]) -> bool:
    return score >= threshold_for(tolerance, thresholds)


class SafetyChecker:
    def __init__(
        self, processor: BaseImageProcessor, model: PreTrainedModel, thresholds: Sequence[float]
    ) -> None:
        """`model` already on its device and in its dtype; images go where it is."""
        self.processor = processor
        self.model = model.eval()
        self.device = model.device
        self.dtype = model.dtype
        self.thresholds = tuple(thresholds)
        # From id2label, whose keys transformers makes ints: hub configs may store label2id's
        # values as strings ({"nsfw": "1"}), which cannot index the logits.
        labels = {label.lower(): int(index) for index, label in model.config.id2label.items()}
        if UNSAFE_LABEL not in labels:
            where = model.config.name_or_path or type(model).__name__
            raise ValueError(f"safety model at {where} has no {UNSAFE_LABEL!r} label")
        self.unsafe_index = labels[UNSAFE_LABEL]

    @classmethod
    def from_pretrained(
        cls,
        model_dir: Path,
        device: torch.device,
        dtype: torch.dtype,
        thresholds: Sequence[float],
    ) -> SafetyChecker:
        # The PIL processor by name, as runners/depth.py does (the classifier is a ViT).
        processor = ViTImageProcessorPil.from_pretrained(model_dir)
        model = AutoModelForImageClassification.from_pretrained(
            model_dir, dtype=dtype, **load_onto(device)
        )
        return cls(processor, model, thresholds)

    @torch.inference_mode()
    def score(self, image: Image.Image) -> float:
        """The classifier's probability that `image` is unsafe, 0..1."""
        inputs = self.processor(images=image.convert("RGB"), return_tensors="pt")
        pixel_values = inputs["pixel_values"].to(self.device, self.dtype)
        logits = self.model(pixel_values=pixel_values).logits[0].float()
        return logits.softmax(dim=-1)[self.unsafe_index].item()

    def blocks(self, score: float, tolerance: int) -> bool:
        return is_blocked(score, tolerance, self.thresholds)
