"""Face analysis with insightface: the largest face's box, keypoints and identity embedding.

A model folder holds a detector (SCRFD) and an ArcFace recogniser, as the real antelopev2 pack
does; insightface's FaceAnalysis routes each ONNX file by its signature. Only the chosen face is
recognised: a pose image needs keypoints alone, and other faces are never used.

Also here: the two images InstantID derives from a face, the keypoint image that drives the
IdentityNet and the face-region mask that confines it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import onnxruntime
from insightface.app import FaceAnalysis
from insightface.app.common import Face
from PIL import Image

logger = logging.getLogger(__name__)

# InstantID's detector input size; faces are found on the image letterboxed into it.
DETECTION_SIZE = (640, 640)
DETECTION_THRESHOLD = 0.5
CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"

# The keypoint image as InstantID's `draw_kps` draws it: from each eye and mouth corner to the
# nose a filled ellipse (a limb) in that point's colour, dimmed, then a filled circle per point,
# all at whole-pixel positions. Sizes in pixels at any image size, as the reference's.
KEYPOINT_COLOURS = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255))
NOSE = 2
LIMB_HALF_WIDTH = 4  # the reference's stickwidth: the ellipse's minor semi-axis
DOT_RADIUS = 10
LIMB_BRIGHTNESS = 0.6

# InstantID's demo analyses faces on the image resized (up or down) so that its short side is
# 1024 and then its long side 1280, then cut down to multiples of 64 (its `resize_img`).
ANALYSIS_SHORT_SIDE = 1024
ANALYSIS_LONG_SIDE = 1280
ANALYSIS_MULTIPLE = 64


@dataclass(frozen=True)
class DetectedFace:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in the image's pixels
    keypoints: np.ndarray  # (5, 2): left eye, right eye, nose, left and right mouth corner
    embedding: np.ndarray | None  # (512,) ArcFace embedding, when asked for

    @property
    def area(self) -> float:
        x1, y1, x2, y2 = self.box
        return max(0.0, x2 - x1) * max(0.0, y2 - y1)

    def scaled(self, scale_x: float, scale_y: float) -> DetectedFace:
        """The same face in an image resized by (scale_x, scale_y)."""
        x1, y1, x2, y2 = self.box
        box = (x1 * scale_x, y1 * scale_y, x2 * scale_x, y2 * scale_y)
        return DetectedFace(box, self.keypoints * np.array([scale_x, scale_y]), self.embedding)


def onnx_providers(use_cuda: bool) -> list[str]:
    """onnxruntime's CUDA provider (with CPU fallback) when asked for and present, else CPU."""
    if use_cuda and CUDA_PROVIDER in onnxruntime.get_available_providers():
        return [CUDA_PROVIDER, CPU_PROVIDER]
    return [CPU_PROVIDER]


class FaceAnalyzer:
    def __init__(self, model_dir: Path, use_cuda: bool) -> None:
        providers = onnx_providers(use_cuda)
        analysis = FaceAnalysis(
            name=str(model_dir),
            allowed_modules=["detection", "recognition"],
            providers=providers,
        )
        # ctx_id: 0 keeps the session's providers (CUDA first), -1 forces CPU.
        analysis.prepare(
            ctx_id=0 if providers[0] == CUDA_PROVIDER else -1,
            det_thresh=DETECTION_THRESHOLD,
            det_size=DETECTION_SIZE,
        )
        self._detector = analysis.det_model
        self._recogniser = analysis.models["recognition"]
        # What the sessions actually use: onnxruntime falls back to the CPU, with only a log
        # line of its own, when the CUDA provider is listed but its libraries fail to load.
        self.providers = list(self._detector.session.get_providers())
        logger.info("face analysis loaded from %s on %s", model_dir, self.providers[0])
        if use_cuda and self.providers[0] != CUDA_PROVIDER:
            logger.warning(
                "face analysis runs on the CPU although the runner is on CUDA: onnxruntime's "
                "CUDA provider is not usable here (the GPU image needs onnxruntime-gpu, not "
                "onnxruntime, and the CUDA/cuDNN libraries it was built for); available: %s",
                onnxruntime.get_available_providers(),
            )

    def faces(self, image: Image.Image) -> list[DetectedFace]:
        """Every face in `image` (boxes and keypoints, no embeddings)."""
        return self._detect(_bgr(image))

    def largest_face(self, image: Image.Image, embed: bool = True) -> DetectedFace | None:
        """The face with the largest box in `image`, or None when there is none. With `embed`,
        its identity embedding too (only this face is recognised). As InstantID's demo, the
        face is analysed on the image resized for analysis (`analysis_image`); its box and
        keypoints come back in `image`'s own pixels."""
        resized = analysis_image(image)
        bgr = _bgr(resized)
        chosen = largest(self._detect(bgr))
        if chosen is None:
            return None
        embedding = None
        if embed:
            face = Face(bbox=np.asarray(chosen.box), kps=chosen.keypoints)
            embedding = np.asarray(self._recogniser.get(bgr, face), dtype=np.float32)
        scale_x, scale_y = image.width / resized.width, image.height / resized.height
        scaled = chosen.scaled(scale_x, scale_y)
        return DetectedFace(scaled.box, scaled.keypoints, embedding)

    def _detect(self, bgr: np.ndarray) -> list[DetectedFace]:
        boxes, keypoints = self._detector.detect(bgr)
        return [
            DetectedFace(tuple(float(v) for v in box[:4]), points.astype(np.float32), None)
            for box, points in zip(boxes, keypoints, strict=True)
        ]


