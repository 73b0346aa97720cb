"""Bounds uvicorn (the HTTP server under every BentoML service) does not set by itself.

- A request head (request line and headers) must arrive whole within
  `request_head_timeout_s` of the connection opening, or of the previous answer on it; else
  the connection is closed. uvicorn closes a connection idle after an answer (its keep-alive
  timeout, 5 s), but not one that never sends a byte, nor one that stops half-way through its
  headers: each would hold a socket and a file descriptor for ever.
- The 400 uvicorn answers itself for a request its parser refuses (`Content-Length: abc`)
  carries the contract's JSON body instead of plain text.

The request body's own deadline is the middleware's (gateway/http/middleware.py), where the body is
read. Both run on uvicorn's httptools protocol, the one used whenever httptools is installed (a
dependency, pyproject.toml); `install` patches that class's connection hooks, in the process
that imports service.py, before uvicorn serves.
"""

from __future__ import annotations

import asyncio
import json
import logging

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

logger = logging.getLogger(__name__)

MALFORMED_REQUEST = json.dumps({"error": "malformed HTTP request"}).encode()
_TIMER = "_depthid_head_timer"


def install(head_timeout_s: float) -> None:
    """Patch uvicorn's httptools protocol (once per process)."""
    if getattr(HttpToolsProtocol, "_depthid_guarded", False):
        return
    connection_made = HttpToolsProtocol.connection_made
    connection_lost = HttpToolsProtocol.connection_lost
    on_headers_complete = HttpToolsProtocol.on_headers_complete
    on_response_complete = HttpToolsProtocol.on_response_complete

    def arm(protocol: HttpToolsProtocol) -> None:
        disarm(protocol)
        timer = protocol.loop.call_later(head_timeout_s, _head_timed_out, protocol)
        setattr(protocol, _TIMER, timer)

    def guarded_connection_made(self: HttpToolsProtocol, transport: asyncio.Transport) -> None:
        connection_made(self, transport)
        arm(self)

    def guarded_on_headers_complete(self: HttpToolsProtocol) -> None:
        disarm(self)
        on_headers_complete(self)

    def guarded_on_response_complete(self: HttpToolsProtocol) -> None:
        on_response_complete(self)
        if not self.transport.is_closing():
            arm(self)  # the next request's head has the same time to arrive

    def guarded_connection_lost(self: HttpToolsProtocol, exc: Exception | None) -> None:
        disarm(self)
        connection_lost(self, exc)

    HttpToolsProtocol.connection_made = guarded_connection_made
    HttpToolsProtocol.connection_lost = guarded_connection_lost
    HttpToolsProtocol.on_headers_complete = guarded_on_headers_complete
    HttpToolsProtocol.on_response_complete = guarded_on_response_complete
    HttpToolsProtocol.send_400_response = _send_json_400
    HttpToolsProtocol._depthid_guarded = True


def disarm(protocol: HttpToolsProtocol) -> None:
    timer = getattr(protocol, _TIMER, None)
    if timer is not None:
        timer.cancel()
        setattr(protocol, _TIMER, None)


def _head_timed_out(protocol: HttpToolsProtocol) -> None:
    cycle = protocol.cycle
    if cycle is not None and not cycle.response_complete:
        return  # a request whose head arrived (pipelined) is being answered
    if not protocol.transport.is_closing():
        logger.info("closing a connection whose request head did not arrive in time")
        protocol.transport.close()


def _send_json_400(self: HttpToolsProtocol, msg: str) -> None:
    """uvicorn's own 400 (a request its parser refuses), with the contract's body."""
    logger.info("refused a malformed HTTP request: %s", msg)
    content = [STATUS_LINE[400]]
    for name, value in self.server_state.default_headers:
        content.extend([name, b": ", value, b"\r\n"])
    content.extend(
        [
            b"content-type: application/json\r\n",
            b"content-length: " + str(len(MALFORMED_REQUEST)).encode("ascii") + b"\r\n",
            b"connection: close\r\n",
            b"\r\n",
            MALFORMED_REQUEST,
        ]
    )
    self.transport.write(b"".join(content))
    self.transport.close()
