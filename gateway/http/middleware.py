"""ASGI middleware for every route of the API: request ids (header, logs), the body limits, the
request metrics, and a last line of defence that turns any unexpected exception into the
contract's 500 body. And one for the BentoML service around the app: JSON bodies for the few
errors BentoML answers itself."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import re
import time
import uuid
from http import HTTPStatus

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import metrics
from gateway.http.errors import ApiError
from gateway.http.json_limits import NotJson, check_json_body
from gateway.http.parsed_body import STATE_KEY as PARSED_BODY_KEY
from gateway.schemas.registry import MODEL_SPECS
from log_format import request_id_var
from settings import Settings

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"
# A caller's own request id is kept when it is short and harmless to echo and log.
_CALLER_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# Methods whose body the routes read: it is read here first, whole, and checked as JSON (every
# body this API takes is a JSON object).
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
API_ROUTES = ("v1", "v2")
# Bodies larger than this are checked in a thread; a small one costs less than the hop there.
OFF_LOOP_BODY_BYTES = 64 * 1024
# One thread parses every large body, one after another: json.loads holds the GIL for all of a
# parse (~40 ms for 20 MB), so parses in several threads gain nothing, and take the GIL from
# the event loop back to back; one at a time, the loop gets it between two.
_PARSER = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="json-parse")


def request_id_from(scope: Scope) -> str:
    for name, value in scope.get("headers", []):
        if name == REQUEST_ID_HEADER.encode():
            candidate = value.decode("latin-1")
            if _CALLER_ID.match(candidate):
                return candidate
    return uuid.uuid4().hex


def metric_labels(path: str) -> tuple[str, str]:
    """(model, route) of a request path, from fixed sets only, so that no caller can grow the
    metrics' label values: route "v1", "v2" or "other"; model a served model's name or ""."""
    parts = path.strip("/").split("/")
    route = parts[0] if parts[0] in API_ROUTES else "other"
    if route != "other" and len(parts) > 1 and parts[1] in MODEL_SPECS:
        return parts[1], route
    return "", route


class _ClientGone(Exception):
    """The client disconnected before its body arrived: there is no one to answer."""


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        # Every log line written while this request is handled names it (log_format.py).
        token = request_id_var.set(request_id)
        started_at = time.perf_counter()
        status: int | None = None  # of the answer, once it starts

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k != b"x-request-id"]
                headers.append((REQUEST_ID_HEADER.encode(), request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            self._check_declared_length(scope)
            if scope["method"] in BODY_METHODS:
                body = await self._read_body(receive)
                if body:
                    await self._check_json(scope, body)
                receive = _replay(body, receive)
            await self.app(scope, receive, send_with_id)
        except _ClientGone:
            pass
        except ApiError as exc:
            if status is None:
                await _send_json(send_with_id, exc.status, exc.body(), exc.headers)
        except Exception:
            logger.exception("internal error (request id %s)", request_id)
            if status is None:
                body = {"error": f"internal server error (request id {request_id})"}
                await _send_json(send_with_id, 500, body, None)
        finally:
            if status is not None:
                model, route = metric_labels(scope["path"])
                metrics.observe_request(model, route, status, time.perf_counter() - started_at)
            request_id_var.reset(token)

    async def _check_json(self, scope: Scope, body: bytes) -> None:
        """Every body this API takes is a JSON object: check it (gateway/http/json_limits.py),
        keep what it parsed to for the routes, which never parse it again
        (gateway/http/parsed_body.py), and let FastAPI read it as JSON whatever Content-Type it
        came with (`curl -d` sends a form's)."""
        content_type = _content_type(scope)
        try:
            if len(body) > OFF_LOOP_BODY_BYTES:
                # Parsing megabytes takes a while: not on the loop that answers /livez.
                loop = asyncio.get_running_loop()
                data = await loop.run_in_executor(_PARSER, check_json_body, body, self.settings)
            else:
                data = check_json_body(body, self.settings)
        except NotJson as exc:
            exc.message += f". This API takes a JSON object, {JSON_EXAMPLE}"
            if not _is_json(content_type):
                exc.message += f"; this body was sent as {content_type or 'no Content-Type'}"
            raise
        scope["state"][PARSED_BODY_KEY] = data
        if not _is_json(content_type):
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            scope["headers"] = [*headers, (b"content-type", b"application/json")]

    def _check_declared_length(self, scope: Scope) -> None:
        limit = self.settings.max_body_bytes
        for name, value in scope.get("headers", []):
            if name != b"content-length":
                continue
            if not value.strip().isdigit():
                raise ApiError(400, "malformed Content-Length header: it must be a whole number")
            if int(value) > limit:
                raise _too_large(limit)

    async def _read_body(self, receive: Receive) -> bytes:
        """The whole body, counted as it streams in: a missing or false Content-Length cannot
        bypass the limit; and timed: a body trickling in (a byte every few seconds) is cut off
        at `request_body_timeout_s` with a 408, the connection closed."""
        timeout = self.settings.request_body_timeout_s
        try:
            async with asyncio.timeout(timeout):
                return await self._read_whole_body(receive)
        except TimeoutError:
            message = f"the request body did not arrive within {timeout:g} seconds"
            raise ApiError(408, message, headers={"Connection": "close"}) from None

    async def _read_whole_body(self, receive: Receive) -> bytes:
        limit = self.settings.max_body_bytes
        chunks, received = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > limit:
                raise _too_large(limit)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


JSON_EXAMPLE = '{"prompt": "a house", ...}'


def _content_type(scope: Scope) -> str:
    for name, value in scope.get("headers", []):
        if name == b"content-type":
            return value.decode("latin-1")
    return ""


def _is_json(content_type: str) -> bool:
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or media_type.endswith("+json")


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands the app the body already read, then waits on the real one (which
    reports a disconnect)."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class JsonErrorBodies:
    """On the BentoML service (service.py), around its router and our app: an error answer
    that is not JSON, so not ours (BentoML's plain-text 404 for a path its router cannot match,
    such as one holding a newline), gets the contract's body instead; its status and other
    headers are kept."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        replaced = False

        async def send_json_errors(message: Message) -> None:
            nonlocal replaced
            if message["type"] == "http.response.start":
                status, headers = message["status"], dict(message.get("headers", []))
                if status >= 400 and not headers.get(b"content-type", b"").startswith(
                    b"application/json"
                ):
                    replaced = True
                    kept = {
                        name.decode("latin-1"): value.decode("latin-1")
                        for name, value in headers.items()
                        if name not in (b"content-type", b"content-length")
                    }
                    body = {"error": HTTPStatus(status).phrase}
                    await _send_json(send, status, body, kept)
                    return
            elif replaced:
                return  # the plain-text body, replaced above
            await send(message)

        await self.app(scope, receive, send_json_errors)


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
