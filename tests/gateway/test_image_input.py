"""Image input of the gateway: URLs (with the SSRF guard), data: URIs and base64, decoding.

A local HTTP server on 127.0.0.1 plays the remote image host; loopback is refused by default,
so the tests that fetch from it allow 127.0.0.0/8 explicitly. pytest-asyncio is not used:
each test drives its coroutine with asyncio.run.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import random
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
import warnings
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from gateway.http.errors import ApiError
from gateway.schemas import images, url_fetch
from gateway.schemas.images import DecodedImage, load_image
from gateway.schemas.url_fetch import fetch_image_url
from settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
FIELD = "face_image"  # distinctive, so "the message names the field" means something
LOOPBACK = "127.0.0.0/8"
SMALL_LIMIT_BYTES = 4096
SHORT_TIMEOUT_S = 1.0
SLOW_RESPONSE_S = 5.0  # well past SHORT_TIMEOUT_S
DRIP_INTERVAL_S = 0.05  # each byte within the read timeout, the whole body far past the total
MAX_REDIRECTS = 2
BOMB_SIDE = 20_000  # 400 megapixels: far past both our limit and Pillow's own
RED, BLUE = (255, 0, 0), (0, 0, 255)


# --- test images ---------------------------------------------------------------------------


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def sample_image(width: int = 48, height: int = 32) -> Image.Image:
    """Left half red, right half blue: orientation is visible in the pixels."""
    image = Image.new("RGB", (width, height), BLUE)
    image.paste(RED, (0, 0, width // 2, height))
    return image


def noise_png(side: int = 64) -> bytes:
    """A PNG that does not compress, so cutting it short cuts into the pixel data."""
    rng = random.Random(0)
    return encode(Image.frombytes("RGB", (side, side), rng.randbytes(side * side * 3)), "PNG")


def black_png(width: int, height: int) -> bytes:
    """A valid, all-black 1-bit PNG, compressed row by row: tiny file, huge image."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        checksum = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", checksum)

    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    compressed = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit grayscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", compressed)
        + chunk(b"IEND", b"")
    )


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


PNG = encode(sample_image(), "PNG")
JPEG = encode(sample_image(), "JPEG", quality=95)
WEBP = encode(sample_image(), "WEBP", lossless=True)
GIF = encode(sample_image(), "GIF")
BMP = encode(sample_image(), "BMP")
CORRUPT = random.Random(1).randbytes(2048)
TRUNCATED_PNG = noise_png()[: len(noise_png()) * 3 // 5]
BOMB_PNG = black_png(BOMB_SIDE, BOMB_SIDE)
LARGE_PNG = encode(sample_image(400, 300), "PNG")


# --- a local image host ----------------------------------------------------------------------


class ImageHost(ThreadingHTTPServer):
    daemon_threads = True  # a handler still sleeping must not hold up the test run

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), ImageHandler)
        self.seen_headers: list[dict[str, str]] = []

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"


class ImageHandler(BaseHTTPRequestHandler):
    server: ImageHost
    FILES = {  # noqa: RUF012 - a constant table
        "/png": ("image/png", PNG),
        "/jpeg": ("image/jpeg", JPEG),
        "/webp": ("image/webp", WEBP),
        "/gif": ("image/gif", GIF),
        "/corrupt": ("image/png", CORRUPT),
        "/truncated": ("image/png", TRUNCATED_PNG),
        "/bomb": ("image/png", BOMB_PNG),
        "/large-png": ("image/png", LARGE_PNG),
    }

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        self.server.seen_headers.append(dict(self.headers.items()))
        # The client may stop reading, as it should for huge or slow bodies.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self._route()

    def _route(self) -> None:
        path = self.path
        if path in self.FILES:
            self._send(*self.FILES[path])
        elif path == "/redirect-to-png":
            self._redirect("/png")
        elif path.startswith("/chain/"):  # /chain/N redirects N more times, then the PNG
            remaining = int(path.rsplit("/", 1)[1])
            self._redirect(f"/chain/{remaining - 1}" if remaining else "/png")
        elif path == "/redirect-to-metadata":
            self._redirect("http://169.254.169.254/latest/meta-data/")
        elif path == "/redirect-to-file":
            self._redirect("file:///etc/passwd")
        elif path == "/slow":
            time.sleep(SLOW_RESPONSE_S)
            self._send("image/png", PNG)
        elif path == "/drip":
            self._drip()
        elif path == "/huge":
            self._endless()
        elif path == "/huge-declared":
            self.send_response(200)
            self.send_header("Content-Length", str(10 * SMALL_LIMIT_BYTES))
            self.end_headers()
            self.wfile.write(b"\x00" * SMALL_LIMIT_BYTES)
        else:
            self._send("text/plain", b"not found", status=404)

    def _send(self, content_type: str, body: bytes, status: int = 200) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _drip(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(PNG)))
        self.end_headers()
        for byte in PNG:
            self.wfile.write(bytes([byte]))
            self.wfile.flush()
            time.sleep(DRIP_INTERVAL_S)

    def _endless(self) -> None:
        """No Content-Length and no end: only the client's own limit stops it."""
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.end_headers()
        chunk = PNG[:8] + b"\x00" * SMALL_LIMIT_BYTES
        while True:
            self.wfile.write(chunk)


