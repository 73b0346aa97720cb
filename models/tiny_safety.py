"""Tiny random-weight image safety classifier, for the `tiny` profile.

The architecture of Falconsai/nsfw_image_detection (the `full` profile's classifier): a ViT image
classifier with the two labels `normal` and `nsfw`, and its image processor (resize, rescale,
normalise to [-1, 1]), here with a tiny config and a small input size. It loads with the same
calls as the real one:

    AutoModelForImageClassification.from_pretrained(dir)
    ViTImageProcessorPil.from_pretrained(dir)

Its weights are random, so its score is a real but meaningless function of the image. Like a real
classifier shown ordinary pictures, it leans to `normal`: the classifier's bias starts the `nsfw`
logit NORMAL_MARGIN below the `normal` one (about 2% nsfw), so the tiny profile's outputs pass at
every default tolerance. Tests drive its final layer to chosen scores
(tests/runners/test_flux_runner.py).

The configs here are the real architecture's structure at toy widths: a copy kept on purpose of
benchmarks/real_configs.py (docs/architecture.md, "Copies kept on purpose"); a change of
architecture is made in both.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessorPil
from transformers.image_utils import PILImageResampling

SEED = 0

# The real classifier's labels, in its order.
LABELS = ("normal", "nsfw")
NORMAL_MARGIN = 4.0  # logit(normal) - logit(nsfw) from the bias alone: softmax ~ 0.018 nsfw

IMAGE_SIZE = 32  # the real one uses 224
PATCH_SIZE = 8
HIDDEN_SIZE = 32
LAYERS = 2
ATTENTION_HEADS = 2
INTERMEDIATE_SIZE = 64
NORMALIZE_MEAN_STD = 0.5  # Falconsai's processor maps [0, 1] to [-1, 1]


def build_safety_classifier(dest: Path) -> None:
    """Save a tiny ViT `normal`/`nsfw` classifier and its image processor into `dest`."""
    config = ViTConfig(
        hidden_size=HIDDEN_SIZE,
        num_hidden_layers=LAYERS,
        num_attention_heads=ATTENTION_HEADS,
        intermediate_size=INTERMEDIATE_SIZE,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        id2label=dict(enumerate(LABELS)),
        label2id={label: index for index, label in enumerate(LABELS)},
    )
    torch.manual_seed(SEED)
    model = ViTForImageClassification(config)
    with torch.no_grad():
        model.classifier.bias.zero_()
        model.classifier.bias[LABELS.index("nsfw")] = -NORMAL_MARGIN

    # The PIL flavour: the default (torchvision) flavour needs torchvision, which we do not
    # install. Both save "image_processor_type": "ViTImageProcessor", like the real one.
    processor = ViTImageProcessorPil(
        do_resize=True,
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        resample=PILImageResampling.BILINEAR,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[NORMALIZE_MEAN_STD] * 3,
        image_std=[NORMALIZE_MEAN_STD] * 3,
    )
    model.save_pretrained(dest)
    processor.save_pretrained(dest)
