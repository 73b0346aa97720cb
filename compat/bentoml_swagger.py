"""Private read: the Swagger UI assets BentoML ships, which the Gateway serves at /docs/assets.

Serving them ourselves lets /docs render with no CDN (gateway/app.py). Nothing is patched: this
is the folder, inside BentoML's private `bentoml._internal.server` package, that BentoML's own
docs page is served from.

What it relies on (bentoml==1.4.39): the folder `static_content/` of the package
`bentoml._internal.server`, holding `swagger-ui-bundle.js` and `swagger-ui.css`.

Supported ways checked: FastAPI's Swagger page loads the same files from a CDN by default (not
offline); BentoML serves the folder at `/static_content` for its own index page, a route it does
not document and drops with its `new_index` feature, and names no public path for it.
"""

from __future__ import annotations

from pathlib import Path

from bentoml._internal import server as bentoml_server

CHECKED_WITH = ("bentoml", "1.4.39")
SWAGGER_ASSETS = Path(bentoml_server.__file__).parent / "static_content"
