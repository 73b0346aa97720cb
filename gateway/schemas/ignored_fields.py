"""Fields of a request body that the model does not take: still 200, as the hosted API answers,
but named in the `x-ignored-fields` header (and in the v2 submit answer), so a misspelt field
(`num_steps` for `num_inference_steps`) does not pass silently with the default in its place.

The middleware parses every JSON body once (gateway/http/parsed_body.py); the routes compare its
top-level field names with their schema here.
"""

from __future__ import annotations

from urllib.parse import quote

from fastapi import Request
from pydantic import BaseModel

from gateway.http.parsed_body import parsed_body

HEADER = "x-ignored-fields"
# The header names fields up to this length, then says how many more there are: a body may
# hold thousands of unknown fields, and a header line must stay short.
MAX_HEADER_CHARS = 1024


def ignored_fields(request: Request, schema: type[BaseModel]) -> list[str]:
    """The body's top-level fields that `schema` does not have, in the body's order."""
    body = parsed_body(request)
    fields = list(body) if isinstance(body, dict) else []
    return [name for name in fields if name not in schema.model_fields]


def ignored_fields_headers(names: list[str]) -> dict[str, str]:
    """`{"x-ignored-fields": "num_steps,colour"}`, or nothing when no field was ignored. Each name
    is percent-encoded UTF-8 (header values must be latin-1, and a name is any Unicode; a comma
    in a name is %2C), so the list splits on commas and `urllib.parse.unquote` decodes each."""
    if not names:
        return {}
    encoded = [quote(name, safe="") for name in names]
    value = ""
    for count, name in enumerate(encoded):
        candidate = f"{value},{name}" if value else name
        if len(candidate) > MAX_HEADER_CHARS:
            more = f"+{len(encoded) - count} more"
            return {HEADER: f"{value},{more}" if value else more}
        value = candidate
    return {HEADER: value}
