"""Tiny face analysis models for the `tiny` profile: an SCRFD-style detector and an ArcFace-style
recogniser, as ONNX files with insightface's real input and output signatures.

They sit in one folder under the file names of the real pack (antelopev2), so the runner loads
both profiles with the same call:

    FaceAnalysis(name=<folder>, allowed_modules=["detection", "recognition"], providers=[...])

**Detector** (`scrfd_10g_bnkps.onnx`): input ``input.1`` of shape (1, 3, height, width), nine
outputs as insightface's scrfd.py expects them (strides 8, 16, 32, two anchors per location):
scores (N, 1), box distances (N, 4) and five keypoint offsets (N, 10) per stride, in units of the
stride. Its weights are set by hand, not learned: it "sees" a *face-like blob*, a bright, compact,
roughly round patch (pixel mean above mid-grey) on a darker surround. Per stride it pools the
bright mask into cells and, over a window of cells around each anchor, takes the blob's moments:

- mass (area), centroid offset and spread (second moment), by convolutions with fixed kernels;
- score: high only when the window holds enough mass, its border ring is dark (the blob lies
  wholly inside) and the spread is that of a disc (one compact blob, not two);
- box: the centroid +- the radius of a disc of that area; keypoints: the centroid plus the ArcFace
  template's eye, nose and mouth positions scaled to that radius.

Every anchor whose window holds the same blob predicts the same box, so non-maximum suppression
leaves exactly one face per blob, and a blank image (of any colour) gives none.

**Recogniser** (`glintr100.onnx`): input ``input.1`` (N, 3, 112, 112), output (N, 512): an average
pool and one seeded random linear layer, so the embedding is a deterministic function of the
aligned face crop.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
from insightface.utils.face_align import arcface_dst
from onnx import TensorProto, helper, numpy_helper

from models.manifest import FACE_DETECTOR_FILE, FACE_RECOGNISER_FILE

SEED = 0
OPSET = 18
# The newest IR version onnxruntime 1.31 reads (onnx 1.23 writes 14 by default).
IR_VERSION = 10


# --- detector -----------------------------------------------------------------------------------
STRIDES = (8, 16, 32)  # SCRFD's feature strides; nine outputs = 3 strides x (score, box, kps)
ANCHORS_PER_LOCATION = 2  # as scrfd_10g_bnkps: insightface expects 2 with 9 outputs
# Window per stride, in cells (odd): WINDOW_CELLS x stride pixels. A face is found at a stride
# when it fits inside the window's border ring: up to ~85% of the 640-pixel input at stride 32.
WINDOW_CELLS = {8: 13, 16: 13, 32: 19}
# SCRFD's input is (pixel - 127.5) / 128: "bright" ramps from 0 to 1 between these two values.
BRIGHT_FROM, BRIGHT_TO = 0.1, 0.35
MIN_FACE_CELLS = 2.0  # the least blob area, in cells of the stride, that can be a face
RING_TOLERANCE = 0.05  # mass allowed on the window's border ring (in cells)
# A uniform disc's mean squared distance from its centre is area / (2 pi): spread / that = 1.
MAX_SPREAD_RATIO = 1.6
SCORE_SHARPNESS = {"mass": 8.0, "ring": 100.0, "spread": 8.0}
EPSILON = 1e-6
# ArcFace's five-point template (112x112 crop, centre 56) relative to the face radius: where the
# eyes, nose and mouth corners of a face whose box is the crop would be.
KEYPOINT_TEMPLATE = (arcface_dst - 56.0) / 56.0

# --- recogniser ---------------------------------------------------------------------------------
RECOGNISER_SIZE = 112
RECOGNISER_POOL = 8
EMBEDDING_SIZE = 512


def build_face_models(dest: Path) -> None:
    """Save the tiny detector and recogniser into `dest`, named as in antelopev2."""
    onnx.save(_detector(), dest / FACE_DETECTOR_FILE)
    onnx.save(_recogniser(), dest / FACE_RECOGNISER_FILE)


class _Graph:
    """A tiny builder: nodes and initializers with generated unique names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def const(self, name: str, value: np.ndarray | float | list, dtype: type = np.float32) -> str:
        unique = f"{name}_{len(self.initializers)}"
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), unique))
        return unique

    def ints(self, name: str, value: list[int]) -> str:
        return self.const(name, value, dtype=np.int64)

    def op(self, op_type: str, *inputs: str, output: str | None = None, **attrs) -> str:
        [output] = self.op_multi(op_type, *inputs, outputs=[output], **attrs)
        return output

    def op_multi(self, op_type: str, *inputs: str, outputs: list[str | None], **attrs) -> list[str]:
        self._count += 1
        names = [name or f"{op_type.lower()}_{self._count}_{i}" for i, name in enumerate(outputs)]
        node_name = f"{op_type.lower()}_node_{self._count}"
        self.nodes.append(helper.make_node(op_type, list(inputs), names, name=node_name, **attrs))
        return names

    def sigmoid_of(self, x: str, sharpness: float, offset: float) -> str:
        """sigmoid(sharpness * (x - offset))."""
        shifted = self.op("Sub", x, self.const("offset", offset))
        return self.op("Sigmoid", self.op("Mul", shifted, self.const("sharpness", sharpness)))