def serve(server: ImageHost) -> Iterator[ImageHost]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def host() -> Iterator[ImageHost]:
    yield from serve(ImageHost())


@pytest.fixture(autouse=True)
def _no_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The defaults under test are the code's, not whatever this shell exports."""
    for name in (
        "DEPTHID_URL_ALLOWED_NETWORKS",
        "DEPTHID_MAX_IMAGE_BYTES",
        "DEPTHID_MAX_IMAGE_PIXELS",
        "DEPTHID_URL_FETCH_TIMEOUT_S",
        "DEPTHID_URL_MAX_REDIRECTS",
    ):
        monkeypatch.delenv(name, raising=False)


def loopback_settings(**overrides: object) -> Settings:
    values: dict[str, object] = {
        "url_allowed_networks": LOOPBACK,
        "url_fetch_timeout_s": SHORT_TIMEOUT_S,
        "url_max_redirects": MAX_REDIRECTS,
    }
    return Settings(**{**values, **overrides})


def load(value: str, settings: Settings) -> DecodedImage:
    return asyncio.run(load_image(value, field=FIELD, settings=settings))


def load_error(value: str, settings: Settings) -> ApiError:
    with pytest.raises(ApiError) as caught:
        load(value, settings)
    return caught.value


def assert_field_error(error: ApiError, status: int, *phrases: str) -> None:
    assert error.status == status, error.message
    assert FIELD in error.message
    assert error.details == [{"field": FIELD, "message": error.message}]
    assert error.body() == {"error": error.message, "details": error.details}
    for phrase in phrases:
        assert phrase in error.message
    for internal in ("Traceback", "Errno", "httpx", "PIL", "Error("):
        assert internal not in error.message


# --- URLs ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "fmt"), [("/png", "PNG"), ("/jpeg", "JPEG"), ("/webp", "WEBP")])
def test_loopback_url_works_when_allowed(host: ImageHost, path: str, fmt: str) -> None:
    decoded = load(host.base + path, loopback_settings())
    assert (decoded.format, decoded.width, decoded.height) == (fmt, 48, 32)
    assert decoded.image.mode == "RGB"


def test_loopback_url_refused_by_default(host: ImageHost) -> None:
    error = load_error(host.base + "/png", Settings())
    assert_field_error(error, 400, "not allowed")


def test_host_name_resolving_to_loopback_refused_by_default(host: ImageHost) -> None:
    # The check is on what "localhost" resolves to, not on the string.
    error = load_error(f"http://localhost:{host.server_port}/png", Settings())
    assert_field_error(error, 400, "not allowed")


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1/a.png",
        "http://172.16.5.4/a.png",
        "http://192.168.1.1/a.png",
        "http://127.0.0.1/a.png",
        "http://2130706433/a.png",  # 127.0.0.1 written as one number
        "http://0.0.0.0/a.png",
        "http://[::1]/a.png",
        "http://[::]/a.png",
        "http://[::ffff:10.0.0.1]/a.png",
        "http://[fe80::1]/a.png",
        "http://[fc00::1]/a.png",
        "http://[fec0::1]/a.png",
        "http://[2002:a00:1::]/a.png",  # 6to4 for 10.0.0.1
        "http://169.254.169.254/latest/meta-data/",
        "https://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://224.0.0.1/a.png",
        "http://[ff02::1]/a.png",
        "http://100.100.100.200/a.png",  # carrier-grade NAT space, a metadata host on some clouds
        "http://240.0.0.1/a.png",  # reserved
    ],
)
def test_internal_addresses_refused(url: str) -> None:
    error = load_error(url, Settings())
    assert_field_error(error, 400, "not allowed")


