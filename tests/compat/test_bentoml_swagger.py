"""compat/bentoml_swagger.py against the installed BentoML: the Swagger UI files /docs loads are
in the folder we serve."""

from __future__ import annotations

from compat.bentoml_swagger import SWAGGER_ASSETS

PATCH = "compat/bentoml_swagger.py"


def test_the_swagger_assets_are_where_we_serve_them_from() -> None:
    # The two files gateway/app.py's /docs page loads from /docs/assets.
    for name in ("swagger-ui-bundle.js", "swagger-ui.css"):
        asset = SWAGGER_ASSETS / name
        assert asset.is_file() and asset.stat().st_size > 0, (
            f"{PATCH}: BentoML no longer ships {name} in {SWAGGER_ASSETS}"
        )
