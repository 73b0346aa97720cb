"""Every input a client can get wrong is a 4xx naming what is wrong, on every route, in process.

Lone UTF-16 surrogates in any text, images of extreme aspect ratio in every image field, image
URLs the parser cannot read, a malformed Content-Length, JSON bodies of too many items; then a
property-based test (hypothesis) that sends such inputs, mixed, to every route and finds no 5xx.
"""

from __future__ import annotations

import asyncio
import io
import json

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from gateway.app import create_app
from settings import PROJECT_ROOT, Settings
from tests.support.gateway_client import make_client
from tests.support.helpers import RecordingRunner, assert_error, b64

FACE = b64((PROJECT_ROOT / "loadtests" / "payloads" / "face.png").read_bytes())
IMAGE_FIELDS = {
    "sd1.5-controlnet-depth": ("image",),
    "instantid": ("face_image", "pose_image"),
    "insta-depth": ("face_image", "pose_image"),
    "flux-depth-pro": ("control_image",),
}
TEXT_FIELDS = {
    "sd1.5-controlnet-depth": ("prompt", "negative_prompt"),
    "instantid": ("prompt", "negative_prompt"),
    "insta-depth": ("prompt", "negative_prompt"),
    "flux-depth-pro": ("prompt",),
}
ROUTES = [f"/{version}/{model}" for model in IMAGE_FIELDS for version in ("v1", "v2")]
# What a parser cannot read: IDNA hosts that do not decode, a lone surrogate in the path or
# the host, a port out of range, control characters.
BAD_URLS = [
    "http://xn--zz/a.png",
    "http://xn--/",
    "https://xn--a.com/x.png",
    "http://example.com/\ud800.png",
    "http://\udfff.example/a.png",
    "http://example.com:99999999/a.png",
    "http://exa\tmple.com/a.png",
    "http://[::1/a.png",
    "http:///a.png",
]
SLIVERS = [(1000, 1), (20000, 10), (10, 20000), (1, 1000), (401, 100)]


def png(width: int, height: int) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), "teal").save(buffer, format="PNG")
    return b64(buffer.getvalue())


def good_body(model: str) -> dict:
    return {"prompt": "a portrait", **dict.fromkeys(IMAGE_FIELDS[model], FACE)}


@pytest.fixture(scope="module")
def recorder() -> RecordingRunner:
    return RecordingRunner()


@pytest.fixture(scope="module")
def client(recorder):
    with make_client(recorder, IMAGE_FIELDS) as test_client:
        yield test_client


def post_json(client: TestClient, route: str, body: dict):
    """`body` as JSON with non-ASCII escaped: a lone surrogate travels as "\\ud800"."""
    content = json.dumps(body).encode()
    return client.post(route, content=content, headers={"content-type": "application/json"})


# --- lone surrogates -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("route", "field"),
    [(r, f) for r in ROUTES for f in TEXT_FIELDS[r.split("/")[2]]],
)
def test_a_lone_surrogate_in_text_is_400_naming_the_field(client, recorder, route, field):
    recorder.jobs.clear()
    body = {**good_body(route.split("/")[2]), field: "a portrait \ud800 in oil"}
    payload = assert_error(post_json(client, route, body), 400, field)
    assert "surrogate" in payload["error"] and "U+D800" in payload["error"]
    assert recorder.jobs == []


def test_a_surrogate_sent_as_raw_bytes_or_in_a_key_is_400(client):
    # The UTF-8 form of a surrogate is not UTF-8, but Python's parser lets it through.
    raw = b'{"prompt": "a \xed\xa0\x80 house", "image": "' + FACE.encode() + b'"}'
    route = "/v1/sd1.5-controlnet-depth"
    response = client.post(route, content=raw, headers={"content-type": "application/json"})
    assert_error(response, 400, "prompt")
    body = {**good_body("sd1.5-controlnet-depth"), "extra \udc00": 1}
    assert "key" in assert_error(post_json(client, route, body), 400)["error"]


def test_a_surrogate_pair_is_text_like_any_other(client, recorder):
    recorder.jobs.clear()
    body = {**good_body("sd1.5-controlnet-depth"), "prompt": "a house \U0001f3e0"}
    response = post_json(client, "/v1/sd1.5-controlnet-depth", body)  # sent as \ud83c\udfe0
    assert response.status_code == 200, response.text
    assert recorder.jobs[0].prompt == "a house \U0001f3e0"


# --- aspect ratio --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("route", "field", "size"),
    [
        (route, field, size)
        for route in ROUTES
        for field in IMAGE_FIELDS[route.split("/")[2]]
        for size in SLIVERS
    ],
)
def test_an_extreme_aspect_ratio_is_400_naming_the_field_and_the_limit(
    client, recorder, route, field, size
):
    recorder.jobs.clear()
    body = {**good_body(route.split("/")[2]), field: png(*size)}
    payload = assert_error(post_json(client, route, body), 400, field)
    assert f"{size[0]}x{size[1]}" in payload["error"] and "4:1" in payload["error"]
    assert recorder.jobs == []


@pytest.mark.parametrize("size", [(400, 100), (100, 400)])
def test_the_aspect_ratio_limit_itself_is_accepted(client, recorder, size):
    recorder.jobs.clear()
    body = {"prompt": "a house", "image": png(*size)}
    response = post_json(client, "/v1/sd1.5-controlnet-depth", body)
    assert response.status_code == 200, response.text
    assert (recorder.jobs[0].width, recorder.jobs[0].height) == (
        (64, 16) if size[0] > size[1] else (16, 64)
    )


