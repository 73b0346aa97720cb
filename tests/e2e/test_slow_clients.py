"""Cheap denial of service against a served Gateway (`bentoml serve`, tiny profile): slow and
half-sent requests, idle connections, malformed headers, and bodies of millions of JSON items.

The served instance has short timeouts (2 s for a request head, 3 s for a body), so each case
is cut off in seconds; the bounds asserted are many times those, as the machine may be busy.
"""

from __future__ import annotations

import concurrent.futures
import json
import select
import socket
import time

import httpx
import pytest

from tests.support.served import serve

pytestmark = pytest.mark.served  # the shared `bentoml serve` of tests/conftest.py

HEAD_TIMEOUT_S = 2
BODY_TIMEOUT_S = 3
MAX_BODY_BYTES = 32 * 1024 * 1024
GIVE_UP_S = 60  # far past every timeout: reaching it means the server never cut us off
ROUTE = "/v1/sd1.5-controlnet-depth"


@pytest.fixture(scope="module")
def served():
    env = {
        "DEPTHID_REQUEST_HEAD_TIMEOUT_S": str(HEAD_TIMEOUT_S),
        "DEPTHID_REQUEST_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
        "DEPTHID_MAX_BODY_BYTES": str(MAX_BODY_BYTES),
    }
    with serve(env=env) as base_url:
        yield base_url, int(base_url.rsplit(":", 1)[1])


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=GIVE_UP_S)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (b"" then)."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def test_a_connection_that_sends_nothing_is_closed(served):
    _, port = served
    with connect(port) as sock:
        started = time.monotonic()
        assert read_until_closed(sock) == b""
    assert time.monotonic() - started < GIVE_UP_S


def test_half_sent_headers_are_cut_off(served):
    _, port = served
    with connect(port) as sock:
        sock.sendall(f"POST {ROUTE} HTTP/1.1\r\nHost: x\r\nContent-Type: appl".encode())
        assert read_until_closed(sock) == b""


def test_a_connection_idle_after_its_answer_is_closed(served):
    _, port = served
    with connect(port) as sock:
        sock.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 200")


def test_headers_trickling_after_an_answer_are_cut_off(served):
    """After one answer, a new request head that stops half-way is cut off too (uvicorn's
    keep-alive timeout alone stops at the first byte)."""
    _, port = served
    with connect(port) as sock:
        sock.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.5)
        sock.sendall(b"GET /livez HTTP/1.1\r\nHo")
        answer = read_until_closed(sock)
    assert answer.count(b"HTTP/1.1 200") == 1


def test_a_body_sent_a_byte_at_a_time_is_cut_off_with_408(served):
    _, port = served
    body = json.dumps({"prompt": "a house", "image": "x" * 200}).encode()
    with connect(port) as sock:
        head = (
            f"POST {ROUTE} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        sock.sendall(head.encode())
        answer = b""
        for byte in body:  # one byte a second: 200 s to send it all
            # The next byte only while the server has said nothing: a byte sent after its answer
            # and close draws a reset, which can discard the answer before it is read.
            readable, _, _ = select.select([sock], [], [], 1.0)
            if readable:
                answer = read_until_closed(sock)  # the answer's head and body, then the close
                break
            sock.sendall(bytes([byte]))
    assert answer.startswith(b"HTTP/1.1 408"), answer
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert b"connection: close" in head.lower()
    assert json.loads(payload) == {
        "error": f"the request body did not arrive within {BODY_TIMEOUT_S} seconds"
    }


@pytest.mark.parametrize("value", [b"abc", b"-1", b"1 2"])
def test_a_malformed_content_length_answers_400_json(served, value):
    _, port = served
    with connect(port) as sock:
        sock.sendall(
            f"POST {ROUTE} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n".encode()
            + b"Content-Length: "
            + value
            + b"\r\n\r\n{}"
        )
        answer = read_until_closed(sock)
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and b"application/json" in head
    assert json.loads(payload) == {"error": "malformed HTTP request"}


def test_bodies_of_millions_of_items_never_hold_up_health_checks(served):
    """Four 29 MB bodies of tiny JSON array items at once: each refused with a 400, and /livez
    answers meanwhile."""
    base_url, _ = served
    items = 29 * 1024 * 1024 // 2
    body = b'{"prompt": "a", "image": "x", "junk": [' + b"0," * (items - 1) + b"0]}"

    def post() -> httpx.Response:
        return httpx.post(
            base_url + ROUTE,
            content=body,
            headers={"content-type": "application/json"},
            timeout=GIVE_UP_S,
        )

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        posts = [pool.submit(post) for _ in range(4)]
        health = []
        while not all(p.done() for p in posts):
            started = time.monotonic()
            assert httpx.get(base_url + "/livez", timeout=GIVE_UP_S).status_code == 200
            health.append(time.monotonic() - started)
            time.sleep(0.1)
        answers = [p.result() for p in posts]
    assert all(a.status_code == 400 and "items" in a.json()["error"] for a in answers)
    print(f"/livez during the bodies: {len(health)} checks, slowest {max(health, default=0):.3f} s")
    assert max(health, default=0) < 10
