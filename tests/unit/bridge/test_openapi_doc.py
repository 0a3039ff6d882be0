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


def _resolve(schema: dict, components: dict) -> dict:
    """A body schema with `$ref`s followed, and the optional body's `anyOf: [X, null]` unwrapped."""
    for option in schema.get("anyOf", []):
        if option.get("type") != "null":
            return _resolve(option, components)
    ref = schema.get("$ref")
    return _resolve(components[ref.rsplit("/", 1)[1]], components) if ref else schema


def test_every_management_body_is_described_down_to_the_training_config():
    schema = TestClient(create_app(BridgeSettings(api_key=""))).get("/openapi.json").json()
    components = schema["components"]["schemas"]

    bodies = {
        (method, path): _resolve(
            op["requestBody"]["content"]["application/json"]["schema"], components
        )
        for path, item in schema["paths"].items()
        if path.startswith("/api/v1/")
        for method, op in item.items()
        if "requestBody" in op
    }
    assert len(bodies) >= 15
    for where, body in bodies.items():
        assert body.get("properties"), where
    run = bodies[("post", "/api/v1/training/runs")]
    config = _resolve(run["properties"]["config"], components)
    assert {"hook_name", "architecture", "k", "learning_rate", "corpus"} <= set(
        config["properties"]
    )
    architecture = _resolve(config["properties"]["architecture"], components)
    assert architecture["enum"] == ["standard", "jumprelu", "topk", "batchtopk"]