def _window_kernels(size: int) -> np.ndarray:
    """Five size x size kernels over a cell window: mass, x moment, y moment, border ring and
    second moment (dx^2 + dy^2). Offsets are in cells from the window's centre."""
    half = size // 2
    dy, dx = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float32)
    ring = np.ones_like(dx)
    ring[1:-1, 1:-1] = 0
    kernels = np.stack([np.ones_like(dx), dx, dy, ring, dx**2 + dy**2])
    return kernels[:, None]  # (out channels, in channels = 1, R, R)


def _geometry_weights() -> np.ndarray:
    """A 1x1 convolution from (offset x, offset y, radius) to the 4 box distances (left, top,
    right, bottom) and the 10 keypoint offsets, all relative to the anchor."""
    rows = [[-1, 0, 1], [0, -1, 1], [1, 0, 1], [0, 1, 1]]
    for kx, ky in KEYPOINT_TEMPLATE:
        rows += [[1, 0, kx], [0, 1, ky]]
    return np.asarray(rows, dtype=np.float32)[:, :, None, None]


def _detector_level(graph: _Graph, bright: str, stride: int) -> tuple[str, str, str]:
    """Score, box and keypoint outputs of one stride, flattened as insightface reads them."""
    cells = graph.op("AveragePool", bright, kernel_shape=[stride, stride], strides=[stride, stride])
    window = WINDOW_CELLS[stride]
    half = window // 2
    moments = graph.op(
        "Conv", cells, graph.const("window", _window_kernels(window)), pads=[half, half, half, half]
    )
    mass, moment_x, moment_y, ring, second = graph.op_multi(
        "Split", moments, outputs=[None] * 5, axis=1, num_outputs=5
    )

    inverse_mass = graph.op("Reciprocal", graph.op("Add", mass, graph.const("eps", EPSILON)))
    mean_x = graph.op("Mul", moment_x, inverse_mass)
    mean_y = graph.op("Mul", moment_y, inverse_mass)
    radius = graph.op("Sqrt", graph.op("Div", mass, graph.const("pi", math.pi)))
    # Spread about the centroid, relative to a disc of the same area.
    mean_square = graph.op("Mul", second, inverse_mass)
    centroid_square = graph.op(
        "Add", graph.op("Mul", mean_x, mean_x), graph.op("Mul", mean_y, mean_y)
    )
    spread = graph.op("Sub", mean_square, centroid_square)
    disc_spread = graph.op(
        "Add",
        graph.op("Div", mass, graph.const("two_pi", 2 * math.pi)),
        graph.const("eps", EPSILON),
    )
    spread_ratio = graph.op("Div", spread, disc_spread)

    score = graph.op(
        "Mul",
        graph.op(
            "Mul",
            graph.sigmoid_of(mass, SCORE_SHARPNESS["mass"], MIN_FACE_CELLS),
            graph.sigmoid_of(ring, -SCORE_SHARPNESS["ring"], RING_TOLERANCE),
        ),
        graph.sigmoid_of(spread_ratio, -SCORE_SHARPNESS["spread"], MAX_SPREAD_RATIO),
    )

    # Anchors sit at a cell's top-left pixel (insightface: grid * stride); pooled mass sits at
    # the cell's centre, (stride - 1) / 2 pixels further, so shift the centroid by that.
    to_centre = graph.const("to_centre", (stride - 1) / (2 * stride))
    centre_x = graph.op("Add", mean_x, to_centre)
    centre_y = graph.op("Add", mean_y, to_centre)
    shape = graph.op("Concat", centre_x, centre_y, radius, axis=1)
    geometry = graph.op("Conv", shape, graph.const("geometry", _geometry_weights()))
    features = graph.op("Concat", score, geometry, axis=1)  # (1, 15, h, w)

    # (1, 15, h, w) -> (h * w * anchors, 15), each location's anchors consecutive.
    per_location = graph.op(
        "Reshape",
        graph.op("Transpose", features, perm=[0, 2, 3, 1]),
        graph.ints("shape", [-1, 1, 15]),
    )
    anchored = graph.op("Concat", *([per_location] * ANCHORS_PER_LOCATION), axis=1)
    flat = graph.op("Reshape", anchored, graph.ints("shape", [-1, 15]))
    outputs = []
    for part, (start, end) in {"score": (0, 1), "bbox": (1, 5), "kps": (5, 15)}.items():
        outputs.append(
            graph.op(
                "Slice",
                flat,
                graph.ints("start", [start]),
                graph.ints("end", [end]),
                graph.ints("axis", [1]),
                output=f"{part}_{stride}",
            )
        )
    return outputs[0], outputs[1], outputs[2]


