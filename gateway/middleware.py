"""ASGI middleware for every route of the API: request ids, the body size limit, and a last
line of defence that turns any unexpected exception into the contract's 500 body."""

from __future__ import annotations

import json
import logging
import re
import uuid

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import ApiError

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"
# A caller's own request id is kept when it is short and harmless to echo and log.
_CALLER_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def request_id_from(scope: Scope) -> str:
    for name, value in scope.get("headers", []):
        if name == REQUEST_ID_HEADER.encode():
            candidate = value.decode("latin-1")
            if _CALLER_ID.match(candidate):
                return candidate
    return uuid.uuid4().hex


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = [(k, v) for k, v in message.get("headers", []) if k != b"x-request-id"]
                headers.append((REQUEST_ID_HEADER.encode(), request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            self._check_declared_length(scope)
            await self.app(scope, self._limited(receive), send_with_id)
        except ApiError as exc:
            if not started:
                await _send_json(send_with_id, exc.status, exc.body(), exc.headers)
        except Exception:
            logger.exception("internal error (request id %s)", request_id)
            if not started:
                body = {"error": f"internal server error (request id {request_id})"}
                await _send_json(send_with_id, 500, body, None)

    def _check_declared_length(self, scope: Scope) -> None:
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_body_bytes:
                raise _too_large(self.max_body_bytes)

    def _limited(self, receive: Receive) -> Receive:
        """Count the body as it streams in: a missing or false Content-Length cannot bypass it."""
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    # An HTTPException, because FastAPI turns any other error raised while it
                    # reads the body into a generic 400; the app's handler renders this one.
                    raise HTTPException(413, _too_large(self.max_body_bytes).message)
            return message

        return limited_receive


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"request body is larger than the limit of {limit} bytes")


async def _send_json(send: Send, status: int, body: dict, headers: dict[str, str] | None) -> None:
    payload = json.dumps(body).encode()
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
    ]
    raw_headers += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": payload})
