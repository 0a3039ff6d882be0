"""Request validation: 400 with the field path (never 422), unsupported features, routes, auth."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from openai_bridge.app import create_app

CHAT = "/v1/chat/completions"
USER = [{"role": "user", "content": "Hi"}]


def error_of(response, status=400):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_malformed_field_is_400_with_param_path(http):
    error = error_of(http.post(CHAT, json={"messages": [{"role": "user", "content": 5}]}))
    assert error["param"] == "messages[0].content"
    assert error["type"] == "invalid_request_error"


def test_missing_field_is_400(http):
    error = error_of(http.post(CHAT, json={"model": "m"}))
    assert error["param"] == "messages"
    assert error["message"].startswith("Field required")


def test_invalid_json_is_400(http):
    error = error_of(
        http.post(CHAT, content=b"{not json", headers={"content-type": "application/json"})
    )
    assert error == {
        "message": "The request body is not valid JSON.",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_value",
    }


@pytest.mark.parametrize("body", [b"[]", b'"text"', b"3"])
def test_non_object_body_is_400(http, body):
    error = error_of(http.post(CHAT, content=body, headers={"content-type": "application/json"}))
    assert error["param"] is None


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tools": [{"type": "file_search"}]}, "tools[0].type"),
        ({"response_format": {"type": "regex"}}, "response_format.type"),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
                ]
            },
            "messages[0].content[0].type",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}
                ]
            },
            "messages[0].content[0].type",
        ),
    ],
)
def test_unsupported_chat_features_are_400(http, fake, body, param):
    error = error_of(http.post(CHAT, json={"messages": USER, **body}))
    assert error["param"] == param and error["code"] == "unsupported"
    assert not fake.starts  # refused before reaching the service


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"echo": True, "logprobs": 1}, "echo"),
        ({"prompt": []}, "prompt"),
        ({"prompt": ["a"] * 9, "n": 2}, "prompt"),
        ({"suffix": "end"}, "suffix"),
    ],
)
def test_completion_refusals(http, body, param):
    assert error_of(http.post("/v1/completions", json={"prompt": "x", **body}))["param"] == param


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"n": 0}, "n"),
        ({"n": 17}, "n"),
        ({"logit_bias": {"token": 5}}, "logit_bias"),
        ({"tool_choice": "required"}, "tool_choice"),
        (
            {
                "tools": [{"type": "function", "function": {"name": "f"}}],
                "tool_choice": {"type": "function", "function": {"name": "g"}},
            },
            "tool_choice",
        ),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
            "response_format.json_schema.schema",
        ),
        (
            {
                "tools": [{"type": "function", "function": {"name": "f"}}],
                "functions": [{"name": "f"}],
            },
            "functions",
        ),
    ],
)
def test_bad_chat_options_are_400_before_the_service(http, fake, body, param):
    error = error_of(http.post(CHAT, json={"messages": USER, **body}))
    assert error["param"] == param
    assert not fake.starts


def test_value_the_wire_cannot_hold_is_400(http):
    error = error_of(http.post(CHAT, json={"messages": USER, "max_tokens": -1}))
    assert error == {
        "message": "`max_tokens` is out of range.",
        "type": "invalid_request_error",
        "param": "max_tokens",
        "code": "invalid_value",
    }


def test_embedding_bad_format_is_400(http):
    assert (
        error_of(http.post("/v1/embeddings", json={"input": "x", "encoding_format": "int8"}))[
            "param"
        ]
        == "encoding_format"
    )
    assert error_of(http.post("/v1/embeddings", json={"input": []}))["param"] == "input"


def test_unknown_route_is_openai_404(http):
    error = error_of(http.get("/v1/nothing"), 404)
    assert error["type"] == "not_found_error"
    assert error_of(http.post("/nope", json={}), 404)["type"] == "not_found_error"


def test_api_key_guards_v1_and_api_but_not_health_or_ui(settings_for):
    app = create_app(settings_for(api_key="sekrit"))
    http = TestClient(app)
    error = error_of(http.get("/v1/models"), 401)
    assert error["type"] == "authentication_error" and error["code"] == "invalid_api_key"
    assert error_of(http.get("/api/v1/anything"), 401)
    assert http.get("/v1/models", headers={"authorization": "Bearer wrong"}).status_code == 401
    assert http.get("/v1/models", headers={"authorization": "Bearer sekrit"}).status_code == 200
    assert http.get("/health").status_code == 200
    assert http.get("/").status_code == 200
