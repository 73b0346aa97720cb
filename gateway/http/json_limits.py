"""Limits on the shape of a JSON body, checked before any route parses it.

The body size limit (middleware) bounds the bytes; these bound what a body can make the server
do: more than `max_json_items` items (millions of tiny array items take seconds to parse and
walk), objects and arrays nested deeper than `max_json_depth` (each level costs a recursion in
the parser and in validation), and strings longer than `max_string_chars` (a prompt of
megabytes would go through the prompt filter and the tokenizers). Strings must also be valid
Unicode: a lone UTF-16 surrogate is refused naming its field. Image fields are exempt from the
string limit: they carry base64 of images up to `max_image_bytes`, and that limit (413, in
gateway/schemas/images.py) is theirs.
"""

from __future__ import annotations

import json
from typing import Any

from gateway.http.errors import ApiError
from gateway.schemas.registry import MODEL_SPECS
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


class NotJson(ApiError):
    """The body is not JSON at all (the middleware adds what it was sent as)."""

    def __init__(self, detail: str) -> None:
        super().__init__(400, f"malformed JSON body: {detail}")


def check_json_body(raw: bytes, settings: Settings) -> Any:
    """The parsed body; the contract's 400 when `raw` is not JSON, or is JSON with too many
    items, nested too deeply, or holding a string (value or key) that is too long or not valid
    Unicode."""
    # Every item after an array's or object's first follows a comma, so the commas bound the
    # items; counted before parsing (fast), so a body of millions of tiny items ([0,0,...]) is
    # refused at once instead of being parsed and walked for seconds. Commas inside strings
    # count too: the limit leaves room for prompts of commas.
    if _commas(raw) >= settings.max_json_items:
        raise ApiError(
            400, f"the JSON body holds more than the limit of {settings.max_json_items} items"
        )
    try:
        data = json.loads(raw)
    except RecursionError:
        # Deeper than the parser can go: certainly deeper than the limit.
        raise _too_deep(settings.max_json_depth) from None
    except json.JSONDecodeError as exc:
        raise NotJson(str(exc)) from None
    except UnicodeDecodeError:
        raise NotJson("it is not UTF-8 text") from None
    except ValueError:  # what else json.loads raises: int() refusing thousands of digits
        raise NotJson("a number has too many digits") from None
    _check(data, (), 0, settings)
    return data


# bytes.count holds the GIL for all of one call (~8 ms for 20 MB): counted in slices, the event
# loop (this runs in a thread for a large body) gets the GIL between them.
COUNT_SLICE_BYTES = 1 << 20


def _commas(raw: bytes) -> int:
    return sum(
        raw.count(b",", start, start + COUNT_SLICE_BYTES)
        for start in range(0, len(raw), COUNT_SLICE_BYTES)
    )


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
            if isinstance(key, str) and _lone_surrogate(key) is not None:
                raise ApiError(400, "a JSON key is not valid Unicode text: " + _SURROGATE_HINT)
            _check(item, (*path, str(key)), depth, settings)
    elif isinstance(value, str):
        field = ".".join(path) or "body"
        surrogate = _lone_surrogate(value)
        if surrogate is not None:
            message = (
                f"{field} is not valid Unicode text: it holds a lone UTF-16 surrogate "
                f"(U+{ord(surrogate):04X}); " + _SURROGATE_HINT
            )
            raise ApiError.bad_field(field, message)
        if len(value) > settings.max_string_chars:
            if len(path) == 1 and path[0] in IMAGE_FIELDS:
                return
            message = f"{field} is longer than the limit of {settings.max_string_chars} characters"
            raise ApiError.bad_field(field, message)


# JSON may escape half of a UTF-16 pair alone ("\ud800"), which Python's parser accepts and
# no tokenizer, encoder or URL can take: refused, never cleaned, so what runs is what was sent.
_SURROGATE_HINT = "send each surrogate pair whole (or the character itself, as UTF-8)"


def _lone_surrogate(text: str) -> str | None:
    """The first lone surrogate in `text`, if any (the parser joins the pairs it sees)."""
    if text.isascii():  # the common case, and fast for megabytes of base64
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return text[exc.start]
    return None


def _too_deep(limit: int) -> ApiError:
    return ApiError(400, f"the JSON body is nested deeper than the limit of {limit} levels")