def test_metadata_address_refused_when_loopback_is_allowed() -> None:
    error = load_error("http://169.254.169.254/latest/meta-data/", loopback_settings())
    assert_field_error(error, 400, "not allowed")


@pytest.mark.parametrize(
    "url", ["ftp://example.com/a.png", "file:///etc/passwd", "gopher://example.com/"]
)
def test_only_http_and_https(url: str) -> None:
    error = load_error(url, Settings())
    assert_field_error(error, 400, "http or https")
    with pytest.raises(ApiError) as caught:
        asyncio.run(fetch_image_url(url, field=FIELD, settings=Settings()))
    assert_field_error(caught.value, 400, "http or https")


def test_redirect_is_followed(host: ImageHost) -> None:
    assert load(host.base + "/redirect-to-png", loopback_settings()).format == "PNG"


def test_redirects_up_to_the_limit(host: ImageHost) -> None:
    decoded = load(f"{host.base}/chain/{MAX_REDIRECTS - 1}", loopback_settings())
    assert decoded.format == "PNG"  # MAX_REDIRECTS redirects in all


def test_too_many_redirects(host: ImageHost) -> None:
    error = load_error(f"{host.base}/chain/{MAX_REDIRECTS}", loopback_settings())
    assert_field_error(error, 400, "redirects")


def test_no_redirects_when_limit_is_zero(host: ImageHost) -> None:
    error = load_error(host.base + "/redirect-to-png", loopback_settings(url_max_redirects=0))
    assert_field_error(error, 400, "redirects")


def test_redirect_to_metadata_address_refused(host: ImageHost) -> None:
    error = load_error(host.base + "/redirect-to-metadata", loopback_settings())
    assert_field_error(error, 400, "not allowed")


def test_redirect_to_other_scheme_refused(host: ImageHost) -> None:
    error = load_error(host.base + "/redirect-to-file", loopback_settings())
    assert_field_error(error, 400, "http")


def test_upstream_error_status(host: ImageHost) -> None:
    error = load_error(host.base + "/missing", loopback_settings())
    assert_field_error(error, 400, "could not fetch", "404")


def test_slow_server_times_out(host: ImageHost) -> None:
    started = time.monotonic()
    error = load_error(host.base + "/slow", loopback_settings())
    assert error.message == f"could not fetch {FIELD}: timed out"
    assert_field_error(error, 400)
    assert time.monotonic() - started < SLOW_RESPONSE_S


def test_timeout_is_for_the_whole_fetch(host: ImageHost) -> None:
    # Every byte arrives well within a read timeout; the body as a whole does not.
    assert len(PNG) * DRIP_INTERVAL_S > 2 * SHORT_TIMEOUT_S
    error = load_error(host.base + "/drip", loopback_settings())
    assert error.message == f"could not fetch {FIELD}: timed out"


def test_endless_body_stops_at_the_limit(host: ImageHost) -> None:
    settings = loopback_settings(max_image_bytes=SMALL_LIMIT_BYTES)
    error = load_error(host.base + "/huge", settings)
    assert_field_error(error, 413, str(SMALL_LIMIT_BYTES))


def test_declared_length_over_the_limit(host: ImageHost) -> None:
    settings = loopback_settings(max_image_bytes=SMALL_LIMIT_BYTES)
    error = load_error(host.base + "/huge-declared", settings)
    assert_field_error(error, 413)


def test_connection_refused_says_so_without_internals() -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    error = load_error(f"http://127.0.0.1:{port}/png", loopback_settings())
    assert_field_error(error, 400, "could not fetch")


def test_unresolvable_host() -> None:
    error = load_error("http://no-such-host.invalid/a.png", Settings())
    assert_field_error(error, 400, "does not resolve")


