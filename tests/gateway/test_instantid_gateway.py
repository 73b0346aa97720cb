"""The v1 contract of instantid and insta-depth, in process: schemas, styles, sizes and errors.

The runner is a recording double answering with real encoded images of the requested size; the
real pipeline is exercised in test_instantid_runner.py and over HTTP in test_instantid_e2e.py.
"""

from __future__ import annotations

import io

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from gateway.schemas import insta_depth
from gateway.schemas.normalize import MAX_SEED
from gateway.schemas.styles import STYLES
from protocol.jobs import JobFailure
from runners.instantid import InstantIDJob
from tests.support.face_images import b64_image, face_picture, payload_face, payload_pose
from tests.support.gateway_client import make_client
from tests.support.helpers import RecordingRunner, assert_bound, assert_error, b64

INSTANTID = "/v1/instantid"
INSTA_DEPTH = "/v1/insta-depth"
FACE = b64_image(payload_face())  # 256 x 256
POSE = b64_image(payload_pose())  # 192 x 256, portrait
MODELS = ["instantid", "insta-depth"]

FIXED_TEN = [
    "(No style)", "Watercolor", "Film Noir", "Neon", "Jungle", "Mars", "Vibrant Color", "Snow",
    "Line art", "Art Nouveau",
]  # fmt: skip


@pytest.fixture
def client(recorder) -> TestClient:
    return make_client(recorder, MODELS)


def instantid_body(**fields) -> dict:
    return {"face_image": FACE, "prompt": "photo of a man", **fields}


def insta_depth_body(**fields) -> dict:
    return {"face_image": FACE, "pose_image": POSE, "prompt": "photo of a woman", **fields}


# --- defaults -----------------------------------------------------------------------------------


def test_instantid_defaults_reach_the_runner(client, recorder):
    response = client.post(INSTANTID, json=instantid_body())
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/jpeg"
    [job] = recorder.jobs
    assert (job.prompt, job.negative_prompt) == ("photo of a man", "")  # "(No style)"
    assert (job.samples, job.num_inference_steps, job.guidance_scale) == (1, 10, 5)
    assert (job.identity_strength, job.adapter_strength) == (0.8, 0.8)
    assert job.enhance_face_region is True
    assert job.pose_image is None and job.depth_strength is None
    assert job.face_image.size == (256, 256)
    assert 0 <= job.seed <= MAX_SEED
    assert (job.width, job.height) == (64, 64)
    assert Image.open(io.BytesIO(response.content)).size == (64, 64)


def test_insta_depth_defaults_and_fixed_strengths(client, recorder):
    response = client.post(INSTA_DEPTH, json=insta_depth_body(seed=5))
    assert response.status_code == 200, response.text
    assert response.headers["x-seed"] == "5"
    [job] = recorder.jobs
    assert (job.num_inference_steps, job.guidance_scale, job.samples) == (10, 3, 1)
    assert job.identity_strength == insta_depth.IDENTITY_STRENGTH
    assert job.adapter_strength == insta_depth.ADAPTER_STRENGTH
    assert job.depth_strength == insta_depth.DEPTH_STRENGTH
    assert job.enhance_face_region is insta_depth.ENHANCE_FACE_REGION
    assert job.pose_image.size == (192, 256)


def test_instantid_fields_reach_the_runner(client, recorder):
    fields = {
        "samples": 3, "num_inference_steps": 30, "guidance_scale": 7.5, "seed": 42,
        "identity_strength": 0.25, "adapter_strength": 0.5, "enhance_face_region": False,
        "negative_prompt": "blurry", "pose_image": POSE, "base64": True,
    }  # fmt: skip
    response = client.post(INSTANTID, json=instantid_body(**fields))
    assert response.status_code == 200, response.text
    assert len(response.json()["images"]) == 3
    # Sent whole: the runner cuts it into samples (runners/scheduler.py).
    assert [(job.samples, job.seed) for job in recorder.jobs] == [(3, 42)]
    job = recorder.jobs[0]
    assert (job.num_inference_steps, job.guidance_scale) == (30, 7.5)
    assert (job.identity_strength, job.adapter_strength) == (0.25, 0.5)
    assert job.enhance_face_region is False and job.negative_prompt == "blurry"
    assert job.pose_image.size == (192, 256) and job.depth_strength is None


