"""The OpenAPI document, held to the contract: every error answer documented with its body.

The routes document what is particular to them (v1.py, v2.py; the answer bodies below). What
holds for every route is added here, once, to the document FastAPI generates:

- every error answer (4xx, 5xx) has the contract's body, `ERROR_SCHEMA`;
- request validation answers 400, not FastAPI's default 422 `{"detail": [...]}`, so that
  default is dropped (a route's own 422, a blocked or FAILED job, stays);
- every route can answer 500 (an internal fault); a route with a body or parameters can answer
  400 (a bad one); a body can be 413 (over the size limit) or 408 (not sent in time); a
  path parameter that names nothing (a model, a request id) is 404.

tests/e2e/test_fuzz.py holds the served API to this document.
"""

from __future__ import annotations

import copy
from typing import Annotated, Any

from fastapi import FastAPI, Path
from fastapi.openapi.utils import get_openapi

from gateway.http.examples import request_examples
from gateway.schemas.registry import MODEL_SPECS
from settings import Settings

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {"type": "string", "minLength": 1, "description": "What went wrong, in words."},
        "details": {
            "type": "array",
            "description": "Validation: one entry per bad field.",
            "items": {
                "type": "object",
                "required": ["field", "message"],
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
}
ERROR_REF = {"$ref": "#/components/schemas/Error"}

GENERIC_ERRORS = {
    400: "Malformed JSON, a bad field or parameter, or an undecodable image.",
    404: "Nothing by that name: unknown model or request id (or an expired one).",
    408: "The body did not arrive within the configured time; the connection is closed.",
    413: "Body larger than the configured limit.",
    500: "An internal fault; the error names the request id it was logged with.",
}
FASTAPI_VALIDATION_REF = "#/components/schemas/HTTPValidationError"

# --- answer bodies, for the routes' `responses` ---------------------------------------------

_METRICS = {
    "type": "object",
    "required": ["inference_time"],
    "properties": {
        "inference_time": {"type": "number", "description": "The runner's compute, seconds."},
        "queue_time": {"type": "number", "description": "v2: submit to start, seconds."},
    },
}
V1_BASE64_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["image", "images", "seed", "metrics"],
    "properties": {
        "image": {"type": "string", "description": "The first image, base64."},
        "images": {"type": "array", "items": {"type": "string"}, "description": "All, base64."},
        "seed": {"type": "integer"},
        "metrics": _METRICS,
    },
}
_STATUS = {
    "type": "string",
    "enum": ["QUEUED", "PROCESSING", "COMPLETED", "FAILED", "CANCELLED"],
}
V2_STATUS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["request_id", "status"],
    "properties": {
        "request_id": {"type": "string"},
        "status": _STATUS,
        "error": {"type": "string", "description": "Why it failed (FAILED only)."},
    },
}
V2_FAILED_SCHEMA: dict[str, Any] = {
    # The status body of a FAILED job: also the contract's error body.
    "type": "object",
    "required": ["request_id", "status", "error"],
    "properties": {
        "request_id": {"type": "string"},
        "status": {"type": "string", "enum": ["FAILED"]},
        "error": {"type": "string", "minLength": 1},
    },
}
V2_SUBMITTED_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["request_id", "status_url", "response_url", "status"],
    "properties": {
        "request_id": {"type": "string"},
        "status_url": {"type": "string", "description": "Absolute URL of the status route."},
        "response_url": {"type": "string", "description": "Absolute URL of the result route."},
        "status": {"type": "string", "enum": ["QUEUED"]},
        "ignored_fields": {
            "type": "array",
            "items": {"type": "string"},
            "description": "Fields of the body the model does not take (ignored; only present "
            "when there are some, also in the `x-ignored-fields` header).",
        },
    },
}
V2_RESULT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["request_id", "status", "output", "seed", "metrics"],
    "properties": {
        "request_id": {"type": "string"},
        "status": {"type": "string", "enum": ["COMPLETED"]},
        "output": {
            "type": "array",
            "items": {"type": "string"},
            "description": "Image URLs, or base64 images when the request's `base64` was true.",
        },
        "seed": {"type": "integer"},
        "metrics": {**_METRICS, "required": ["inference_time", "queue_time"]},
    },
}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


