"""Face analysis on the tiny face models: insightface's real FaceAnalysis over our ONNX files."""

from __future__ import annotations

import numpy as np
import onnxruntime
import pytest
from PIL import Image

from models.manifest import FACE_DETECTOR_FILE, FACE_RECOGNISER_FILE
from models.store import require_model
from runners import faces as faces_module
from runners.faces import (
    CPU_PROVIDER,
    CUDA_PROVIDER,
    DetectedFace,
    FaceAnalyzer,
    draw_keypoints,
    face_region_mask,
    largest,
    onnx_providers,
)
from tests.support.face_images import PAYLOADS, face_picture, payload_face, payload_pose


@pytest.fixture(scope="module")
def model_dir(tiny_settings):
    return require_model(tiny_settings, "face-analysis")


@pytest.fixture(scope="module")
def analyzer(model_dir) -> FaceAnalyzer:
    analyzer = FaceAnalyzer(model_dir, use_cuda=False)
    assert analyzer.providers == [CPU_PROVIDER]
    return analyzer


def centre(face: DetectedFace) -> tuple[float, float]:
    x1, y1, x2, y2 = face.box
    return (x1 + x2) / 2, (y1 + y2) / 2


def test_one_blob_is_one_face_with_keypoints_and_embedding(analyzer):
    [face] = analyzer.faces(face_picture(200, 160, [(90, 70, 40)]))
    assert centre(face) == pytest.approx((90, 70), abs=3)
    x1, y1, x2, y2 = face.box
    assert (x2 - x1) == pytest.approx(80, abs=6) and (y2 - y1) == pytest.approx(80, abs=6)
    assert face.keypoints.shape == (5, 2)
    # Eyes above the nose above the mouth, all inside the box.
    (lx, ly), (rx, ry), (nx, ny), (mlx, mly), (mrx, mry) = face.keypoints
    assert lx < nx < rx and max(ly, ry) < ny < min(mly, mry) and mlx < mrx
    assert ((face.keypoints >= (x1, y1)) & (face.keypoints <= (x2, y2))).all()

    chosen = analyzer.largest_face(face_picture(200, 160, [(90, 70, 40)]))
    assert chosen.embedding.shape == (512,) and np.isfinite(chosen.embedding).all()
    assert np.linalg.norm(chosen.embedding) > 0


@pytest.mark.parametrize("colour", [(0, 0, 0), (255, 255, 255), (128, 128, 128), (232, 192, 160)])
def test_blank_image_has_no_face(analyzer, colour):
    image = Image.new("RGB", (160, 120), colour)
    assert analyzer.faces(image) == []
    assert analyzer.largest_face(image) is None


@pytest.mark.parametrize(
    ("faces", "expected"),
    [
        ([(80, 80, 45), (240, 80, 28)], (80, 80)),  # larger first
        ([(80, 80, 28), (240, 80, 45)], (240, 80)),  # larger last
    ],
)
def test_the_largest_face_is_chosen(analyzer, faces, expected):
    image = face_picture(320, 160, faces)
    assert len(analyzer.faces(image)) == 2
    chosen = analyzer.largest_face(image)
    assert centre(chosen) == pytest.approx(expected, abs=3)
    assert analyzer.largest_face(image, embed=False).box == chosen.box


def test_largest_is_by_box_area_not_by_order_or_side():
    wide = DetectedFace((0, 0, 100, 10), np.zeros((5, 2)), None)  # area 1000, widest
    square = DetectedFace((0, 0, 40, 40), np.zeros((5, 2)), None)  # area 1600
    small = DetectedFace((0, 0, 20, 20), np.zeros((5, 2)), None)
    assert largest([square, wide, small]) is square
    assert largest([wide, small, square]) is square
    assert largest([]) is None


def test_embedding_is_deterministic_and_follows_the_face(analyzer):
    first = analyzer.largest_face(face_picture(200, 160, [(90, 70, 40)]))
    again = analyzer.largest_face(face_picture(200, 160, [(90, 70, 40)]))
    assert np.array_equal(first.embedding, again.embedding)
    other = face_picture(200, 160, [(90, 70, 40)])
    other.paste((250, 250, 250), (70, 50, 110, 60))  # a different face: a pale band over the eyes
    different = analyzer.largest_face(other)
    assert np.abs(different.embedding - first.embedding).max() > 1e-3


def test_keypoints_of_a_pose_without_embedding(analyzer):
    face = analyzer.largest_face(payload_pose(), embed=False)
    assert face.embedding is None and face.keypoints.shape == (5, 2)


def test_shipped_payloads_have_exactly_one_face(analyzer):
    for name, expected in (("face.png", payload_face()), ("pose.png", payload_pose())):
        shipped = Image.open(PAYLOADS / name)
        assert np.array_equal(np.asarray(shipped.convert("RGB")), np.asarray(expected)), name
        assert len(analyzer.faces(shipped)) == 1, name


