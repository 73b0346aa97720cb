"""The OpenAPI document, held to the contract: every error answer documented with its body.

The routes document what is particular to them (gateway/v1.py, gateway/jobs/routes.py), their
answer bodies as the Pydantic models of gateway/responses.py. What holds for every route is
added here, once, to the document FastAPI generates:

- every error answer (4xx, 5xx) has the contract's body, `ErrorBody`;
- request validation answers 400, not FastAPI's default 422 `{"detail": [...]}`, so that
  default is dropped (a route's own 422, a blocked or FAILED job, stays);
- every route can answer 500 (an internal fault); a route with a body or parameters can answer
  400 (a bad one); a body can be 413 (over the size limit) or 408 (not sent in time); a
  path parameter that names nothing (a model, a request id) is 404.

tests/e2e/test_fuzz.py holds the served API to this document.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from gateway.responses import ErrorBody
from gateway.schemas.registry import MODEL_SPECS
from settings import Settings

logger = logging.getLogger(__name__)

ERROR_REF = {"$ref": f"#/components/schemas/{ErrorBody.__name__}"}

GENERIC_ERRORS = {
    400: "Malformed JSON, a bad field or parameter, or an undecodable image.",
    404: "Nothing by that name: unknown model or request id (or an expired one).",
    408: "The body did not arrive within the configured time; the connection is closed.",
    413: "Body larger than the configured limit.",
    500: "An internal fault; the error names the request id it was logged with.",
}
FASTAPI_VALIDATION_REF = "#/components/schemas/HTTPValidationError"


def profile_description(settings: Settings) -> str:
    """The document's description: which profile this server runs, and what that means for
    the examples."""
    if settings.profile == "tiny":
        return (
            "This server runs the **tiny** profile: random-weight models of the real "
            "architectures, so every image is noise, by design. Each route's example answers "
            "200 as it stands (Try it out). Serve real weights with `DEPTHID_PROFILE=full` "
            "(`make pull` first)."
        )
    return (
        "This server runs the **full** profile (real weights). The face models' examples hold a "
        "synthetic face that only the tiny profile's detector finds: put a photo with a face in "
        "`face_image` (and `pose_image`)."
    )


def install(app: FastAPI) -> None:
    """Serve `contract_openapi(app)` at /openapi.json (built once, on first request)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = contract_openapi(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented override


def contract_openapi(app: FastAPI) -> dict[str, Any]:
    spec = get_openapi(
        title=app.title,
        version=app.version,
        summary=app.summary,
        description=app.description,
        routes=app.routes,
    )
    for operations in spec["paths"].values():
        for operation in operations.values():
            _complete_responses(operation)
    _add_examples(spec)
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(_component_schemas(ErrorBody))
    # Referenced only by the 422s dropped above.
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    return spec


def _complete_responses(operation: dict[str, Any]) -> None:
    responses = operation["responses"]
    default_422 = responses.get("422", {}).get("content", {}).get("application/json", {})
    if default_422.get("schema", {}).get("$ref") == FASTAPI_VALIDATION_REF:
        del responses["422"]
    parameters = operation.get("parameters", [])
    has_body = "requestBody" in operation
    codes = [500]
    if has_body or parameters:
        codes.append(400)
    if has_body:
        codes += [408, 413]
    if any(parameter["in"] == "path" for parameter in parameters):
        codes.append(404)
    for code in codes:
        responses.setdefault(str(code), {"description": GENERIC_ERRORS[code]})
    for code, response in responses.items():
        if code[0] in "45" and not response.get("content"):
            response["content"] = {"application/json": {"schema": ERROR_REF}}


def request_examples() -> dict[str, dict[str, Any]]:
    """Per model: its /docs example (its registry entry's); none when the pictures are not
    there (an install without loadtests/payloads/): the docs then go without examples."""
    try:
        return {model: spec.example() for model, spec in MODEL_SPECS.items()}
    except OSError as exc:
        logger.warning("no request examples in /docs: %s", exc)
        return {}


def _add_examples(spec: dict[str, Any]) -> None:
    """Each generation route's body example (/docs offers it in "Try it out")."""
    for model, example in request_examples().items():
        for route in ("v1", "v2"):
            operation = spec["paths"].get(f"/{route}/{model}", {}).get("post")
            if operation is not None:
                content = operation["requestBody"]["content"]["application/json"]
                content["examples"] = {model: example}


def _component_schemas(model: type[BaseModel]) -> dict[str, Any]:
    """`model`'s JSON schema and those it refers to, as the document's components."""
    _, top = models_json_schema(
        [(model, "serialization")], ref_template="#/components/schemas/{model}"
    )
    return top["$defs"]
