"""The exception the gateway answers as ``{"error": ..., "details": [...]}`` with its status."""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

# The body of the 400 uvicorn answers itself, before any app, for a request its parser refuses
# (compat/uvicorn_httptools.py).
MALFORMED_REQUEST = json.dumps({"error": "malformed HTTP request"}).encode()


class ApiError(Exception):
    """An error for the client: `message` is shown to a person, so it never holds internals."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        details: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = int(status)
        self.message = message
        self.details = details
        self.headers = headers

    def body(self) -> dict[str, object]:
        body: dict[str, object] = {"error": self.message}
        if self.details:
            body["details"] = self.details
        return body

    @classmethod
    def bad_field(cls, field: str, message: str) -> ApiError:
        """A 400 about one request field; `message` is the whole sentence and names the field."""
        return cls(HTTPStatus.BAD_REQUEST, message, details=[{"field": field, "message": message}])

    @classmethod
    def too_large(cls, field: str, message: str) -> ApiError:
        """A 413 about one request field; `message` is the whole sentence and names the field."""
        return cls(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            message,
            details=[{"field": field, "message": message}],
        )


def validation_to_api_error(errors: Any) -> ApiError:
    """FastAPI/pydantic validation errors as the contract's 400: the first problem in words,
    every problem in `details` as {"field", "message"}."""
    details = []
    for error in errors:
        loc = [str(part) for part in error.get("loc", ()) if part != "body"]
        kind = error.get("type", "")
        if kind == "json_invalid":
            return ApiError(400, f"malformed JSON body: {error.get('ctx', {}).get('error', '')}")
        if not loc:
            if kind == "missing":
                return ApiError(400, "a JSON object body is required")
            return ApiError(400, "the request body must be a JSON object")
        details.append({"field": ".".join(loc), "message": error.get("msg", "invalid value")})
    first = details[0]
    more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
    return ApiError(
        400, f"invalid field '{first['field']}': {first['message']}{more}", details=details
    )
