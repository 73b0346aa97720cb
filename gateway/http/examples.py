"""The pictures of the /docs examples (each model's `example` in its schema module, e.g.
gateway/schemas/flux_depth.py).

They are the small ones shipped with the load test (loadtests/payloads/, also in the Bento): a
plain scene for the depth models, and synthetic faces (a bright disc with eyes and a mouth) that
the `tiny` profile's face detector finds. A real face detector (`full`) finds no face in those:
the docs say to put a photo in the face models' image fields there.
"""

from __future__ import annotations

import base64
import functools

from settings import PROJECT_ROOT

PAYLOADS = PROJECT_ROOT / "loadtests" / "payloads"
MEDIA_TYPES = {".jpg": "image/jpeg", ".png": "image/png"}


@functools.cache
def picture(name: str) -> str:
    """loadtests/payloads/`name` as a data: URI. OSError when it is not there (an install
    without loadtests/payloads/): /docs then goes without examples (gateway/http/openapi.py)."""
    path = PAYLOADS / name
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f"data:{MEDIA_TYPES[path.suffix]};base64,{data}"
