"""Request bodies built from a real photo, for the `release` profile (scenarios/release.toml,
`payloads = "photo"`): a real face detector (antelopev2's SCRFD in `full`) finds no face in the
synthetic blobs of payloads/, which only the tiny profile's hand-set detector takes for faces.

The photo is scikit-image's `astronaut.png` (NASA's portrait of Eileen Collins, public domain),
the file inside the installed scikit-image package: nothing is downloaded. From it:

- `face_image`: a square crop of her head and shoulders;
- `pose_image` (insta-depth's depth input too): the whole photo, mirrored, so the pose differs
  from the identity picture (a body without one, like instantid's, keeps sending none: the face
  image is its pose);
- every other picture field (`image`, `control_image`: the depth inputs): the whole photo.

A picture field is one whose name ends in "image", as the hosted API names them.

Everything else in a body (prompt, steps, seed) is the synthetic payload's. The pictures go as
PNG, so they reach the server pixel for pixel.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import skimage
from PIL import Image, ImageOps

ASTRONAUT = Path(skimage.__file__).parent / "data" / "astronaut.png"  # 512 x 512 RGB
# (left, top, right, bottom): her head and shoulders, 320 px square; the face is about 140 px
# wide in it, well within what a face detector resizes to its input.
FACE_BOX = (64, 0, 384, 320)


def astronaut() -> Image.Image:
    return Image.open(ASTRONAUT).convert("RGB")


def face_image() -> Image.Image:
    return astronaut().crop(FACE_BOX)


def pose_image() -> Image.Image:
    return ImageOps.mirror(astronaut())


def depth_image() -> Image.Image:
    return astronaut()


def png_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def photo_bodies(synthetic: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The synthetic request bodies with their pictures replaced by the photo's."""
    pictures = {"face_image": png_base64(face_image()), "pose_image": png_base64(pose_image())}
    depth = png_base64(depth_image())
    return {
        model: {
            field: pictures.get(field, depth) if field.endswith("image") else value
            for field, value in body.items()
        }
        for model, body in synthetic.items()
    }
