"""Helpers the flux-depth-pro tests share: the shipped control image, and driving the real tiny
safety classifier to a chosen score."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from PIL import Image

from runners.safety import SafetyChecker
from settings import PROJECT_ROOT

CONTROL_IMAGE = PROJECT_ROOT / "loadtests" / "payloads" / "flux_control.jpg"


@contextlib.contextmanager
def restored_classifier(checker: SafetyChecker) -> Iterator[None]:
    """Put the classifier's final layer back as built once the test is done with it."""
    bias = checker.model.classifier.bias.detach().clone()
    try:
        yield
    finally:
        with torch.no_grad():
            checker.model.classifier.bias.copy_(bias)


def drive_score(checker: SafetyChecker, image: Image.Image, target: float) -> None:
    """Shift the classifier's final-layer bias so that `image` scores exactly `target`.

    The weights stay, so the score is still a function of the image: only this image is pinned.
    With two labels, P(nsfw) = sigmoid(logit_nsfw - logit_normal): set that difference.
    """
    classifier = checker.model.classifier
    captured: list[torch.Tensor] = []
    hook = classifier.register_forward_hook(lambda _m, args, _out: captured.append(args[0]))
    try:
        checker.score(image)
    finally:
        hook.remove()
    unsafe = checker.unsafe_index
    with torch.no_grad():
        logits = classifier(captured[0])[0]
        have = logits[unsafe] - logits[1 - unsafe]
        want = math.log(target / (1 - target))
        classifier.bias[unsafe] += want - have
