"""What a hostile or careless caller cannot do: oversized bodies (413), JSON nested too deeply or
holding huge strings or numbers (400), image URLs that reach internal hosts, decompression
bombs (413), and answers that would show a trace or a server path.

In process (create_app, a recording runner) for the contract's answers; the image URL guard is
driven through gateway/schemas/url_fetch.py against a local host on 127.0.0.1, as in
test_image_input.py (whose tests cover the rest of the guard); one test runs on the served
Gateway, for the errors BentoML answers itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import socket
import struct
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from gateway.app import create_app
from gateway.http.errors import ApiError
from gateway.http.json_limits import IMAGE_FIELDS
from gateway.http.middleware import JsonErrorBodies
from gateway.runner_client import RunnerClient
from gateway.schemas.images import load_image
from settings import PROJECT_ROOT, Settings
from tests.helpers import RecordingRunner, assert_error, b64, scene_image
from tests.test_image_input import fake_dns, serve

V1 = "/v1/sd1.5-controlnet-depth"
V2 = "/v2/sd1.5-controlnet-depth"
MODEL = "sd1.5-controlnet-depth"
LEAKS = ("Traceback", str(PROJECT_ROOT), "site-packages", 'File "')


def make_client(**overrides: object) -> tuple[TestClient, RecordingRunner]:
    recorder = RecordingRunner()
    runner = RunnerClient("sd15_depth", recorder, 30.0)
    app = create_app(Settings(**overrides), runners={MODEL: runner})
    return TestClient(app, raise_server_exceptions=False), recorder


@pytest.fixture
def client() -> Iterator[TestClient]:
    test_client, _ = make_client()
    with test_client:  # runs the lifespan: v2 needs its job store
        yield test_client


def body(**fields: object) -> dict:
    return {"image": b64(scene_image(96, 64)), "prompt": "a house", **fields}


def nested(depth: int) -> object:
    """A JSON value `depth` containers deep: [[...[1]...]]."""
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


def post_raw(client: TestClient, route: str, raw: bytes) -> httpx.Response:
    return client.post(route, content=raw, headers={"content-type": "application/json"})


def assert_no_leak(response: httpx.Response) -> None:
    for leak in LEAKS:
        assert leak not in response.text


# --- body size ------------------------------------------------------------------------------


@pytest.mark.parametrize("route", [V1, V2, "/v2/no-such-model"])
def test_body_over_the_limit_is_413_on_every_route(route: str) -> None:
    test_client, recorder = make_client(max_body_bytes=4096)
    with test_client as client:
        big = body(prompt="x" * 10_000)
        assert "4096" in assert_error(client.post(route, json=big), 413)["error"]
        # Streamed without a Content-Length: counted as it arrives.
        chunks = iter([b'{"prompt": "', b"x" * 5000, b'"}'])
        response = client.post(route, content=chunks, headers={"content-type": "application/json"})
        assert_error(response, 413)
    assert recorder.jobs == []


# --- JSON shape -----------------------------------------------------------------------------


@pytest.mark.parametrize("route", [V1, V2])
def test_nesting_up_to_the_limit_passes(client: TestClient, route: str) -> None:
    # An unknown field is ignored, however it is shaped, as long as it is within the limits.
    within = body(extra=nested(Settings().max_json_depth - 1))  # + the body object itself
    assert client.post(route, json=within).status_code == 200


@pytest.mark.parametrize("route", [V1, V2])
def test_nesting_past_the_limit_is_400(client: TestClient, route: str) -> None:
    limit = Settings().max_json_depth
    payload = assert_error(client.post(route, json=body(extra=nested(limit))), 400)
    assert payload["error"] == f"the JSON body is nested deeper than the limit of {limit} levels"


@pytest.mark.parametrize("route", [V1, V2])
def test_nesting_past_what_the_parser_can_is_400_not_500(client: TestClient, route: str) -> None:
    raw = b"[" * 200_000 + b"]" * 200_000
    assert "nested deeper" in assert_error(post_raw(client, route, raw), 400)["error"]
    assert "nested deeper" in assert_error(post_raw(client, route, b"[" * 200_000), 400)["error"]


@pytest.mark.parametrize("route", [V1, V2])
def test_a_long_prompt_is_400_naming_it(route: str) -> None:
    test_client, recorder = make_client(max_string_chars=1000)
    with test_client as client:
        assert client.post(route, json=body(prompt="p" * 1000)).status_code == 200
        response = client.post(route, json=body(prompt="p" * 1001))
        payload = assert_error(response, 400, "prompt")
        assert "1000 characters" in payload["error"]
    assert len(recorder.jobs) == 1


def test_a_long_string_anywhere_is_400_naming_its_path() -> None:
    test_client, _ = make_client(max_string_chars=1000)
    response = test_client.post(V1, json=body(meta={"notes": ["ok", "n" * 1001]}))
    assert_error(response, 400, "meta.notes.1")
    long_key = test_client.post(V1, json=body(**{"k" * 1001: 1}))
    assert "JSON key" in assert_error(long_key, 400)["error"]


def test_image_fields_carry_base64_far_past_the_string_limit(client: TestClient) -> None:
    # A noisy PNG: its base64 is far longer than any prompt may be.
    noisy = Image.effect_noise((200, 200), 100).convert("RGB")
    buffer = io.BytesIO()
    noisy.save(buffer, format="PNG")
    image = b64(buffer.getvalue())
    assert len(image) > 4 * Settings().max_string_chars
    assert client.post(V1, json=body(image=image)).status_code == 200
    assert client.post(V2, json=body(image=image)).status_code == 200


def test_image_fields_are_every_models_image_inputs() -> None:
    assert {"image", "face_image", "pose_image", "control_image"} == IMAGE_FIELDS


def test_an_image_over_the_image_limit_is_413_not_a_string_error() -> None:
    test_client, _ = make_client(max_image_bytes=2048)
    noisy = Image.effect_noise((128, 128), 100).convert("RGB")
    buffer = io.BytesIO()
    noisy.save(buffer, format="PNG")
    assert_error(test_client.post(V1, json=body(image=b64(buffer.getvalue()))), 413, "image")


@pytest.mark.parametrize("route", [V1, V2])
@pytest.mark.parametrize(
    ("raw", "phrase"),
    [
        (b'{"prompt": "a", "seed": ' + b"9" * 5000 + b"}", "too many digits"),  # int() refuses
        (b'{"prompt": "\xff\xfe"}', "not UTF-8"),
        (b'{"prompt": "a",', "malformed JSON"),
        (b"\x00\x01\x02", "malformed JSON"),
    ],
)
def test_unparsable_bodies_are_400_not_500(
    client: TestClient, route: str, raw: bytes, phrase: str
) -> None:
    response = post_raw(client, route, raw)
    assert phrase in assert_error(response, 400)["error"]
    assert_no_leak(response)


# --- request ids on every answer ------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "raw"),
    [
        ("POST", V1, b"{oops"),  # 400, from the middleware's JSON check
        ("POST", V1, b'{"prompt": ' + b"[" * 100 + b"]" * 100 + b"}"),  # 400, too deep
        ("GET", "/nowhere", b""),  # 404
        ("GET", V1, b""),  # 405
        ("GET", "/v2/requests/unknown/status", b""),  # 404
    ],
)
def test_every_error_carries_the_callers_request_id(
    client: TestClient, method: str, path: str, raw: bytes
) -> None:
    response = client.request(method, path, content=raw, headers={"x-request-id": "caller-7"})
    assert response.status_code >= 400
    assert response.headers["x-request-id"] == "caller-7"
    too_long = client.request(method, path, content=raw, headers={"x-request-id": "x" * 129})
    assert too_long.headers["x-request-id"] != "x" * 129
    assert len(too_long.headers["x-request-id"]) == 32  # one of ours (uuid4 hex)


# --- image URLs: internal addresses, after every redirect and every DNS answer ---------------


def fetch_error(url: str, settings: Settings) -> ApiError:
    with pytest.raises(ApiError) as caught:
        asyncio.run(load_image(url, field="image", settings=settings))
    return caught.value


def loopback_allowed() -> Settings:
    return Settings(url_allowed_networks="127.0.0.0/8", url_fetch_timeout_s=2.0)


@pytest.mark.parametrize(
    "url",
    [
        "http://2852039166/latest/meta-data/",  # 169.254.169.254 as one number
        "http://0xa9fea9fe/latest/meta-data/",  # ... in hexadecimal
        "http://169.254.1.1/a.png",  # link-local, not only the metadata host
        "http://[::ffff:169.254.169.254]/latest/meta-data/",  # IPv4-mapped IPv6
        "http://[::ffff:127.0.0.1]/a.png",
        "http://localhost/a.png",
    ],
)
def test_internal_addresses_in_any_spelling_are_refused(url: str) -> None:
    error = fetch_error(url, Settings())
    assert error.status == 400 and "not allowed" in error.message


def test_a_name_resolving_to_the_metadata_host_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_dns(monkeypatch, {"metadata.test": ["169.254.169.254"]})
    error = fetch_error("http://metadata.test/latest/meta-data/", loopback_allowed())
    assert error.status == 400 and "not allowed" in error.message


def test_a_redirect_to_a_name_resolving_inside_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The name a redirect names is resolved and vetted like the first one."""
    lookups = fake_dns(monkeypatch, {"inside.test": ["10.0.0.7"]})
    with redirecting_to("http://inside.test/a.png") as first:
        error = fetch_error(first, loopback_allowed())
    assert error.status == 400 and "not allowed" in error.message
    assert lookups == ["inside.test"]


