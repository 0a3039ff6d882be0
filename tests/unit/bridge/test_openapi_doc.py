"""The OpenAPI document says what the bridge sends: 400 with the OpenAI error object,
never FastAPI's 422 HTTPValidationError."""

from __future__ import annotations

from fastapi.testclient import TestClient

from openai_bridge.app import create_app
from openai_bridge.config import BridgeSettings
from openai_bridge.openapi import ERROR_SCHEMA_NAME, document_openai_errors


def test_every_operation_documents_400_with_the_openai_error_and_no_422():
    app = create_app(BridgeSettings(api_key=""))
    document_openai_errors(app)  # idempotent if create_app already does it
    schema = TestClient(app).get("/openapi.json").json()

    operations = [op for item in schema["paths"].values() for op in item.values()]
    assert len(operations) > 30
    for operation in operations:
        assert "422" not in operation["responses"], operation["operationId"]
    chat = schema["paths"]["/v1/chat/completions"]["post"]["responses"]["400"]
    ref = chat["content"]["application/json"]["schema"]["$ref"]
    assert ref == f"#/components/schemas/{ERROR_SCHEMA_NAME}"
    components = schema["components"]["schemas"]
    assert "HTTPValidationError" not in components
    assert components[ERROR_SCHEMA_NAME]["properties"]["error"]["required"] == [
        "message", "type", "param", "code"
    ]  # fmt: skip
