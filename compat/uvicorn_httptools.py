"""Patch: bounds uvicorn (the HTTP server under every BentoML service) does not set by itself.

- A request head (request line and headers) must arrive whole within `head_timeout_s` of the
  connection opening, or of the previous answer on it; else the connection is closed. uvicorn
  closes a connection idle after an answer (its keep-alive timeout, 5 s), but not one that never
  sends a byte, nor one that stops half-way through its headers: each would hold a socket and a
  file descriptor for ever.
- The 400 uvicorn answers itself for a request its parser refuses (`Content-Length: abc`)
  carries the contract's JSON body instead of plain text.

The request body's own deadline is the middleware's (gateway/http/middleware.py), where the body
is read.

What it relies on (uvicorn==0.55.0): the protocol class uvicorn serves HTTP/1.1 with when
httptools is installed (a dependency, pyproject.toml) is `HttpToolsProtocol`: BentoML's worker
builds `uvicorn.Config` with the default `http="auto"`. `install` wraps that class's
`connection_made`, `connection_lost`, `on_headers_complete` (the parser's callback once a head is
whole) and `on_response_complete`, and replaces `send_400_response(msg)`, which uvicorn calls
when httptools refuses the bytes; it reads the protocol's `loop`, `transport`, `cycle` and
`server_state.default_headers`. It runs in the process that imports service.py, before uvicorn
serves.

Supported ways checked: uvicorn's options bound the idle time after an answer
(`timeout_keep_alive`) and, for h11 only, a head's size (`h11_max_incomplete_event_size`), not
the time a head takes; its own 400 is written before any ASGI app or middleware sees the
request. uvicorn's `http` option takes a protocol class of one's own, but BentoML's worker does
not pass it on (it builds `uvicorn.Config` with fixed arguments).
"""

from __future__ import annotations

import asyncio
import logging

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

logger = logging.getLogger(__name__)

CHECKED_WITH = ("uvicorn", "0.55.0")
_TIMER = "_depthid_head_timer"
_GUARDED = "_depthid_guarded"


def install(
    head_timeout_s: float,
    bad_request_body: bytes,
    protocol: type[HttpToolsProtocol] = HttpToolsProtocol,
) -> None:
    """Patch `protocol` (uvicorn's httptools protocol; a test passes a subclass of it) once:
    heads must arrive within `head_timeout_s`, and uvicorn's own 400 answers the JSON
    `bad_request_body`."""
    if _GUARDED in vars(protocol):
        return
    connection_made = protocol.connection_made
    connection_lost = protocol.connection_lost
    on_headers_complete = protocol.on_headers_complete
    on_response_complete = protocol.on_response_complete

    def arm(self: HttpToolsProtocol) -> None:
        disarm(self)
        timer = self.loop.call_later(head_timeout_s, _head_timed_out, self)
        setattr(self, _TIMER, timer)

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

    def send_json_400(self: HttpToolsProtocol, msg: str) -> None:
        """uvicorn's own 400 (a request its parser refuses), with the contract's body."""
        logger.info("refused a malformed HTTP request: %s", msg)
        content = [STATUS_LINE[400]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend(
            [
                b"content-type: application/json\r\n",
                b"content-length: " + str(len(bad_request_body)).encode("ascii") + b"\r\n",
                b"connection: close\r\n",
                b"\r\n",
                bad_request_body,
            ]
        )
        self.transport.write(b"".join(content))
        self.transport.close()

    protocol.connection_made = guarded_connection_made
    protocol.connection_lost = guarded_connection_lost
    protocol.on_headers_complete = guarded_on_headers_complete
    protocol.on_response_complete = guarded_on_response_complete
    protocol.send_400_response = send_json_400
    setattr(protocol, _GUARDED, True)


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