def analysis_image(image: Image.Image) -> Image.Image:
    """`image` resized as InstantID's demo resizes a face or pose image before analysis:
    scaled so that the short side is ANALYSIS_SHORT_SIDE, then so that the long side is
    ANALYSIS_LONG_SIDE (bilinear, sizes rounded), then resized again to sides cut down to
    multiples of ANALYSIS_MULTIPLE."""
    width, height = image.size
    to_short = ANALYSIS_SHORT_SIDE / min(width, height)
    width, height = round(to_short * width), round(to_short * height)
    to_long = ANALYSIS_LONG_SIDE / max(width, height)
    width, height = round(to_long * width), round(to_long * height)
    resized = image.convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
    cut = (
        width // ANALYSIS_MULTIPLE * ANALYSIS_MULTIPLE,
        height // ANALYSIS_MULTIPLE * ANALYSIS_MULTIPLE,
    )
    return resized.resize(cut, Image.Resampling.BILINEAR)


def _bgr(image: Image.Image) -> np.ndarray:
    """insightface's input: an OpenCV-style BGR array."""
    return np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])


def largest(faces: list[DetectedFace]) -> DetectedFace | None:
    """The face of largest box area (the first of equals), or None for no faces."""
    return max(faces, key=lambda face: face.area, default=None)


def draw_keypoints(keypoints: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """InstantID's IdentityNet condition: the five keypoints drawn on black, at `size` (W, H),
    pixel for pixel what the reference's `draw_kps` draws."""
    width, height = size
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    nose_x, nose_y = keypoints[NOSE]
    for index, (x, y) in enumerate(keypoints):
        if index == NOSE:
            continue
        length = math.hypot(x - nose_x, y - nose_y)
        angle = math.degrees(math.atan2(y - nose_y, x - nose_x))
        centre = (int((x + nose_x) / 2), int((y + nose_y) / 2))
        axes = (int(length / 2), LIMB_HALF_WIDTH)
        outline = cv2.ellipse2Poly(centre, axes, int(angle), 0, 360, 1)
        cv2.fillConvexPoly(pixels, outline, KEYPOINT_COLOURS[index])
    # Dimmed as the reference does it: scaled, then truncated to whole values.
    pixels = (pixels * LIMB_BRIGHTNESS).astype(np.uint8)
    for index, (x, y) in enumerate(keypoints):
        cv2.circle(pixels, (int(x), int(y)), DOT_RADIUS, KEYPOINT_COLOURS[index], -1)
    return Image.fromarray(pixels)


def face_region_mask(
    box: tuple[float, float, float, float], size: tuple[int, int], padding: float
) -> Image.Image:
    """A mask (L, 255 inside) at `size` of the face box grown by `padding` (a fraction of its
    width and height) on each side. Pixels as InstantID's demo marks them: from the corners cut
    to whole pixels, the far edges left out."""
    x1, y1, x2, y2 = box
    pad_x, pad_y = (x2 - x1) * padding, (y2 - y1) * padding
    left, top = max(0, int(x1 - pad_x)), max(0, int(y1 - pad_y))
    right, bottom = max(0, int(x2 + pad_x)), max(0, int(y2 + pad_y))
    pixels = np.zeros((size[1], size[0]), dtype=np.uint8)
    pixels[top:bottom, left:right] = 255
    return Image.fromarray(pixels)
