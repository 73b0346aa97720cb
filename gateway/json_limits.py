"""Limits on the shape of a JSON body, checked before any route parses it.

The body size limit (middleware) bounds the bytes; these bound what a body can make the server
do: objects and arrays nested deeper than `max_json_depth` (each level costs a recursion in the
parser and in validation), and strings longer than `max_string_chars` (a prompt of megabytes
would go through the prompt filter and the tokenizers). Image fields are exempt from the string
limit: they carry base64 of images up to `max_image_bytes`, and that limit (413, in
gateway/images.py) is theirs.
"""

from __future__ import annotations

import json
from typing import Any

from gateway.errors import ApiError
from gateway.model_specs import MODEL_SPECS
from settings import Settings

# The top-level fields that hold images (an http(s) URL, a data: URI or base64): every request
# field whose name ends in "image" (image, face_image, pose_image, control_image), as the
# hosted API names them.
IMAGE_FIELDS = frozenset(
    name
    for spec in MODEL_SPECS.values()
    for name in spec.request.model_fields
    if name.endswith("image")
)


def check_json_body(raw: bytes, settings: Settings) -> None:
    """Raise the contract's 400 when `raw` is not JSON, or is JSON nested too deeply or holding
    a string (value or key) that is too long."""
    try:
        data = json.loads(raw)
    except RecursionError:
        # Deeper than the parser can go: certainly deeper than the limit.
        raise _too_deep(settings.max_json_depth) from None
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"malformed JSON body: {exc}") from None
    except UnicodeDecodeError:
        raise ApiError(400, "malformed JSON body: it is not UTF-8 text") from None
    except ValueError:  # what else json.loads raises: int() refusing thousands of digits
        raise ApiError(400, "malformed JSON body: a number has too many digits") from None
    _check(data, (), 0, settings)


def _check(value: Any, path: tuple[str, ...], depth: int, settings: Settings) -> None:
    if isinstance(value, dict | list):
        depth += 1
        if depth > settings.max_json_depth:
            raise _too_deep(settings.max_json_depth)
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            if isinstance(key, str) and len(key) > settings.max_string_chars:
                limit = settings.max_string_chars
                raise ApiError(400, f"a JSON key is longer than the limit of {limit} characters")
            _check(item, (*path, str(key)), depth, settings)
    elif isinstance(value, str) and len(value) > settings.max_string_chars:
        if len(path) == 1 and path[0] in IMAGE_FIELDS:
            return
        field = ".".join(path) or "body"
        message = f"{field} is longer than the limit of {settings.max_string_chars} characters"
        raise ApiError.bad_field(field, message)


def _too_deep(limit: int) -> ApiError:
    return ApiError(400, f"the JSON body is nested deeper than the limit of {limit} levels")
