"""/api/v1 routes against a fake ModelService + OperationsService: JSON, errors, route order."""

from __future__ import annotations

import grpc
import pytest
from fastapi.testclient import TestClient

from millm.v1 import model_service_pb2 as mpb
from millm.v1 import operations_service_pb2 as ospb
from openai_bridge.app import create_app
from openai_bridge.errors import InferenceError
from tests.unit.bridge.management_fakes import SMOL

MODELS = "/api/v1/models"


@pytest.fixture
def api(http) -> TestClient:
    return http


def error_of(response, status):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_list_models(api, management):
    body = api.get(MODELS).json()
    assert [m["id"] for m in body["data"]] == [SMOL, "builtin"]
    assert body["data"][0]["state"] == "ready" and body["data"][0]["format"] == "safetensors"
    assert body["next_page_token"] is None
    assert management.calls[-1] == ("list_models", mpb.ListModelsRequest())


def test_list_models_pages(api, management):
    body = api.get(MODELS, params={"page_size": 1, "page_token": "t1"}).json()
    assert (len(body["data"]), body["next_page_token"]) == (1, "p2")
    assert management.calls[-1] == (
        "list_models",
        mpb.ListModelsRequest(page_size=1, page_token="t1"),
    )


def test_list_models_bad_page_size_is_400(api, management):
    error = error_of(api.get(MODELS, params={"page_size": 500}), 400)
    assert (error["param"], error["code"]) == ("page_size", "invalid_value")
    assert not management.calls


def test_get_model_with_slashed_id(api):
    body = api.get(f"{MODELS}/{SMOL}").json()
    assert body["id"] == SMOL and body["repo_id"] == SMOL


def test_get_unknown_model_is_404(api):
    error = error_of(api.get(f"{MODELS}/org/missing"), 404)
    assert error == {
        "message": "No such model.",
        "type": "invalid_request_error",
        "param": "id",
        "code": "model_not_found",
    }


def test_download_is_202_with_the_operation(api, management):
    response = api.post(
        f"{MODELS}/download",
        json={"repo_id": "org/new", "revision": "v1", "token": "hf_x", "format": "safetensors"},
    )
    assert response.status_code == 202
    assert response.headers["location"] == "/api/v1/operations/op-2"
    body = response.json()
    assert (body["id"], body["kind"], body["state"], body["target"]) == (
        "op-2",
        "model_download",
        "pending",
        "org/new",
    )
    assert management.calls[-1] == (
        "download_model",
        mpb.DownloadModelRequest(
            repo_id="org/new", revision="v1", token="hf_x", format=mpb.WEIGHT_FORMAT_SAFETENSORS
        ),
    )


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "repo_id"),
        ({"repo_id": ""}, "repo_id"),
        ({"repo_id": "org/m", "format": "gguf"}, "format"),
        ({"repo_id": "org/m", "revison": "v1"}, "revison"),
    ],
)
def test_download_bad_body_is_400(api, management, body, param):
    error = error_of(api.post(f"{MODELS}/download", json=body), 400)
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert not management.calls


def test_already_downloading_is_409(api, management):
    management.errors["download_model"] = InferenceError(
        grpc.StatusCode.ALREADY_EXISTS, "ALREADY_EXISTS", "Already downloading."
    )
    response = api.post(f"{MODELS}/download", json={"repo_id": "org/m"})
    assert error_of(response, 409)["type"] == "conflict_error"
    assert response.headers["x-should-retry"] == "false"


def test_estimate(api, management):
    response = api.post(
        f"{MODELS}/{SMOL}/estimate", json={"quantization": "int8_dynamic", "sae_bytes": 25}
    )
    assert response.json() == {
        "weights_bytes": 300,
        "kv_cache_bytes": 50,
        "overhead_bytes": 25,
        "sae_bytes": 25,
        "total_bytes": 400,
        "available_bytes": 1000,
        "fits": True,
        "device": "cpu",
    }
    request = management.calls[-1][1]
    assert request.id == SMOL and request.spec.quantization == mpb.QUANTIZATION_INT8_DYNAMIC


def test_estimate_without_body(api, management):
    assert api.post(f"{MODELS}/builtin/estimate").status_code == 200
    assert management.calls[-1][1] == mpb.EstimateModelMemoryRequest(id="builtin", spec={})


def test_load(api, management):
    response = api.post(
        f"{MODELS}/{SMOL}/load", json={"dtype": "float32", "allow_overcommit": True}
    )
    body = response.json()
    assert body["model"]["id"] == SMOL and body["model"]["loaded"] is True
    assert (body["load_s"], body["warning"]) == (1.5, None)
    assert management.calls[-1][1] == mpb.LoadModelRequest(
        id=SMOL, spec=mpb.LoadSpec(dtype="float32"), allow_overcommit=True
    )


def test_load_refuses_estimate_only_fields(api, management):
    error = error_of(api.post(f"{MODELS}/{SMOL}/load", json={"sae_bytes": 1}), 400)
    assert error["param"] == "sae_bytes"


