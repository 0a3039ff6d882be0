"""Inputs that are valid JSON but not valid text or sane shapes: a lone UTF-16
surrogate, deep nesting, a NUL byte in a path. Each must be a 400 naming the field,
on every route, and leave the keep-alive connection usable."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from openai_bridge.request_checks import MAX_JSON_DEPTH

LONE = "\\ud800"  # the JSON escape, as a client sends it

# (method, path, JSON text with a lone surrogate, the field it is in)
ROUTES = [
    ("POST", "/v1/chat/completions",
     f'{{"model": "m", "messages": [{{"role": "user", "content": "hi {LONE}"}}]}}',
     "messages[0].content"),
    ("POST", "/v1/completions", f'{{"model": "m", "prompt": "{LONE}"}}', "prompt"),
    ("POST", "/v1/embeddings", f'{{"model": "m", "input": ["ok", "{LONE}"]}}', "input[1]"),
    ("POST", "/v1/responses", f'{{"model": "m", "input": "{LONE}"}}', "input"),
    ("POST", "/api/v1/profiles", f'{{"name": "p{LONE}"}}', "name"),
    ("PUT", "/api/v1/steering",
     f'{{"features": [{{"index": 1, "strength": 1.0, "label": "{LONE}"}}]}}', "features.0.label"),
    ("POST", "/api/v1/saes/import", f'{{"path": "/data/{LONE}"}}', "path"),
    ("POST", "/api/v1/models/download", f'{{"repo_id": "a/{LONE}"}}', "repo_id"),
    ("POST", "/api/v1/training/runs", f'{{"config": {{"corpus": {{"path": "{LONE}"}}}}}}',
     "config.corpus.path"),
    ("POST", "/api/v1/training/templates", f'{{"name": "t", "description": "{LONE}"}}',
     "description"),
    ("POST", "/api/v1/profiles/import", f'{{"json": "{{}}{LONE}"}}', "json"),
]  # fmt: skip


@pytest.fixture
def api(http) -> TestClient:
    return http


def refusal(response, param):
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    return error


@pytest.mark.parametrize(("method", "path", "body", "param"), ROUTES)
def test_a_lone_surrogate_is_a_400_naming_the_field(api, method, path, body, param):
    with api:
        response = api.request(
            method, path, content=body, headers={"Content-Type": "application/json"}
        )
        error = refusal(response, param)
        assert "surrogate" in error["message"]
        # The same connection still answers.
        assert api.get("/v1/models").status_code == 200


def test_a_surrogate_pair_is_text(api):
    body = '{"model": "m", "prompt": "smile \\ud83d\\ude00"}'
    response = api.post(
        "/v1/completions", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 200, response.text


def test_every_route_with_a_body_checks_for_lone_surrogates(api):
    # The check is an app dependency, copied into routes only when they are included:
    # a router included before `install_exception_handlers` would miss it.
    operations = [
        (method.upper(), re.sub(r"\{[^}]+\}", "x", path))
        for path, item in api.app.openapi()["paths"].items()
        for method, operation in item.items()
        if "requestBody" in operation
    ]
    assert len(operations) > 20
    for method, path in operations:
        response = api.request(
            method, path, content=f'{{"k{LONE}": 1}}', headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 400, (method, path, response.text)
        assert "surrogate" in response.json()["error"]["message"], (method, path)


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 100_000])
def test_deep_profile_import_is_a_400(api, depth):
    response = api.post(
        "/api/v1/profiles/import",
        content=f'{{"schema": "x", "a": {nested(depth)}}}',
        headers={"Content-Type": "application/json"},
    )
    assert "nests deeper" in refusal(response, "json")["message"]


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 100_000])
def test_deep_template_import_is_a_400(api, depth):
    response = api.post("/api/v1/training/templates/import", content=nested(depth))
    assert "nests deeper" in refusal(response, "json")["message"]


def test_a_nul_byte_in_the_corpus_path_is_a_400(api):
    body = {"config": {"corpus": {"path": "/data/a\u0000b.txt"}}}
    response = api.post("/api/v1/training/runs", json=body)
    error = refusal(response, "config.corpus.path")
    assert "NUL" in error["message"]


def test_an_overlong_model_id_is_a_400_naming_model(api):
    body = {"model": "m" * 7000, "messages": [{"role": "user", "content": "hi"}]}
    refusal(api.post("/v1/chat/completions", json=body), "model")


def test_an_overlong_profile_name_in_the_path_is_a_400(api):
    refusal(api.get("/api/v1/profiles/" + "p" * 10_000), "name")


def test_an_overlong_model_id_in_the_path_is_a_400(api):
    refusal(api.post("/api/v1/models/" + "m" * 7000 + "/load", json={}), "id")
