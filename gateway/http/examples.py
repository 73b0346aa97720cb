"""Request examples for /docs, one per model, that answer 200 as they stand ("Try it out").

Their pictures are the small ones shipped with the load test (loadtests/payloads/, also in the
Bento): a plain scene for the depth models, and synthetic faces (a bright disc with eyes and a
mouth) that the `tiny` profile's face detector finds. A real face detector (`full`) finds no face
in those: the docs say to put a photo in the face models' image fields there.
"""

from __future__ import annotations

import base64
import functools
import logging
from typing import Any

from settings import PROJECT_ROOT

logger = logging.getLogger(__name__)

PAYLOADS = PROJECT_ROOT / "loadtests" / "payloads"


def _data_uri(name: str, media_type: str) -> str:
    data = base64.b64encode((PAYLOADS / name).read_bytes()).decode("ascii")
    return f"data:{media_type};base64,{data}"


@functools.cache
def request_examples() -> dict[str, dict[str, Any]]:
    """Per model: an OpenAPI Example object (`summary`, `value`); none when the pictures are
    not there (an install without loadtests/payloads/): the docs then go without examples."""
    try:
        scene = _data_uri("flux_control.jpg", "image/jpeg")
        face = _data_uri("face.png", "image/png")
        pose = _data_uri("pose.png", "image/png")
    except OSError as exc:
        logger.warning("no request examples in /docs: %s", exc)
        return {}
    return {
        "sd1.5-controlnet-depth": {
            "summary": "A small scene, its depth map guiding a new picture",
            "value": {"image": scene, "prompt": "a cosy cabin in a snowy forest", "seed": 42},
        },
        "instantid": {
            "summary": "A synthetic face (tiny profile; put a photo here in full)",
            "value": {
                "face_image": face,
                "prompt": "photo of a man",
                "style": "Watercolor",
                "seed": 42,
            },
        },
        "insta-depth": {
            "summary": "A synthetic face and pose (tiny profile; put photos here in full)",
            "value": {
                "face_image": face,
                "pose_image": pose,
                "prompt": "photo of a woman wearing a superman costume",
                "seed": 42,
            },
        },
        "flux-depth-pro": {
            "summary": "A small scene, its depth map guiding FLUX.1 Depth",
            "value": {
                "control_image": scene,
                "prompt": "a cosy cabin in a snowy forest",
                "steps": 15,
                "seed": 42,
            },
        },
    }