_FAILED_422 = {
    "description": "The job FAILED; `error` says why.",
    "content": _json(V2_FAILED_SCHEMA),
}
V2_SUBMIT_OK = {"description": "Queued.", "content": _json(V2_SUBMITTED_SCHEMA)}
V2_STATUS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "QUEUED, PROCESSING, COMPLETED or CANCELLED.",
        "content": _json(V2_STATUS_SCHEMA),
    },
    422: _FAILED_422,
}
V2_CANCEL_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Cancelled: the status body, status CANCELLED; the credits are given back.",
        "content": _json(V2_STATUS_SCHEMA),
    },
    404: {"description": "Unknown or expired request id, or another API key's."},
    409: {"description": "The request has already ended (COMPLETED, FAILED or CANCELLED)."},
}
V2_RESULT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The final body (a CANCELLED job's: its status body).",
        "content": _json({"anyOf": [V2_RESULT_SCHEMA, V2_STATUS_SCHEMA]}),
    },
    202: {"description": "Not done yet: the status body.", "content": _json(V2_STATUS_SCHEMA)},
    422: _FAILED_422,
}
_BINARY = {"schema": {"type": "string", "format": "binary"}}
V2_OUTPUT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The image bytes, in the request's output format.",
        "content": {"image/jpeg": _BINARY, "image/png": _BINARY},
    },
}


# POST /v2/{model} reads its body by hand (its schema depends on the model): documented here.
V2_MODEL = Annotated[
    str, Path(description="The model to run.", json_schema_extra={"enum": sorted(MODEL_SPECS)})
]
V2_SUBMIT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "The same body as `POST /v1/{model}`.",
        "content": _json(
            {
                "anyOf": [
                    {"$ref": f"#/components/schemas/{spec.request.__name__}"}
                    for spec in MODEL_SPECS.values()
                ]
            }
        ),
    }
}


V2_SUBMIT_PATH = "/v2/{model}"


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
    _add_v1_examples(spec)
    _split_v2_submit(spec)
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    schemas["Error"] = ERROR_SCHEMA
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
            response["content"] = _json(ERROR_REF)


def _add_v1_examples(spec: dict[str, Any]) -> None:
    for model, example in request_examples().items():
        operation = spec["paths"].get(f"/v1/{model}", {}).get("post")
        if operation is not None:
            operation["requestBody"]["content"]["application/json"]["examples"] = {model: example}


def _split_v2_submit(spec: dict[str, Any]) -> None:
    """`POST /v2/{model}` is one route whose body depends on the model: documented as one
    operation per model (`POST /v2/sd1.5-controlnet-depth`, ...), each with its model's schema
    and example, so /docs offers the right body for each. The route itself serves them all."""
    paths = spec["paths"]
    if V2_SUBMIT_PATH not in paths:
        return
    generic = paths[V2_SUBMIT_PATH]["post"]
    per_model = {}
    for model, model_spec in MODEL_SPECS.items():
        operation = copy.deepcopy(generic)
        operation["summary"] = f"{model}: submit; poll status_url, then fetch response_url"
        operation["operationId"] = f"submit_{model.replace('.', '_').replace('-', '_')}"
        parameters = [p for p in operation.get("parameters", []) if p["name"] != "model"]
        if parameters:
            operation["parameters"] = parameters
        else:
            operation.pop("parameters", None)
        content: dict[str, Any] = {
            "schema": {"$ref": f"#/components/schemas/{model_spec.request.__name__}"}
        }
        example = request_examples().get(model)
        if example is not None:
            content["examples"] = {model: example}
        operation["requestBody"] = {
            "required": True,
            "description": f"The same body as `POST /v1/{model}`.",
            "content": {"application/json": content},
        }
        per_model[f"/v2/{model}"] = {"post": operation}
    # In the generic route's place, so /docs lists them where it was.
    spec["paths"] = {
        name: item
        for path, value in paths.items()
        for name, item in (per_model.items() if path == V2_SUBMIT_PATH else [(path, value)])
    }