def test_a_later_hop_of_a_redirect_chain_is_vetted_too() -> None:
    """First and second hops allowed (loopback, in these tests), the third the metadata host."""
    metadata = "http://169.254.169.254/latest/meta-data/"
    with redirecting_to(metadata) as second, redirecting_to(second) as first:
        error = fetch_error(first, loopback_allowed())
    assert error.status == 400 and "not allowed" in error.message


class RedirectHandler(BaseHTTPRequestHandler):
    server: RedirectHost

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        self.send_response(302)
        self.send_header("Location", self.server.location)
        self.send_header("Content-Length", "0")
        self.end_headers()


class RedirectHost(ThreadingHTTPServer):
    """Answers every GET with a redirect to `location`."""

    daemon_threads = True

    def __init__(self, location: str) -> None:
        super().__init__(("127.0.0.1", 0), RedirectHandler)
        self.location = location


@contextlib.contextmanager
def redirecting_to(location: str) -> Iterator[str]:
    """A RedirectHost to `location` for the `with` block: its URL."""
    for running in serve(RedirectHost(location)):
        yield f"http://127.0.0.1:{running.server_port}/"


# --- decompression bombs: refused from the header, in every accepted format -----------------


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small JPEG whose frame header (SOF0) claims `width` x `height`."""
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), "gray").save(buffer, format="JPEG", quality=50)
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def webp_claiming(width: int, height: int) -> bytes:
    """A small lossless WebP whose VP8L header claims `width` x `height` (14 bits each)."""
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), "gray").save(buffer, format="WEBP", lossless=True)
    data = bytearray(buffer.getvalue())
    vp8l = data.index(b"VP8L") + 8  # after the chunk's id and size
    assert data[vp8l] == 0x2F  # the VP8L signature
    (bits,) = struct.unpack_from("<I", data, vp8l + 1)
    bits = (bits & ~0x0FFFFFFF) | (width - 1) | ((height - 1) << 14)
    struct.pack_into("<I", data, vp8l + 1, bits)
    return bytes(data)


# Over our limit (36 megapixels), under Pillow's own guard: only ours stands in the way.
BOMB_W, BOMB_H = 7000, 7000


@pytest.mark.parametrize("make", [jpeg_claiming, webp_claiming])
def test_header_bombs_are_refused_before_decoding(make: Callable[[int, int], bytes]) -> None:
    data = make(BOMB_W, BOMB_H)
    with Image.open(io.BytesIO(data)) as image:  # the header really claims it
        assert image.size == (BOMB_W, BOMB_H)
    error = fetch_error(b64(data), Settings())
    assert error.status == 413 and f"{BOMB_W}x{BOMB_H}" in error.message


@pytest.mark.parametrize("route", [V1, V2])
def test_a_bomb_is_413_over_http(client: TestClient, route: str) -> None:
    response = client.post(route, json=body(image=b64(jpeg_claiming(BOMB_W, BOMB_H))))
    assert "pixels" in assert_error(response, 413, "image")["error"]


# --- no trace, no server path ---------------------------------------------------------------


def test_an_internal_fault_shows_neither_trace_nor_path() -> None:
    async def broken(jobs: list) -> list:
        raise RuntimeError(f"boom in {PROJECT_ROOT}/runners/secret.py")

    app = create_app(Settings(), runners={MODEL: RunnerClient("sd15_depth", broken, 30.0)})
    response = TestClient(app, raise_server_exceptions=False).post(V1, json=body())
    assert_error(response, 500)
    assert_no_leak(response)


def test_plain_text_errors_from_outside_the_app_become_the_contract_body() -> None:
    """JsonErrorBodies, as BentoML's router answers a path it cannot match."""

    async def not_found(request: object) -> PlainTextResponse:
        return PlainTextResponse("Not Found", status_code=404, headers={"x-kept": "1"})

    async def fine(request: object) -> PlainTextResponse:
        return PlainTextResponse("metrics text")

    app = Starlette(routes=[Route("/missing", not_found), Route("/metrics", fine)])
    client = TestClient(JsonErrorBodies(app))
    missing = client.get("/missing")
    assert assert_error(missing, 404) == {"error": "Not Found"}
    assert missing.headers["x-kept"] == "1"
    assert client.get("/metrics").text == "metrics text"  # successes are left alone


def test_served_gateway_answers_json_for_paths_its_router_cannot_match(served_url: str) -> None:
    # A newline in the path: BentoML's own router answers, before our app sees it.
    response = httpx.get(f"{served_url}/v2/requests/a%0Ab/status")
    assert_error(response, 404)
    assert_no_leak(response)


def test_url_fetch_failures_name_no_internals() -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    error = fetch_error(f"http://127.0.0.1:{port}/a.png", loopback_allowed())
    body_text = json.dumps(error.body())
    for internal in (*LEAKS, "Errno", "httpx", "ConnectError"):
        assert internal not in body_text