# --- output size: the pose (else face) image's aspect ratio, multiples of 64 ---------------------


@pytest.mark.parametrize(
    ("route", "body", "expected"),
    [
        (INSTANTID, instantid_body(), (256, 256)),
        (INSTANTID, instantid_body(face_image=b64_image(face_picture(320, 160, []))), (256, 128)),
        (INSTANTID, instantid_body(pose_image=POSE), (192, 256)),
        (INSTA_DEPTH, insta_depth_body(), (192, 256)),
    ],
)
def test_output_size_follows_the_framing_image(recorder, route, body, expected):
    client = make_client(recorder, MODELS, output_long_side=256)
    assert client.post(route, json=body).status_code == 200
    [job] = recorder.jobs
    assert (job.width, job.height) == expected


@pytest.mark.parametrize(
    ("long_side", "kept_side", "output"), [(None, 1280, (64, 64)), (1024, 2048, (512, 1024))]
)
def test_large_photos_reach_the_runner_scaled_down(recorder, long_side, kept_side, output):
    """A phone photo does not travel to the runner (or sit in the v2 store) at full size: face
    and pose images are kept at twice the output's long side, and never below 1280 px, since
    the identity is a crop of the face at the image's own resolution."""
    face = face_picture(3000, 2000, [(1500, 900, 500)])
    pose = face_picture(1500, 3000, [(700, 900, 300)], body=True)
    client = make_client(recorder, MODELS, output_long_side=long_side)
    body = insta_depth_body(face_image=b64_image(face), pose_image=b64_image(pose))
    assert client.post(INSTA_DEPTH, json=body).status_code == 200
    [job] = recorder.jobs
    assert max(job.face_image.size) == max(job.pose_image.size) == kept_side
    assert job.face_image.width / job.face_image.height == pytest.approx(1.5, rel=0.01)
    # The output is framed by the pose image as sent (1:2).
    assert (job.width, job.height) == output


def test_tiny_long_side_is_64(client, recorder):
    assert client.post(INSTA_DEPTH, json=insta_depth_body()).status_code == 200
    assert (recorder.jobs[0].width, recorder.jobs[0].height) == (64, 64)


# --- styles -------------------------------------------------------------------------------------


def test_twenty_nine_styles_with_the_fixed_ten():
    assert len(STYLES) == 29
    assert set(FIXED_TEN) <= set(STYLES)
    for name, style in STYLES.items():
        assert "{prompt}" in style.positive, name


# InstantID's own style texts (gradio_demo/style_template.py of the InstantX-research InstantID
# repository), a few of them checked word for word; most of its styles share one negative.
DEMO_NEGATIVE = (
    "(lowres, low quality, worst quality:1.2), (text:1.2), watermark, (frame:1.2), deformed, "
    "ugly, deformed eyes, blur, out of focus, blurry, deformed cat, deformed, photo, "
    "anthropomorphic cat, monochrome, photo, pet collar, gun, weapon, blue, 3d, drones, drone, "
    "buildings in background, green"
)


def test_instantids_own_nine_styles_are_its_texts():
    assert STYLES["(No style)"] == ("{prompt}", "")
    assert STYLES["Watercolor"] == (
        "watercolor painting, {prompt}. vibrant, beautiful, painterly, detailed, textural, "
        "artistic",
        "(lowres, low quality, worst quality:1.2), (text:1.2), watermark, anime, "
        "photorealistic, 35mm film, deformed, glitch, low contrast, noisy",
    )
    assert STYLES["Line art"].positive == (
        "line art drawing {prompt} . professional, sleek, modern, minimalist, graphic, line "
        "art, vector graphics"
    )
    assert STYLES["Mars"].positive.endswith("(8k) (HDR) (cinematic lighting) (sharp focus)")
    for name in ("Film Noir", "Neon", "Jungle", "Mars", "Vibrant Color", "Snow"):
        assert STYLES[name].negative == DEMO_NEGATIVE, name