@pytest.mark.parametrize(
    ("path", "status", "phrase"),
    [
        ("/gif", 400, "JPEG, PNG, WebP"),
        ("/corrupt", 400, "not a valid image"),
        ("/truncated", 400, "not a valid image"),
        ("/bomb", 413, "pixels"),
    ],
)
def test_bad_images_from_url(host: ImageHost, path: str, status: int, phrase: str) -> None:
    assert_field_error(load_error(host.base + path, loopback_settings()), status, phrase)


def test_request_keeps_host_name_and_asks_for_plain_bytes(
    host: ImageHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_dns(monkeypatch, {"images.test": ["127.0.0.1"]})
    load(f"http://images.test:{host.server_port}/png", loopback_settings())
    headers = host.seen_headers[-1]
    assert headers["Host"] == f"images.test:{host.server_port}"
    assert headers["Accept-Encoding"] == "identity"


def test_dns_rebinding_cannot_swap_the_address(
    host: ImageHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The name is resolved once; the connection goes to that vetted address."""
    lookups = fake_dns(monkeypatch, {"rebind.test": ["127.0.0.1", "169.254.169.254"]})
    decoded = load(f"http://rebind.test:{host.server_port}/png", loopback_settings())
    assert decoded.format == "PNG"
    assert lookups == ["rebind.test"]


def test_any_bad_address_refuses_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_dns(monkeypatch, {"mixed.test": [["93.184.215.14", "10.0.0.1"]]})
    error = load_error("http://mixed.test/a.png", Settings())
    assert_field_error(error, 400, "not allowed")


def fake_dns(
    monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[str | list[str]]]
) -> list[str]:
    """Answer getaddrinfo for some names: each lookup takes the next answer (a list of IPs
    answers with all of them). Other names resolve as usual. Returns the names looked up."""
    real_getaddrinfo = socket.getaddrinfo
    lookups: list[str] = []
    remaining = {name: list(replies) for name, replies in answers.items()}

    def getaddrinfo(host: str, port: object, *args: object, **kwargs: object) -> list:
        if host not in remaining:
            return real_getaddrinfo(host, port, *args, **kwargs)
        lookups.append(host)
        reply = remaining[host].pop(0)
        ips = reply if isinstance(reply, list) else [reply]
        return [info for ip in ips for info in real_getaddrinfo(ip, port, *args, **kwargs)]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return lookups


# --- https: the vetted IP is dialled, the name still goes to SNI and certificate checks --------


@pytest.fixture(scope="module")
def tls_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ImageHost, Path, list]]:
    # No skip: without a certificate the https path would go untested.
    assert shutil.which("openssl"), "openssl is needed to make a test certificate"
    folder = tmp_path_factory.mktemp("tls")
    make_certificate(folder, "images.test")
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(folder / "server.pem", folder / "server.key")
    sni_names: list[str | None] = []
    server_context.sni_callback = lambda _socket, name, _context: sni_names.append(name)
    server = ImageHost()
    server.socket = server_context.wrap_socket(server.socket, server_side=True)
    for running in serve(server):
        yield running, folder / "ca.pem", sni_names


def make_certificate(folder: Path, name: str) -> None:
    def openssl(*args: str) -> None:
        command = ["openssl", *args]
        subprocess.run(
            command, cwd=folder, check=True, capture_output=True, stdin=subprocess.DEVNULL
        )

    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    ca = [
        *("-x509", "-days", "1", "-subj", "/CN=test CA"),
        *("-addext", "basicConstraints=critical,CA:TRUE"),
        *("-addext", "keyUsage=critical,keyCertSign"),
    ]
    openssl("req", *key, *ca, "-keyout", "ca.key", "-out", "ca.pem")
    openssl("req", *key, "-keyout", "server.key", "-out", "server.csr", "-subj", f"/CN={name}")
    (folder / "server.ext").write_text(f"subjectAltName=DNS:{name}\n")
    signing = ["-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-extfile", "server.ext"]
    openssl("x509", "-req", "-days", "1", "-in", "server.csr", *signing, "-out", "server.pem")


def trust(monkeypatch: pytest.MonkeyPatch, ca_file: Path) -> None:
    context = ssl.create_default_context(cafile=str(ca_file))
    monkeypatch.setattr(url_fetch, "_tls_context", lambda: context)


def test_https_sends_the_name_for_sni_and_verification(
    tls_host: tuple[ImageHost, Path, list], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, ca_file, sni_names = tls_host
    trust(monkeypatch, ca_file)
    fake_dns(monkeypatch, {"images.test": ["127.0.0.1"]})
    decoded = load(f"https://images.test:{server.server_port}/png", loopback_settings())
    assert decoded.format == "PNG"
    assert sni_names[-1] == "images.test"
    assert server.seen_headers[-1]["Host"] == f"images.test:{server.server_port}"


def test_https_certificate_for_another_name_fails(
    tls_host: tuple[ImageHost, Path, list], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, ca_file, _ = tls_host
    trust(monkeypatch, ca_file)
    fake_dns(monkeypatch, {"other.test": ["127.0.0.1"]})
    error = load_error(f"https://other.test:{server.server_port}/png", loopback_settings())
    assert_field_error(error, 400, "could not fetch")


# --- data: URIs and base64 -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "mime", "fmt"),
    [(PNG, "image/png", "PNG"), (JPEG, "image/jpeg", "JPEG"), (WEBP, "image/webp", "WEBP")],
)
def test_data_uri_and_bare_base64(data: bytes, mime: str, fmt: str) -> None:
    for value in (
        f"data:{mime};base64,{b64(data)}",
        b64(data),
        base64.encodebytes(data).decode("ascii"),  # base64 broken into lines
        f"  {b64(data)}\n",
    ):
        decoded = load(value, Settings())
        assert (decoded.format, decoded.width, decoded.height) == (fmt, 48, 32)
        assert decoded.image.mode == "RGB"
        assert decoded.image.getpixel((0, 0)) == pytest.approx(RED, abs=8)


@pytest.mark.parametrize(
    ("value", "phrase"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("not base64!", "base64"),
        ("iVBORw0KGgo", "base64"),  # cut short: bad padding
        ("data:image/png;base64", "data URI"),
        (f"data:image/png,{b64(PNG)}", "base64"),
        ("data:image/png;base64,@@@@", "base64"),
        (f"data:image/gif;base64,{b64(GIF)}", "JPEG, PNG, WebP"),
        (b64(GIF), "JPEG, PNG, WebP"),
        (b64(BMP), "JPEG, PNG, WebP"),
        (b64(CORRUPT), "not a valid image"),
        (b64(TRUNCATED_PNG), "not a valid image"),
    ],
)
def test_bad_inline_images(value: str, phrase: str) -> None:
    assert_field_error(load_error(value, Settings()), 400, phrase)


def test_huge_base64_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def must_not_decode(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("decoded a string already known to be too large")

    monkeypatch.setattr(base64, "b64decode", must_not_decode)
    settings = Settings(max_image_bytes=SMALL_LIMIT_BYTES)
    value = b64(b"\x00" * (SMALL_LIMIT_BYTES + 1))
    assert_field_error(load_error(value, settings), 413, str(SMALL_LIMIT_BYTES))
    assert_field_error(load_error("data:image/png;base64," + value, settings), 413)


def test_size_limit_is_exact() -> None:
    settings = Settings(max_image_bytes=SMALL_LIMIT_BYTES)
    at_limit = noise_png()[:SMALL_LIMIT_BYTES]  # passes the size check, then fails to decode
    assert load_error(b64(at_limit), settings).status == 400
    over = noise_png()[: SMALL_LIMIT_BYTES + 1]
    assert load_error(b64(over), settings).status == 413


# --- decoding --------------------------------------------------------------------------------


def test_exif_orientation_is_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    data = encode(sample_image(), "JPEG", quality=95, exif=exif.tobytes())
    decoded = load(b64(data), Settings())
    assert (decoded.width, decoded.height) == (32, 48)
    # The left (red) half is now on top.
    assert decoded.image.getpixel((16, 4)) == pytest.approx(RED, abs=8)
    assert decoded.image.getpixel((16, 44)) == pytest.approx(BLUE, abs=8)


@pytest.mark.parametrize("inline", [True, False], ids=["base64", "url"])
def test_shrunk_for_the_output_off_the_event_loop(
    inline: bool, host: ImageHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scaling a large photo down takes a while: it happens in the decoding thread, so the event
    loop (every other request) is not held up. The size as sent is kept for the framing."""
    loop_threads: list[bool] = []
    shrink = images.shrink

    def recording_shrink(image: Image.Image, max_side: int) -> Image.Image:
        loop_threads.append(threading.current_thread() is threading.main_thread())
        return shrink(image, max_side)

    monkeypatch.setattr(images, "shrink", recording_shrink)
    value = b64(LARGE_PNG) if inline else f"{host.base}/large-png"
    decoded = asyncio.run(
        load_image(value, field=FIELD, settings=loopback_settings(), max_side=100)
    )
    assert loop_threads == [False]
    assert decoded.image.size == (100, 75)
    assert (decoded.width, decoded.height) == (400, 300)
    # Never scaled up; without an output size, never shrunk.
    assert load(b64(LARGE_PNG), Settings()).image.size == (400, 300)
    assert asyncio.run(
        load_image(b64(LARGE_PNG), field=FIELD, settings=Settings(), max_side=1000)
    ).image.size == (400, 300)


def test_image_is_fully_loaded_rgb() -> None:
    decoded = load(b64(encode(sample_image().convert("RGBA"), "PNG")), Settings())
    assert decoded.image.mode == "RGB"
    assert decoded.image.im is not None  # pixels are in memory, not behind a lazy file


def test_multi_picture_jpeg_is_a_jpeg() -> None:
    buffer = io.BytesIO()
    sample_image().save(buffer, "MPO", save_all=True, append_images=[sample_image()])
    assert load(b64(buffer.getvalue()), Settings()).format == "JPEG"


def test_sixteen_bit_grayscale_is_scaled_not_clipped() -> None:
    image = Image.new("I;16", (8, 8), 0x8000)  # half of full scale
    decoded = load(b64(encode(image, "PNG")), Settings())
    assert decoded.image.getpixel((0, 0)) == (128, 128, 128)


def test_pixel_limit_checked_before_decoding() -> None:
    settings = Settings(max_image_pixels=48 * 32 - 1)
    error = load_error(b64(PNG), settings)
    assert_field_error(error, 413, "48x32", str(48 * 32 - 1))


def test_decompression_bomb_refused() -> None:
    max_pixels = Image.MAX_IMAGE_PIXELS
    error = load_error(b64(BOMB_PNG), Settings())
    assert_field_error(error, 413, "pixels")
    assert max_pixels == Image.MAX_IMAGE_PIXELS  # Pillow's global is left alone


def test_pillow_bomb_warning_is_refused_where_warnings_are_errors() -> None:
    # Our own limit set above Pillow's: only Pillow's warning (made an error) stops it.
    assert Image.MAX_IMAGE_PIXELS is not None
    side = int((Image.MAX_IMAGE_PIXELS * 1.5) ** 0.5)  # between Pillow's warning and error
    settings = Settings(max_image_pixels=side * side + 1)
    data = black_png(side, side)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        assert_field_error(load_error(b64(data), settings), 413, "pixels")


# --- large base64, decoded in slices (the event loop gets the GIL between them) --------------


def test_large_base64_decodes_in_slices_exactly_as_at_once():
    from gateway.schemas import images

    data = random.Random(3).randbytes(images.BASE64_SLICE_CHARS * 2)  # three slices of text
    text = base64.b64encode(data).decode("ascii")
    assert images._b64decode_in_slices(text) == base64.b64decode(text, validate=True) == data


@pytest.mark.parametrize("where", ["slice end", "middle"])
def test_large_base64_with_padding_before_its_end_is_refused(where):
    """Sent whole, `=` before the end is invalid; a slice ending in one must not hide that."""
    from gateway.schemas import images

    text = base64.b64encode(random.Random(4).randbytes(images.BASE64_SLICE_CHARS * 2)).decode()
    at = images.BASE64_SLICE_CHARS - 1 if where == "slice end" else len(text) // 2 + 1
    broken = text[:at] + "=" + text[at + 1 :]
    with pytest.raises(ValueError):
        base64.b64decode(broken, validate=True)
    with pytest.raises(ValueError):
        images._b64decode_in_slices(broken)
