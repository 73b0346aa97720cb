"""Runner jobs for tests, as the Gateway would send them: every field set to a small valid
default, any of them overridden by keyword. The pixels of an encoded answer, and the results of
a fake pipeline call."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from protocol.jobs import GenerationResult
from runners.flux_depth import FluxDepthJob
from runners.instantid import InstantIDJob
from runners.sd15_depth import SD15DepthJob
from tests.support.face_images import payload_face
from tests.support.helpers import scene_image


def sd15_job(**fields) -> SD15DepthJob:
    defaults = {
        "request_id": "t",
        "prompt": "a house by a lake",
        "negative_prompt": "blurry",
        "image": Image.open(io.BytesIO(scene_image(96, 64))),
        "samples": 1,
        "scheduler": "UniPC",
        "num_inference_steps": 20,
        "guidance_scale": 7.5,
        "strength": 1.0,
        "seed": 1234,
        "width": 64,
        "height": 40,
    }
    return SD15DepthJob(**{**defaults, **fields})


def flux_job(**fields) -> FluxDepthJob:
    defaults = {
        "request_id": "t",
        "prompt": "a house by a lake",
        "control_image": Image.open(io.BytesIO(scene_image(96, 64))),
        "guidance": 7.0,
        "steps": 15,
        "seed": 96522,
        "width": 64,
        "height": 48,
        "output_format": "PNG",
        "safety_tolerance": 2,
    }
    return FluxDepthJob(**{**defaults, **fields})


def instantid_job(**fields) -> InstantIDJob:
    defaults = {
        "request_id": "t",
        "prompt": "photo of a man",
        "negative_prompt": "lowquality",
        "face_image": payload_face(),
        "samples": 1,
        "num_inference_steps": 4,
        "guidance_scale": 5.0,
        "seed": 1234,
        "identity_strength": 0.8,
        "adapter_strength": 0.8,
        "enhance_face_region": True,
        "width": 64,
        "height": 64,
        "output_format": "PNG",
    }
    return InstantIDJob(**{**defaults, **fields})


def pixels(data: bytes) -> np.ndarray:
    """An encoded image's RGB values, signed, so that differences do not wrap."""
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


def seed_results(rows: list) -> list[GenerationResult]:
    """What a fake pipeline call answers for `rows`: one result each, its one image the row's
    seed as text, so a test can tell which row an answer came from and the call's size."""
    return [
        GenerationResult(
            request_id=row.request_id,
            images=[str(row.seed).encode()],
            seed=row.seed,
            inference_time=0.0,
            batch_size=len(rows),
        )
        for row in rows
    ]