@pytest.mark.parametrize("name", sorted(STYLES))
def test_each_style_changes_the_prompt_as_written(client, recorder, name):
    body = instantid_body(prompt="a knight", negative_prompt="blurry", style=name)
    assert client.post(INSTANTID, json=body).status_code == 200
    [job] = recorder.jobs
    style = STYLES[name]
    assert job.prompt == style.positive.replace("{prompt}", "a knight")
    # Joined with a space, as InstantID's demo joins them.
    expected_negative = f"{style.negative} blurry" if style.negative else "blurry"
    assert job.negative_prompt == expected_negative
    if name != "(No style)":
        assert job.prompt != "a knight" and style.negative in job.negative_prompt


def test_unknown_style_lists_the_allowed_names(client, recorder):
    response = client.post(INSTANTID, json=instantid_body(style="Baroque"))
    payload = assert_error(response, 400, "style")
    for name in ("(No style)", "Watercolor", "Art Nouveau", "Pointillism"):
        assert name in payload["error"]
    assert recorder.jobs == []


# --- bounds, types, required fields ------------------------------------------------------------

INSTANTID_BOUNDS = [
    ("samples", 0, False), ("samples", 1, True), ("samples", 4, True), ("samples", 5, False),
    ("num_inference_steps", 3, False), ("num_inference_steps", 4, True),
    ("num_inference_steps", 100, True), ("num_inference_steps", 101, False),
    ("guidance_scale", 0.99, False), ("guidance_scale", 1, True),
    ("guidance_scale", 25, True), ("guidance_scale", 25.01, False),
    ("identity_strength", -0.01, False), ("identity_strength", 0, True),
    ("identity_strength", 1, True), ("identity_strength", 1.01, False),
    ("adapter_strength", -0.01, False), ("adapter_strength", 0, True),
    ("adapter_strength", 1, True), ("adapter_strength", 1.01, False),
    ("seed", -2, False), ("seed", -1, True),
    ("seed", MAX_SEED, True), ("seed", MAX_SEED + 1, False),
]  # fmt: skip

INSTA_DEPTH_BOUNDS = [
    ("num_inference_steps", 3, False), ("num_inference_steps", 4, True),
    ("num_inference_steps", 100, True), ("num_inference_steps", 101, False),
    ("guidance_scale", 0.99, False), ("guidance_scale", 1, True),
    ("guidance_scale", 15, True), ("guidance_scale", 15.01, False),
    ("seed", -2, False), ("seed", -1, True),
    ("seed", MAX_SEED, True), ("seed", MAX_SEED + 1, False),
]  # fmt: skip


@pytest.mark.parametrize(
    ("route", "make_body", "field", "value", "ok"),
    [(INSTANTID, instantid_body, *bound) for bound in INSTANTID_BOUNDS]
    + [(INSTA_DEPTH, insta_depth_body, *bound) for bound in INSTA_DEPTH_BOUNDS],
)
def test_bounds(client, recorder, route, make_body, field, value, ok):
    response = client.post(route, json=make_body(**{field: value}))
    assert_bound(response, recorder, field, value, ok)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("samples", "2"), ("samples", 1.5), ("num_inference_steps", 10.0),
        ("guidance_scale", "5"), ("identity_strength", "0.5"), ("adapter_strength", True),
        ("enhance_face_region", "true"), ("enhance_face_region", 1), ("style", 3),
        ("seed", "1"), ("base64", "true"), ("prompt", 5), ("face_image", 5),
        ("pose_image", 5), ("negative_prompt", ["x"]),
    ],
)  # fmt: skip
def test_instantid_wrong_types(client, field, value):
    assert_error(client.post(INSTANTID, json=instantid_body(**{field: value})), 400, field)


@pytest.mark.parametrize(
    ("field", "value"),
    [("pose_image", None), ("guidance_scale", "3"), ("num_inference_steps", 4.5), ("seed", 1.0)],
)
def test_insta_depth_wrong_types(client, field, value):
    assert_error(client.post(INSTA_DEPTH, json=insta_depth_body(**{field: value})), 400, field)


@pytest.mark.parametrize(
    ("route", "make_body", "field"),
    [
        (INSTANTID, instantid_body, "face_image"),
        (INSTANTID, instantid_body, "prompt"),
        (INSTA_DEPTH, insta_depth_body, "face_image"),
        (INSTA_DEPTH, insta_depth_body, "pose_image"),
        (INSTA_DEPTH, insta_depth_body, "prompt"),
    ],
)
def test_required_fields(client, route, make_body, field):
    body = make_body()
    del body[field]
    assert_error(client.post(route, json=body), 400, field)


