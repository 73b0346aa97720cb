"""compat/uvicorn_httptools.py against the installed uvicorn and BentoML: the protocol class the
patch wraps is the one BentoML's servers use, and on it a head that does not arrive in time
closes the connection while a malformed request gets the JSON 400. The protocol runs on a test
event loop with a fake transport: no socket, no server."""

from __future__ import annotations

import asyncio
import inspect
import json
import re
from collections.abc import Iterator

import pytest
import uvicorn
from _bentoml_impl.worker import service as bentoml_worker
from uvicorn.protocols.http import auto
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from compat import uvicorn_httptools
from gateway.http.errors import MALFORMED_REQUEST

PATCH = "compat/uvicorn_httptools.py"
HEAD_TIMEOUT_S = 0.2
# A timer due before the end of a wait has fired by then, however busy the machine: the loop
# runs its due timers in order.
WELL_PAST = 3 * HEAD_TIMEOUT_S
# The protocol's methods the patch wraps or replaces, with the parameters it calls them with.
PATCHED = {
    "connection_made": ["self", "transport"],
    "connection_lost": ["self", "exc"],
    "on_headers_complete": ["self"],
    "on_response_complete": ["self"],
    "send_400_response": ["self", "msg"],
}


class FakeTransport(asyncio.Transport):
    """What the protocol writes, and whether it closed the connection."""

    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closed = False

    def get_extra_info(self, name: str, default: object = None) -> object:
        addresses = {"peername": ("127.0.0.1", 5000), "sockname": ("127.0.0.1", 3000)}
        return addresses.get(name, default)

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def slow_app(scope: dict, receive, send) -> None:
    """Answers 200 after twice the head timeout: a request being answered is never cut off."""
    await asyncio.sleep(2 * HEAD_TIMEOUT_S)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture
def connection(loop: asyncio.AbstractEventLoop) -> tuple[HttpToolsProtocol, FakeTransport]:
    """A connection on uvicorn's httptools protocol, patched (a subclass: the real class stays
    as it is in this process), just opened."""

    class Patched(HttpToolsProtocol):
        pass

    uvicorn_httptools.install(HEAD_TIMEOUT_S, MALFORMED_REQUEST, protocol=Patched)
    config = uvicorn.Config(app=slow_app, log_config=None, lifespan="off")
    protocol = Patched(config=config, server_state=ServerState(), app_state={}, _loop=loop)
    transport = FakeTransport()
    protocol.connection_made(transport)
    return protocol, transport


def run(loop: asyncio.AbstractEventLoop, seconds: float) -> None:
    loop.run_until_complete(asyncio.sleep(seconds))


def run_until_written(loop: asyncio.AbstractEventLoop, transport: FakeTransport) -> None:
    async def written() -> None:
        while not transport.written:
            await asyncio.sleep(0.01)

    loop.run_until_complete(asyncio.wait_for(written(), timeout=30))


def test_the_methods_the_patch_wraps_are_there_as_it_calls_them() -> None:
    for name, parameters in PATCHED.items():
        method = getattr(HttpToolsProtocol, name, None)
        assert method is not None, f"{PATCH}: uvicorn's HttpToolsProtocol has no {name} any more"
        found = list(inspect.signature(method).parameters)
        assert found == parameters, f"{PATCH}: HttpToolsProtocol.{name} now takes {found}"


def test_bentoml_serves_with_the_httptools_protocol() -> None:
    assert auto.AutoHTTPProtocol is HttpToolsProtocol, (
        f"{PATCH}: uvicorn's automatic choice is {auto.AutoHTTPProtocol}, not the patched "
        "HttpToolsProtocol (is httptools installed?)"
    )
    assert inspect.signature(uvicorn.Config).parameters["http"].default == "auto"
    source = inspect.getsource(bentoml_worker.main.callback)
    config_call = re.search(r"uvicorn\.Config\((.*?)\n    \)", source, re.DOTALL)
    assert config_call is not None and "http=" not in config_call.group(1), (
        f"{PATCH}: BentoML's worker no longer builds uvicorn.Config with the default protocol"
    )


def test_a_connection_that_sends_nothing_is_closed(loop, connection) -> None:
    _, transport = connection
    run(loop, WELL_PAST)
    assert transport.closed, f"{PATCH}: no head timer on a new connection"


def test_a_half_sent_head_is_cut_off(loop, connection) -> None:
    protocol, transport = connection
    protocol.data_received(b"GET /livez HTTP/1.1\r\nHost: x\r\n")
    run(loop, WELL_PAST)
    assert transport.closed, f"{PATCH}: a half-sent head kept its connection open"


def test_a_request_being_answered_is_not_cut_off_and_the_next_head_is_timed(
    loop, connection
) -> None:
    protocol, transport = connection
    protocol.data_received(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
    run_until_written(loop, transport)  # twice the head timeout
    assert transport.written.startswith(b"HTTP/1.1 200")
    assert not transport.closed, f"{PATCH}: a request was cut off while it was answered"
    run(loop, WELL_PAST)
    assert transport.closed, f"{PATCH}: no head timer for the next request after an answer"


def test_a_malformed_request_gets_the_json_400(loop, connection) -> None:
    protocol, transport = connection
    protocol.data_received(b"POST /v1/x HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n")
    head, _, body = transport.written.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), f"{PATCH}: {transport.written!r}"
    assert b"content-type: application/json" in head, f"{PATCH}: uvicorn's 400 is not ours"
    assert json.loads(body) == {"error": "malformed HTTP request"}
    assert transport.closed


def test_a_lost_connection_stops_its_timer(loop, connection) -> None:
    protocol, transport = connection
    protocol.connection_lost(None)
    transport.closed = False  # uvicorn closes it on a clean loss: forget that
    run(loop, WELL_PAST)
    assert not transport.closed, f"{PATCH}: the head timer outlived its connection"
