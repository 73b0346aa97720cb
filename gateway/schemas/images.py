"""Image inputs of the API: an http(s) URL, a data: URI or bare base64, decoded to RGB.

Every limit comes from settings: the encoded size (`max_image_bytes`, checked before decoding
base64 and while a URL's body streams in) and the pixel count (`max_image_pixels`, checked on
the header, before a single pixel is decoded).
"""

from __future__ import annotations

import asyncio
import base64
import io
import re
import struct
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from gateway.http.errors import ApiError
from gateway.schemas.url_fetch import fetch_image_url
from settings import Settings

# Pillow's format names. Image.open tries only these decoders, so no other parser sees the bytes.
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP")
ACCEPTED_FORMATS_TEXT = "JPEG, PNG, WebP"
# Multi-picture JPEGs, as many phone cameras write them, are JPEGs; we use the first picture.
FORMAT_ALIASES = {"MPO": "JPEG"}
# Anything with a scheme goes to the URL fetcher, which refuses all but http(s) in words.
_URL_PREFIX = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_DATA_URI_PREFIX = "data:"
_BASE64_PADDING = "="
# 16-bit grayscale PNG samples scaled to 8 bits (2**16 / 2**8).
_SIXTEEN_TO_EIGHT_BITS = 1 / 256


@dataclass(frozen=True)
class DecodedImage:
    image: Image.Image  # RGB, EXIF orientation applied, fully loaded (shrunk if asked)
    format: str  # what the caller sent: "JPEG", "PNG" or "WEBP"
    width: int  # as sent, EXIF orientation applied
    height: int


async def load_image(
    value: str, *, field: str, settings: Settings, max_side: int | None = None
) -> DecodedImage:
    """Decode an image given as an http(s) URL, a base64 data: URI or bare base64.

    With `max_side`, the image is also scaled down so its long side is at most that (`shrink`);
    `width` and `height` stay those of the image as sent.

    Raises ApiError naming `field`: 400 for anything malformed or not JPEG/PNG/WebP, 413 for
    an image over `max_image_bytes` or `max_image_pixels`.
    """
    text = value.strip()
    if not text:
        raise ApiError.bad_field(field, f"{field} is empty")
    # Decoding and shrinking a large image take a while: keep them off the event loop, in one
    # trip to a thread (each trip costs the request a little, even for a small image).
    if _URL_PREFIX.match(text):
        data = await fetch_image_url(text, field=field, settings=settings)
        return await asyncio.to_thread(decode_image, data, field, settings, max_side)
    return await asyncio.to_thread(_decode_inline, text, field, settings, max_side)


def _decode_inline(text: str, field: str, settings: Settings, max_side: int | None) -> DecodedImage:
    """A data: URI or bare base64, decoded. Blocking."""
    is_data_uri = text[: len(_DATA_URI_PREFIX)].lower() == _DATA_URI_PREFIX
    encoded = _data_uri_payload(text, field) if is_data_uri else text
    return decode_image(_decode_base64(encoded, field, settings), field, settings, max_side)


# Inputs are kept at most this many times the output's long side: enough detail for the runner's
# own resize, and a 12-megapixel photo does not travel (or sit in the v2 job store) at full size.
INPUT_HEADROOM = 2


def input_side_limit(output_long_side: int) -> int:
    """The longest side an input image is kept at, for an output of `output_long_side`."""
    return INPUT_HEADROOM * output_long_side


def shrink(image: Image.Image, max_side: int) -> Image.Image:
    """`image`, scaled down (aspect kept) so its long side is at most `max_side`; never up."""
    if max(image.size) <= max_side:
        return image
    smaller = image.copy()
    smaller.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return smaller