def test_load_bad_quantization_is_400(api):
    error = error_of(api.post(f"{MODELS}/{SMOL}/load", json={"quantization": "int4"}), 400)
    assert error["param"] == "quantization"


def test_load_that_does_not_fit_maps_through_the_table(api, management):
    management.errors["load_model"] = InferenceError(
        grpc.StatusCode.RESOURCE_EXHAUSTED, "OUT_OF_MEMORY", "Does not fit."
    )
    response = api.post(f"{MODELS}/{SMOL}/load")
    assert error_of(response, 503)["code"] == "out_of_memory"


def test_unload(api, management):
    assert api.post(f"{MODELS}/unload").json() == {
        "rss_before_bytes": 2000,
        "rss_after_bytes": 500,
    }
    assert management.calls[-1][0] == "unload_model"


def test_delete(api, management):
    assert api.delete(f"{MODELS}/{SMOL}").json() == {
        "id": SMOL,
        "deleted": True,
        "freed_bytes": 269_060_381,
    }
    assert SMOL not in management.models


def test_delete_loaded_model_is_409_model_in_use(api, management):
    management.errors["delete_model"] = InferenceError(
        grpc.StatusCode.FAILED_PRECONDITION, "MODEL_IN_USE", "Unload it first."
    )
    response = api.delete(f"{MODELS}/builtin")
    assert error_of(response, 409) == {
        "message": "Unload it first.",
        "type": "conflict_error",
        "param": None,
        "code": "model_in_use",
    }
    assert response.headers["x-should-retry"] == "false"


@pytest.mark.parametrize(
    ("method", "path", "call", "id_"),
    [
        # Fixed paths win over {id:path}.
        ("POST", "/api/v1/models/download", "download_model", None),
        ("POST", "/api/v1/models/unload", "unload_model", None),
        # Verb suffixes match ids with slashes, even ids that end in a verb.
        ("POST", "/api/v1/models/org/name/load", "load_model", "org/name"),
        ("POST", "/api/v1/models/org/name/estimate", "estimate_model_memory", "org/name"),
        ("POST", "/api/v1/models/org/unload/load", "load_model", "org/unload"),
        ("POST", "/api/v1/models/org/download/estimate", "estimate_model_memory", "org/download"),
        ("GET", "/api/v1/models/org/name/load", "get_model", "org/name/load"),
        ("GET", "/api/v1/models/a/b/c", "get_model", "a/b/c"),
        ("DELETE", "/api/v1/models/org/name", "delete_model", "org/name"),
        ("DELETE", "/api/v1/models/org/name/load", "delete_model", "org/name/load"),
    ],
)
def test_route_order(api, management, method, path, call, id_):
    body = {"repo_id": "org/x"} if call == "download_model" else None
    api.request(method, path, json=body)
    name, request = management.calls[-1]
    assert name == call
    if id_ is not None:
        assert request.id == id_


def test_empty_id_is_400(api, management):
    assert error_of(api.post(f"{MODELS}//load"), 400)["param"] == "id"
    assert not management.calls


def test_unknown_method_is_405(api):
    error = error_of(api.put(f"{MODELS}/unload"), 405)
    assert error["type"] == "invalid_request_error"


def test_list_operations(api, management):
    body = api.get("/api/v1/operations", params={"unfinished_only": "true", "page_size": 5}).json()
    assert [op["id"] for op in body["data"]] == ["op-1"]
    assert body["next_page_token"] is None
    assert management.calls[-1] == (
        "list_operations",
        ospb.ListOperationsRequest(page_size=5, unfinished_only=True),
    )


def test_get_operation(api):
    body = api.get("/api/v1/operations/op-1").json()
    assert (body["id"], body["state"], body["eta_s"]) == ("op-1", "running", None)


def test_get_unknown_operation_is_404(api):
    error = error_of(api.get("/api/v1/operations/nope"), 404)
    assert (error["type"], error["code"]) == ("not_found_error", None)


def test_cancel_operation(api, management):
    body = api.post("/api/v1/operations/op-1/cancel").json()
    assert (body["state"], body["done"]) == ("cancelled", True)
    assert management.calls[-1] == ("cancel_operation", ospb.CancelOperationRequest(id="op-1"))


def test_service_unreachable_is_503(api, management):
    management.errors["list_models"] = InferenceError(
        grpc.StatusCode.UNAVAILABLE, "SERVICE_UNREACHABLE", "Unreachable."
    )
    response = api.get(MODELS)
    assert error_of(response, 503)["code"] == "service_unreachable"
    assert response.headers["retry-after"] == "1"


def test_api_key_is_required_on_management_routes(settings_for):
    app = create_app(settings_for(api_key="k"))
    http = TestClient(app)
    assert error_of(http.get(MODELS), 401)["code"] == "invalid_api_key"
    # The query parameter is for WebSockets only.
    assert http.get(MODELS, params={"api_key": "k"}).status_code == 401
    assert http.get(MODELS, headers={"authorization": "Bearer k"}).status_code == 200
