"""Each request body is parsed once: the middleware parses the JSON (off the event loop when it
is large: gateway/http/middleware.py) and leaves it in the request's state; the generation
routes hand FastAPI that object to validate instead of parsing the bytes again.

FastAPI's documented hook for this, a custom `APIRoute` class whose handler receives a custom
`Request` (https://fastapi.tiangolo.com/how-to/custom-request-and-route/): `ParsedJsonRequest`
answers `json()` from the state. A request the middleware did not parse (no body) reads as
Starlette does.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

# Where the middleware leaves the parsed body in the request's state.
STATE_KEY = "json_body"


class ParsedJsonRequest(Request):
    async def json(self) -> Any:
        state = self.scope.get("state", {})
        if STATE_KEY in state:
            return state[STATE_KEY]
        return await super().json()


class ParsedBodyRoute(APIRoute):
    """A route whose body FastAPI validates from the JSON the middleware parsed."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def parsed_body_handler(request: Request) -> Response:
            return await handler(ParsedJsonRequest(request.scope, request.receive))

        return parsed_body_handler


def parsed_body(request: Request) -> Any:
    """The body as the middleware parsed it (None when there was none)."""
    return request.scope.get("state", {}).get(STATE_KEY)
