"""Encode generated images into the bytes a client receives."""

from __future__ import annotations

import io

from PIL import Image

from protocol.jobs import OutputFormat

JPEG_QUALITY = 95  # high enough that JPEG artefacts never dominate a generated image


def encode_image(image: Image.Image, fmt: OutputFormat) -> bytes:
    buffer = io.BytesIO()
    if fmt == "JPEG":
        image.convert("RGB").save(buffer, format="JPEG", quality=JPEG_QUALITY)
    else:
        image.save(buffer, format="PNG")
    return buffer.getvalue()