def test_unknown_fields_are_ignored(client, recorder):
    body = insta_depth_body(samples=4, style="Neon", identity_strength=0.1, width=999)
    assert client.post(INSTA_DEPTH, json=body).status_code == 200
    [job] = recorder.jobs
    assert job.samples == 1 and job.prompt == "photo of a woman"
    assert job.identity_strength == insta_depth.IDENTITY_STRENGTH and job.width == 64


def test_explicit_null_pose_image_means_none(client, recorder):
    assert client.post(INSTANTID, json=instantid_body(pose_image=None)).status_code == 200
    assert recorder.jobs[0].pose_image is None


# --- image errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("route", "make_body", "field"),
    [
        (INSTANTID, instantid_body, "face_image"),
        (INSTANTID, instantid_body, "pose_image"),
        (INSTA_DEPTH, insta_depth_body, "face_image"),
        (INSTA_DEPTH, insta_depth_body, "pose_image"),
    ],
)
def test_undecodable_image_names_its_field(client, route, make_body, field):
    body = make_body(**{field: b64(b"no image")})
    payload = assert_error(client.post(route, json=body), 400)
    assert field in payload["error"]


def test_both_images_undecodable_names_face_image_first(client):
    """The two images are decoded side by side; the error is still the first field's."""
    body = insta_depth_body(face_image=b64(b"no face"), pose_image=b64(b"no pose"))
    payload = assert_error(client.post(INSTA_DEPTH, json=body), 400, "face_image")
    assert "pose_image" not in payload["error"]


@pytest.mark.parametrize("field", ["face_image", "pose_image"])
@pytest.mark.parametrize(
    ("route", "make_body"), [(INSTANTID, instantid_body), (INSTA_DEPTH, insta_depth_body)]
)
def test_no_face_is_a_400_naming_the_field(route, make_body, field):
    failure = JobFailure(kind="invalid_input", field=field, message=f"no face found in {field}")
    client = make_client(RecordingRunner(failure), MODELS)
    payload = assert_error(client.post(route, json=make_body(pose_image=POSE)), 400, field)
    assert payload["error"] == f"no face found in {field}"


# --- docs ------------------------------------------------------------------------------------


def test_openapi_documents_both_routes(client):
    spec = client.get("/openapi.json").json()

    def schema(route: str) -> dict:
        body = spec["paths"][route]["post"]["requestBody"]["content"]["application/json"]
        return spec["components"]["schemas"][body["schema"]["$ref"].split("/")[-1]]

    instantid = schema(INSTANTID)
    assert instantid["required"] == ["face_image", "prompt"]
    assert len(instantid["properties"]["style"]["enum"]) == 29
    assert instantid["properties"]["num_inference_steps"]["minimum"] == 4
    insta = schema(INSTA_DEPTH)
    assert insta["required"] == ["face_image", "pose_image", "prompt"]
    assert insta["properties"]["guidance_scale"]["maximum"] == 15
    assert "400" in spec["paths"][INSTANTID]["post"]["responses"]


# --- the job crosses to a runner reached by URL as JSON ----------------------------------------


def test_job_round_trips_through_json(client, recorder):
    assert client.post(INSTA_DEPTH, json=insta_depth_body(seed=9)).status_code == 200
    [job] = recorder.jobs
    again = InstantIDJob.model_validate_json(job.model_dump_json())
    assert again.model_dump(exclude={"face_image", "pose_image"}) == job.model_dump(
        exclude={"face_image", "pose_image"}
    )
    for field in ("face_image", "pose_image"):
        assert getattr(again, field).tobytes() == getattr(job, field).tobytes()


def test_depth_needs_a_pose_image(client, recorder):
    assert client.post(INSTANTID, json=instantid_body()).status_code == 200
    fields = recorder.jobs[0].model_dump()
    with pytest.raises(ValueError, match="pose_image"):
        InstantIDJob(**{**fields, "depth_strength": 0.5})
