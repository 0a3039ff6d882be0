"""The OpenAPI document as the bridge answers: a refused request is a 400 with the
OpenAI error object, where FastAPI documents its own 422 `HTTPValidationError`
(which `errors.py` never sends)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

ERROR_SCHEMA_NAME = "OpenAIError"

ERROR_SCHEMA: dict[str, Any] = {
    "title": ERROR_SCHEMA_NAME,
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string", "examples": ["invalid_request_error"]},
                "param": {"type": ["string", "null"], "examples": ["messages[0].content"]},
                "code": {"type": ["string", "null"], "examples": ["invalid_value"]},
            },
        }
    },
}

_BAD_REQUEST = {
    "description": "Invalid request: `param` names the field",
    "content": {
        "application/json": {"schema": {"$ref": f"#/components/schemas/{ERROR_SCHEMA_NAME}"}}
    },
}


def document_openai_errors(app: FastAPI) -> None:
    """Makes `app.openapi()` list 400 with the OpenAI error object on every operation,
    in place of FastAPI's 422 (the schema is built once, then cached as FastAPI does)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                openapi_version=app.openapi_version,
                summary=app.summary,
                description=app.description,
                routes=app.routes,
            )
            app.openapi_schema = _with_openai_errors(schema)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _with_openai_errors(schema: dict[str, Any]) -> dict[str, Any]:
    for item in schema.get("paths", {}).values():
        for operation in item.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            responses = operation["responses"]
            responses.pop("422", None)
            responses.setdefault("400", _BAD_REQUEST)
    schemas = schema.setdefault("components", {}).setdefault("schemas", {})
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    schemas[ERROR_SCHEMA_NAME] = ERROR_SCHEMA
    return schema