def decode_image(
    data: bytes, field: str, settings: Settings, max_side: int | None = None
) -> DecodedImage:
    """Decode JPEG, PNG or WebP bytes, scaled down to `max_side` when given. Blocking: async
    code runs it in a thread."""
    if len(data) > settings.max_image_bytes:
        raise _too_large(field, settings)
    try:
        with Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS) as source:
            # Image.open has read only the header: refuse a pixel bomb before decoding it.
            width, height = source.size
            if width * height > settings.max_image_pixels:
                message = (
                    f"{field} is {width}x{height} pixels, more than the limit of "
                    f"{settings.max_image_pixels} pixels"
                )
                raise ApiError.too_large(field, message)
            _check_aspect_ratio(width, height, field, settings)
            fmt = source.format or ""
            image = _to_rgb(ImageOps.exif_transpose(source))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own guard (Image.MAX_IMAGE_PIXELS), left as the process set it; the warning
        # only arrives here as an exception where a warnings filter makes it one.
        raise ApiError.too_large(field, f"{field} has too many pixels") from exc
    except UnidentifiedImageError as exc:
        message = f"{field} is not a valid image; accepted formats: {ACCEPTED_FORMATS_TEXT}"
        raise ApiError.bad_field(field, message) from exc
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        # Truncated or corrupt data: what Pillow's decoders raise for it.
        raise ApiError.bad_field(field, f"{field} is not a valid image") from exc
    return DecodedImage(
        image=image if max_side is None else shrink(image, max_side),
        format=FORMAT_ALIASES.get(fmt, fmt),
        width=image.width,
        height=image.height,
    )


def _check_aspect_ratio(width: int, height: int, field: str, settings: Settings) -> None:
    """A 400 naming `field` and the limit for a sliver of a picture (1000x1): its output or
    depth map would be narrower than the depth and face preprocessors can take."""
    limit = settings.max_aspect_ratio
    if max(width, height) > limit * min(width, height):
        message = (
            f"{field} is {width}x{height} pixels: its aspect ratio is more than the limit of "
            f"{limit:g}:1 (or 1:{limit:g})"
        )
        raise ApiError.bad_field(field, message)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode.startswith("I;16"):
        # A plain convert would clip 16-bit samples at 255 (an all-white image): scale them.
        image = image.point(lambda sample: sample * _SIXTEEN_TO_EIGHT_BITS).convert("L")
    return image.convert("RGB")


def _data_uri_payload(uri: str, field: str) -> str:
    """The base64 text of ``data:[<media type>][;<parameter>];base64,<data>`` (RFC 2397).

    The media type is not checked: the bytes themselves decide the format.
    """
    header, comma, payload = uri[len(_DATA_URI_PREFIX) :].partition(",")
    if not comma:
        raise ApiError.bad_field(field, f"{field} is not a valid data URI")
    parameters = [part.strip().lower() for part in header.split(";")[1:]]
    if not parameters or parameters[-1] != "base64":
        message = f"{field} must be a base64 data URI, like data:image/png;base64,..."
        raise ApiError.bad_field(field, message)
    return payload


def _decode_base64(text: str, field: str, settings: Settings) -> bytes:
    compact = "".join(text.split())  # pasted base64 often carries line breaks
    # The decoded size follows from the length: refuse a huge string before decoding it.
    decoded_size = len(compact) * 3 // 4 - compact[-2:].count(_BASE64_PADDING)
    if decoded_size > settings.max_image_bytes:
        raise _too_large(field, settings)
    try:
        return _b64decode_in_slices(compact)
    except ValueError:  # binascii.Error, or a non-ASCII character
        message = f"{field} is not valid base64; send an http(s) URL, a data: URI or base64"
        raise ApiError.bad_field(field, message) from None


# binascii holds the GIL for all of one call: a 10 MB image decoded at once holds every other
# request's event loop for ~30 ms (it runs in a thread, but the loop needs the GIL too). Decoded
# in slices of this many characters (a multiple of 4), the loop runs between them.
BASE64_SLICE_CHARS = 1 << 20


def _b64decode_in_slices(compact: str) -> bytes:
    """`base64.b64decode(compact, validate=True)`, a slice at a time."""
    if len(compact) <= BASE64_SLICE_CHARS:
        return base64.b64decode(compact, validate=True)
    # Padding belongs at the very end: a slice ending in it would decode on its own.
    if compact.find(_BASE64_PADDING, 0, len(compact) - 2) != -1:
        raise ValueError("padding before the end")
    return b"".join(
        base64.b64decode(compact[start : start + BASE64_SLICE_CHARS], validate=True)
        for start in range(0, len(compact), BASE64_SLICE_CHARS)
    )


def _too_large(field: str, settings: Settings) -> ApiError:
    message = f"{field} is larger than the limit of {settings.max_image_bytes} bytes"
    return ApiError.too_large(field, message)
