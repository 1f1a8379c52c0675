"""The OpenAPI 3.1 document of the service, built from the one request schema.

Every field, range and default comes from `fastfit_engine.request.schema`, every error code and its
status from the error catalogue, so `/openapi.json`, the CLI and the README cannot drift apart.
The document is plain JSON (a dict); `/docs` renders it with Swagger UI.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from fastfit_engine.errors import ERROR_CODES, ErrorCode
from fastfit_engine.runtime.engine import STAGES
from fastfit_engine.request.output import OUTPUT_FORMATS
from fastfit_engine.request.schema import (
    GARMENT_DESCRIPTIONS,
    GARMENT_FIELDS,
    MASK_DESCRIPTION,
    MASK_FIELD,
    PERSON_FIELD,
    SEED_MAX,
    VALUE_FIELDS_BY_NAME,
    ChoiceField,
    NumberField,
)

from .security import SYNTHETIC_WEIGHTS_HEADER

OPENAPI_VERSION = "3.1.0"
BEARER_SCHEME = "apiKey"  # the securitySchemes entry of the bearer API keys
API_VERSION = "1.0.0"


_JSON = "application/json"


def _number_schema(field: NumberField) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "integer" if field.kind is int else "number",
        "minimum": field.kind(field.minimum),
        "maximum": field.kind(field.maximum),
        "description": field.help + ("" if field.default is not None else "; random when absent (reported in X-Seed)"),
    }
    if field.default is not None:
        schema["default"] = field.kind(field.default)
    return schema


def _choice_schema(field: ChoiceField) -> dict[str, Any]:
    return {"type": "string", "enum": list(field.choices), "default": field.default, "description": field.help}


def _image_schema(description: str, json: bool) -> dict[str, Any]:
    if json:
        return {"type": "string", "contentEncoding": "base64",
                "description": description + "; base64 of the file, a `data:` URL prefix is allowed"}
    return {"type": "string", "format": "binary", "contentMediaType": "application/octet-stream",
            "description": description}


def prompt_body_schema(json: bool = False) -> dict[str, Any]:
    """The body of `POST /prompt`, multipart (files) or JSON (base64): one property per schema field."""
    props: dict[str, Any] = {PERSON_FIELD: _image_schema("photo of the person; centre-cropped to 3:4", json)}
    for g in GARMENT_FIELDS:
        props[g] = _image_schema(GARMENT_DESCRIPTIONS[g], json)
    props[MASK_FIELD] = _image_schema(MASK_DESCRIPTION, json)
    for f in VALUE_FIELDS_BY_NAME.values():
        props[f.name] = _choice_schema(f) if isinstance(f, ChoiceField) else _number_schema(f)
    return {
        "type": "object",
        "description": "At least one garment; `dress` replaces `upper` and `lower` and cannot be combined with them.",
        "required": [PERSON_FIELD],
        "properties": props,
        "additionalProperties": False,
    }


def _error_schema(codes: Iterable[ErrorCode]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["error"],
        "additionalProperties": False,
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "additionalProperties": False,
                "properties": {
                    "code": {"type": "string", "enum": [c.code for c in codes],
                             "description": "machine-readable; see the response descriptions"},
                    "message": {"type": "string", "description": "one readable line, never internals"},
                },
            }
        },
    }


def _result_json_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "required": [
            "image", "content_type", "width", "height", "seed", "preview", "timings_ms", "peak_vram_mb", "synthetic_weights",
        ],
        "properties": {
            "image": {"type": "string", "contentEncoding": "base64", "description": "the encoded image"},
            "content_type": {"type": "string", "enum": [f.content_type for f in OUTPUT_FORMATS.values()]},
            "width": {"type": "integer"},
            "height": {"type": "integer"},
            "seed": {"type": "integer", "minimum": 0, "maximum": SEED_MAX},
            "preview": {"type": "string", "enum": list(VALUE_FIELDS_BY_NAME["preview"].choices)},
            "timings_ms": {"type": "object", "additionalProperties": {"type": "number"},
                           "description": "milliseconds per stage: " + ", ".join(STAGES)},
            "peak_vram_mb": {"type": ["integer", "null"], "description": "null without CUDA"},
            "synthetic_weights": {"type": "boolean",
                                  "description": "true when the service runs random test weights (the image is noise)"},
        },
    }


_RETRY_AFTER = {"description": "seconds to wait before retrying", "schema": {"type": "integer", "minimum": 0}}


def _error_response(status: int, codes: list[ErrorCode], summary: str) -> dict[str, Any]:
    lines = "\n".join(f"- `{c.code}`: {c.when}" + (" (with Retry-After)" if c.retry_after else "") for c in codes)
    resp: dict[str, Any] = {
        "description": f"{summary}\n\n{lines}",
        "content": {
            _JSON: {
                "schema": {"$ref": "#/components/schemas/Error"},
                "examples": {
                    c.code: {"summary": c.when, "value": {"error": {"code": c.code, "message": c.when}}}
                    for c in codes
                },
            }
        },
    }
    if any(c.retry_after for c in codes):
        resp["headers"] = {"Retry-After": {"$ref": "#/components/headers/Retry-After"}}
    return resp


_STATUS_SUMMARY = {
    400: "The request breaks the schema (or is not valid HTTP).",
    401: "An API key is needed.",
    403: "Forbidden.",
    404: "No such route.",
    405: "Wrong method.",
    408: "The request did not arrive in time.",
    413: "The request body is too large.",
    414: "The request line is too long.",
    417: "Unsupported expectation.",
    429: "Too many connections from one address.",
    431: "The request headers are too large.",
    499: "The client left (never read).",
    500: "The try-on failed.",
    501: "Unsupported transfer coding.",
    503: "Not ready or busy; retry after Retry-After seconds where given.",
    504: "Too slow: the request's deadline, or the front's upstream timeout.",
}


def _responses_for(codes: Iterable[ErrorCode]) -> dict[str, Any]:
    by_status: dict[int, list[ErrorCode]] = {}
    for c in codes:
        by_status.setdefault(c.status, []).append(c)
    return {str(s): _error_response(s, cs, _STATUS_SUMMARY.get(s, "Error.")) for s, cs in sorted(by_status.items())}


def _status_object(value: str) -> dict[str, Any]:
    return {"type": "object", "required": ["status"], "properties": {"status": {"const": value}}}


def _by_code(errors: Iterable[ErrorCode], code: str) -> ErrorCode:
    return next(c for c in errors if c.code == code)


def build_openapi(config: Mapping[str, Any] | None = None, errors: Iterable[ErrorCode] = ERROR_CODES) -> dict[str, Any]:
    """The OpenAPI 3.1 document; `config` (the app's) fills in limits such as the upload size."""
    config = config or {}
    errors = tuple(errors)
    upload_mb = config.get("MAX_UPLOAD_MB")
    limit = f" The whole body may be at most {float(upload_mb):g} MB." if upload_mb else ""
    prompt_errors = [c for c in errors if c.code not in ("not_found", "method_not_allowed")]
    timing = ", ".join(STAGES)
    # /ready answers these as 503 (ServiceUnavailable), non_finite_output included
    ready_errors = [replace(c, status=503) for c in errors
                    if c.code in ("loading", "engine_failed", "non_finite_output", "draining", "engine_stuck")]
    # API keys (fastfit_service/auth.py): a bearer scheme, so /docs has an Authorize button.
    # Configured keys make it required on the protected operations; without keys it is optional.
    keyed = bool(config.get("API_KEYS") or config.get("API_KEYS_FILE"))
    bearer: list[dict[str, list[str]]] = [{BEARER_SCHEME: []}] if keyed else [{}, {BEARER_SCHEME: []}]
    metrics_public = bool(config.get("METRICS_PUBLIC"))
    unauthorized = [_by_code(errors, "unauthorized")]

    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "FastFit virtual try-on",
            "version": API_VERSION,
            "summary": "Dress a person photo in up to five garments in one synchronous call.",
            "description": (
                "Self-hosted, one GPU, one request at a time behind a small queue. Every error is JSON "
                "`{\"error\": {\"code\", \"message\"}}`; the codes are listed under each response."
            ),
        },
        "paths": {
            "/prompt": {
                "post": {
                    "operationId": "tryOn",
                    "summary": "Run one try-on",
                    "security": bearer,
                    "description": "Send the person and one or more garments; get the result image." + limit,
                    "requestBody": {
                        "required": True,
                        "content": {
                            "multipart/form-data": {"schema": {"$ref": "#/components/schemas/PromptForm"}},
                            _JSON: {"schema": {"$ref": "#/components/schemas/PromptJson"}},
                        },
                    },
                    "responses": {
                        "200": {
                            "description": (
                                "The try-on result (or the mask preview) in `output_format`; JSON with "
                                "`response_format=json` or `Accept: application/json`."
                            ),
                            "headers": {
                                "X-Seed": {"description": "the seed used (reproduces the image)",
                                           "schema": {"type": "integer", "minimum": 0, "maximum": SEED_MAX}},
                                "Server-Timing": {"description": f"milliseconds per stage: {timing}",
                                                  "schema": {"type": "string"}},
                                "X-Peak-VRAM-MB": {"description": "peak GPU memory of the request (CUDA only)",
                                                   "schema": {"type": "integer", "minimum": 0}},
                                "Cache-Control": {"schema": {"type": "string", "const": "no-store"}},
                                SYNTHETIC_WEIGHTS_HEADER: {
                                    "description": "`true` when the service runs the random test weights",
                                    "schema": {"type": "string", "const": "true"}},
                            },
                            "content": {
                                **{f.content_type: {"schema": {"type": "string", "contentMediaType": f.content_type}}
                                   for f in OUTPUT_FORMATS.values()},
                                _JSON: {"schema": {"$ref": "#/components/schemas/TryOnJson"}},
                            },
                        },
                        **_responses_for(prompt_errors),
                    },
                }
            },
            "/progress/{request_id}": {
                "get": {
                    "operationId": "progress",
                    "summary": "What a running try-on is doing",
                    "description": (
                        "Send `POST /prompt` with your own random `X-Request-ID` and poll this path with it "
                        "while you wait: the last stage the engine finished (the Server-Timing names), or "
                        "the denoising step. 404 once the request has ended (or on another instance)."
                    ),
                    "parameters": [{"name": "request_id", "in": "path", "required": True,
                                    "schema": {"type": "string"}}],
                    "responses": {
                        "200": {"description": "the request is being served", "content": {_JSON: {"schema": {
                            "type": "object",
                            "required": ["state", "stage", "step", "steps", "elapsed_s"],
                            "properties": {
                                "state": {"type": "string", "enum": ["waiting", "running"],
                                          "description": "waiting: admitted, not yet on the GPU"},
                                "stage": {"type": ["string", "null"], "enum": [*STAGES, None],
                                          "description": "the last stage finished, or diffusion while it steps"},
                                "step": {"type": "integer", "minimum": 0},
                                "steps": {"type": "integer", "minimum": 0},
                                "elapsed_s": {"type": "number", "minimum": 0},
                            },
                        }}}},
                        "404": {"$ref": "#/components/responses/NotFound"},
                    },
                }
            },
            "/health": {
                "get": {
                    "operationId": "health",
                    "summary": "The process answers",
                    "responses": {"200": {"description": "up",
                                          "content": {_JSON: {"schema": _status_object("ok")}}}},
                }
            },
            "/ready": {
                "get": {
                    "operationId": "ready",
                    "summary": "The models are loaded",
                    "responses": {
                        "200": {"description": "ready", "content": {_JSON: {"schema": _status_object("ready")}}},
                        **_responses_for(ready_errors),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Prometheus metrics",
                    "description": "Needs a key when keys are configured, unless `FASTFIT_METRICS_PUBLIC=1`.",
                    **({} if metrics_public else {"security": bearer}),
                    "responses": {
                        "200": {"description": "text exposition format",
                                "content": {"text/plain": {"schema": {"type": "string"}}}},
                        **({} if metrics_public else _responses_for(unauthorized)),
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document",
                    "responses": {"200": {"description": "OpenAPI 3.1", "content": {_JSON: {"schema": {"type": "object"}}}}},
                }
            },
        },
        "components": {
            "schemas": {
                "PromptForm": prompt_body_schema(json=False),
                "PromptJson": prompt_body_schema(json=True),
                "TryOnJson": _result_json_schema(),
                "Error": _error_schema(errors),
            },
            "headers": {"Retry-After": _RETRY_AFTER},
            "securitySchemes": {
                BEARER_SCHEME: {
                    "type": "http",
                    "scheme": "bearer",
                    "description": (
                        "An API key from FASTFIT_API_KEYS or FASTFIT_API_KEYS_FILE, sent as "
                        "`Authorization: Bearer <key>`; without configured keys the service is open."
                    ),
                }
            },
            # Any path can answer these two.
            "responses": {
                name: _error_response(c.status, [c], _STATUS_SUMMARY[c.status])
                for name, c in (("NotFound", _by_code(errors, "not_found")),
                                ("MethodNotAllowed", _by_code(errors, "method_not_allowed")))
            },
        },
    }