def test_models_have_insightface_signatures(model_dir):
    detector = onnxruntime.InferenceSession(
        str(model_dir / FACE_DETECTOR_FILE), providers=[CPU_PROVIDER]
    )
    [image_input] = detector.get_inputs()
    assert image_input.shape[:2] == [1, 3]
    outputs = detector.run(None, {image_input.name: np.zeros((1, 3, 640, 640), np.float32)})
    # Scores, boxes, keypoints for strides 8, 16, 32, two anchors per location.
    counts = [(640 // stride) ** 2 * 2 for stride in (8, 16, 32)]
    assert [out.shape for out in outputs] == [(n, width) for width in (1, 4, 10) for n in counts]
    recogniser = onnxruntime.InferenceSession(
        str(model_dir / FACE_RECOGNISER_FILE), providers=[CPU_PROVIDER]
    )
    [crop] = recogniser.get_inputs()
    assert crop.shape[1:] == [3, 112, 112]
    [embedding] = recogniser.run(None, {crop.name: np.zeros((2, 3, 112, 112), np.float32)})
    assert embedding.shape == (2, 512)


def test_onnx_provider_is_chosen_explicitly(monkeypatch):
    assert onnx_providers(use_cuda=False) == [CPU_PROVIDER]
    monkeypatch.setattr(faces_module.onnxruntime, "get_available_providers", lambda: [CPU_PROVIDER])
    assert onnx_providers(use_cuda=True) == [CPU_PROVIDER]
    monkeypatch.setattr(
        faces_module.onnxruntime,
        "get_available_providers",
        lambda: [CUDA_PROVIDER, CPU_PROVIDER],
    )
    assert onnx_providers(use_cuda=True) == [CUDA_PROVIDER, CPU_PROVIDER]
    assert onnx_providers(use_cuda=False) == [CPU_PROVIDER]


def test_keypoint_image_marks_each_point():
    keypoints = np.array([[20, 20], [44, 20], [32, 32], [24, 46], [40, 46]], dtype=np.float32)
    image = draw_keypoints(keypoints, (64, 64))
    assert image.size == (64, 64) and image.mode == "RGB"
    pixels = np.asarray(image)
    for (x, y), colour in zip(keypoints.astype(int), faces_module.KEYPOINT_COLOURS, strict=True):
        assert tuple(pixels[y, x]) == colour
    assert pixels[0, 0].sum() == 0 and pixels[63, 63].sum() == 0


def test_keypoints_are_drawn_as_the_reference_draws_them():
    """Limbs are filled ellipses (half width 4) tapering to the ends, dimmed to 60% (truncated);
    dots of radius 10 centred on the points cut to whole pixels."""
    # left eye, right eye, nose, mouth corners
    keypoints = np.array([[300, 500], [700, 500], [500, 500], [400.9, 800.9], [600, 800]])
    pixels = np.asarray(draw_keypoints(keypoints, (1024, 1024)))
    assert tuple(pixels[500, 400]) == (153, 0, 0)  # red limb, 255 * 0.6
    assert tuple(pixels[504, 400]) == (153, 0, 0) and pixels[506, 400].sum() == 0
    # 88 of 100 px from the limb's middle the ellipse is under 2 px high: a line would be 4.
    assert pixels[502, 312].sum() > 0 and pixels[503, 312].sum() == 0
    # The mouth corner's dot is centred on (400, 800), not on the rounded (401, 801).
    assert tuple(pixels[800, 390]) == (255, 255, 0) and pixels[800, 389].sum() == 0
    assert tuple(pixels[810, 400]) == (255, 255, 0) and pixels[811, 400].sum() == 0


def test_analysis_image_is_resized_as_the_demo_does():
    """Short side to 1024, then long side to 1280, then cut to multiples of 64; up or down."""
    for size, expected in [
        ((256, 256), (1280, 1280)),
        ((192, 256), (960, 1280)),
        ((3000, 2000), (1280, 832)),
        ((4000, 1000), (1280, 320)),
    ]:
        assert faces_module.analysis_image(Image.new("RGB", size)).size == expected


def test_face_region_mask_is_the_padded_box():
    mask = np.asarray(face_region_mask((20, 10, 40, 50), (64, 64), padding=0.1))
    assert mask.shape == (64, 64)
    # Padding: 10% of the 20 x 40 box on each side -> x 18..42, y 6..54, far edges left out.
    assert mask[30, 30] == 255 and mask[6, 18] == 255 and mask[53, 41] == 255
    assert mask[30, 17] == 0 and mask[5, 30] == 0 and mask[54, 30] == 0 and mask[30, 42] == 0
    assert (mask == 255).sum() == (42 - 18) * (54 - 6)


def test_face_region_mask_without_padding_is_the_demos_box():
    """InstantID's demo: zeros, then [int(y1):int(y2), int(x1):int(x2)] = 255."""
    mask = np.asarray(face_region_mask((20.7, 10.2, 40.9, 50.5), (64, 48), padding=0))
    expected = np.zeros((48, 64), dtype=np.uint8)
    expected[10:50, 20:40] = 255
    assert np.array_equal(mask, expected)