def _detector() -> onnx.ModelProto:
    graph = _Graph()
    # Channel mean, then the soft "bright" mask in 0..1.
    gain = 1.0 / (BRIGHT_TO - BRIGHT_FROM)
    brightness = graph.op(
        "Conv",
        "input.1",
        graph.const("mean_rgb", np.full((1, 3, 1, 1), gain / 3)),
        graph.const("mean_bias", [-BRIGHT_FROM * gain]),
    )
    bright = graph.op(
        "Clip", brightness, graph.const("zero", 0.0), graph.const("one", 1.0), output="bright"
    )
    levels = [_detector_level(graph, bright, stride) for stride in STRIDES]
    # insightface's order: all scores, then all boxes, then all keypoints, by stride.
    output_names = [level[part] for part in range(3) for level in levels]
    widths = {"score": 1, "bbox": 4, "kps": 10}
    outputs = [
        helper.make_tensor_value_info(
            name, TensorProto.FLOAT, [f"n{name.split('_')[1]}", widths[name.split("_")[0]]]
        )
        for name in output_names
    ]
    inputs = [
        helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "height", "width"])
    ]
    model = helper.make_model(
        helper.make_graph(graph.nodes, "tiny_scrfd", inputs, outputs, graph.initializers),
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="depthid-tiny",
        ir_version=IR_VERSION,
    )
    onnx.checker.check_model(model)
    return model


def _recogniser() -> onnx.ModelProto:
    graph = _Graph()
    pooled = graph.op(
        "AveragePool",
        "input.1",
        kernel_shape=[RECOGNISER_POOL, RECOGNISER_POOL],
        strides=[RECOGNISER_POOL, RECOGNISER_POOL],
    )
    flat = graph.op("Flatten", pooled, axis=1)
    features = 3 * (RECOGNISER_SIZE // RECOGNISER_POOL) ** 2
    rng = np.random.default_rng(SEED)
    weight = rng.standard_normal((features, EMBEDDING_SIZE)) / math.sqrt(features)
    graph.op("MatMul", flat, graph.const("embedding", weight), output="embedding")
    size = RECOGNISER_SIZE
    inputs = [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["N", 3, size, size])]
    outputs = [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", EMBEDDING_SIZE])]
    model = helper.make_model(
        helper.make_graph(graph.nodes, "tiny_arcface", inputs, outputs, graph.initializers),
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="depthid-tiny",
        ir_version=IR_VERSION,
    )
    onnx.checker.check_model(model)
    return model
