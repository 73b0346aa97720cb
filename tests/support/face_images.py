"""Pictures with faces the tiny face detector finds: a skin-coloured disc with eyes and a mouth
on a darker background (the tiny detector sees a bright, compact, round blob as a face).

    python -m tests.support.face_images     rewrites the shipped payloads in loadtests/payloads/
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

from PIL import Image, ImageDraw

from settings import PROJECT_ROOT

PAYLOADS = PROJECT_ROOT / "loadtests" / "payloads"

SKIN = (232, 192, 160)
FEATURES = (70, 40, 40)  # eyes and mouth: small, so the face stays one bright blob
BACKGROUND = (28, 34, 48)
SHIRT = (40, 60, 120)  # dark: bodies are never faces

# (centre x, centre y, radius) of one face.
Face = tuple[int, int, int]


def draw_face(draw: ImageDraw.ImageDraw, face: Face) -> None:
    cx, cy, r = face
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=SKIN)
    eye = max(1, r // 10)
    for ex in (cx - r * 0.35, cx + r * 0.35):
        draw.ellipse([ex - eye, cy - r * 0.15 - eye, ex + eye, cy - r * 0.15 + eye], fill=FEATURES)
    draw.line([cx - r * 0.3, cy + r * 0.5, cx + r * 0.3, cy + r * 0.5], fill=FEATURES, width=eye)


def face_picture(width: int, height: int, faces: list[Face], body: bool = False) -> Image.Image:
    """A picture of `faces` (none: a blank background), each with a shoulders shape if `body`."""
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for cx, cy, r in faces:
        if body:
            draw.ellipse([cx - 2.2 * r, cy + 1.2 * r, cx + 2.2 * r, cy + 4 * r], fill=SHIRT)
        draw_face(draw, (cx, cy, r))
    return image


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def b64_image(image: Image.Image) -> str:
    return base64.b64encode(encode(image)).decode("ascii")


# The shipped payloads: a front face, and a portrait pose with the face off-centre.
def payload_face() -> Image.Image:
    return face_picture(256, 256, [(128, 118, 70)])


def payload_pose() -> Image.Image:
    return face_picture(192, 256, [(110, 80, 40)], body=True)


def write_payloads(folder: Path = PAYLOADS) -> None:
    """face.png, pose.png and a JSON body for each route, ready to POST."""
    folder.mkdir(parents=True, exist_ok=True)
    face, pose = payload_face(), payload_pose()
    (folder / "face.png").write_bytes(encode(face))
    (folder / "pose.png").write_bytes(encode(pose))
    common = {"negative_prompt": "lowquality, badquality, sketches", "seed": 354849415}
    bodies = {
        "instantid.json": {
            "face_image": b64_image(face),
            "prompt": "photo of a man",
            "style": "Vibrant Color",
            "num_inference_steps": 10,
            "guidance_scale": 5,
            **common,
        },
        "insta-depth.json": {
            "face_image": b64_image(face),
            "pose_image": b64_image(pose),
            "prompt": "Photo of a woman wearing a Superman costume",
            "num_inference_steps": 10,
            "guidance_scale": 3,
            **common,
        },
    }
    for name, body in bodies.items():
        (folder / name).write_text(json.dumps(body, indent=1) + "\n")


if __name__ == "__main__":
    write_payloads()
    print(f"wrote payloads into {PAYLOADS}")