def test_the_aspect_ratio_limit_is_a_setting(recorder):
    with make_client(recorder, ["flux-depth-pro"], max_aspect_ratio=8) as client:
        ok = post_json(client, "/v1/flux-depth-pro", {"prompt": "a", "control_image": png(8, 64)})
        assert ok.status_code == 200, ok.text
        body = {"prompt": "a", "control_image": png(9, 80)}
        assert "8:1" in assert_error(post_json(client, "/v1/flux-depth-pro", body), 400)["error"]


# --- URLs the parser cannot read -----------------------------------------------------------


@pytest.mark.parametrize("url", BAD_URLS)
@pytest.mark.parametrize("route", ["/v1/sd1.5-controlnet-depth", "/v2/insta-depth"])
def test_an_unreadable_url_is_400_naming_the_field(client, recorder, route, url):
    recorder.jobs.clear()
    field = IMAGE_FIELDS[route.split("/")[2]][-1]
    body = {**good_body(route.split("/")[2]), field: url}
    assert_error(post_json(client, route, body), 400, field)
    assert recorder.jobs == []


@pytest.mark.parametrize("url", ["http://xn--zz/a.png", "http://xn--/", "http://xn--a.com/"])
def test_the_url_fetcher_refuses_what_it_cannot_parse(url):
    from gateway.http.errors import ApiError
    from gateway.schemas.url_fetch import fetch_image_url

    with pytest.raises(ApiError) as refused:
        asyncio.run(fetch_image_url(url, field="pose_image", settings=Settings()))
    assert refused.value.status == 400 and refused.value.message == "pose_image is not a valid URL"


# --- headers and body shape ----------------------------------------------------------------


def asgi_post(app, path: str, headers: list[tuple[bytes, bytes]], body: bytes) -> tuple:
    """POST straight through the ASGI app: headers exactly as given, as a client could send
    them (HTTP client libraries refuse to send a malformed Content-Length)."""
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), *headers],
        "client": ("127.0.0.1", 1234),
        "server": ("testserver", 80),
    }
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    payload = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], json.loads(payload)


@pytest.mark.parametrize("value", [b"abc", b"-1", b"1 2", b"0x10", b""])
def test_a_malformed_content_length_is_400(value):
    app = create_app(Settings(), runners={})
    body = json.dumps(good_body("sd1.5-controlnet-depth")).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", value)]
    status, payload = asgi_post(app, "/v1/sd1.5-controlnet-depth", headers, body)
    assert status == 400 and "Content-Length" in payload["error"]


def test_a_body_of_too_many_items_is_400_before_it_is_parsed(client, recorder):
    limit = Settings().max_json_items
    body = {**good_body("sd1.5-controlnet-depth"), "junk": [0] * limit}
    payload = assert_error(post_json(client, "/v1/sd1.5-controlnet-depth", body), 400)
    assert f"limit of {limit} items" in payload["error"]
    # A prompt of commas at the string limit is text, not items.
    recorder.jobs.clear()
    body = {**good_body("sd1.5-controlnet-depth"), "prompt": "," * Settings().max_string_chars}
    body["negative_prompt"] = body["prompt"]
    assert post_json(client, "/v1/sd1.5-controlnet-depth", body).status_code == 200


# --- property-based: any mix of such inputs, every route, never a 5xx -------------------------

surrogates = st.characters(codec=None, categories=["Cs"])
hostile_text = st.one_of(
    st.text(max_size=40),
    st.tuples(st.text(max_size=10), surrogates, st.text(max_size=10)).map("".join),
)
hostile_image = st.one_of(
    st.sampled_from([png(*size) for size in SLIVERS]),
    st.sampled_from(BAD_URLS),
    st.tuples(st.just("http://"), hostile_text, st.just("/a.png")).map("".join),
    st.tuples(st.just("http://xn--"), st.text(max_size=8), st.just("/")).map("".join),
    hostile_text,
    st.just(FACE),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | hostile_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(hostile_text, inner, max_size=3),
    max_leaves=6,
)


@st.composite
def hostile_request(draw) -> tuple[str, dict]:
    route = draw(st.sampled_from(ROUTES))
    model = route.split("/")[2]
    body = good_body(model)
    for field in IMAGE_FIELDS[model]:
        if draw(st.booleans()):
            body[field] = draw(hostile_image)
    for field in TEXT_FIELDS[model]:
        if draw(st.booleans()):
            body[field] = draw(hostile_text)
    if draw(st.booleans()):
        body[draw(hostile_text)] = draw(json_values)
    return route, body


@settings(
    max_examples=150,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(request=hostile_request())
def test_hostile_inputs_on_every_route_are_never_a_5xx(client, request):
    route, body = request
    response = post_json(client, route, body)
    assert response.status_code < 500, (route, body, response.text)
    if response.status_code >= 400:
        assert_error(response, response.status_code)


def test_commas_are_counted_across_slices_of_a_large_body():
    from gateway.http import json_limits

    raw = b'{"prompt": "' + b"a," * json_limits.COUNT_SLICE_BYTES + b'"}'
    assert json_limits._commas(raw) == raw.count(b",")
