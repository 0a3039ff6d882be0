"""Pure translation for /api/v1: enums, nulls, units, request mapping, WebSocket frames."""

from __future__ import annotations

import grpc
import pytest

from millm.v1 import model_service_pb2 as mpb
from millm.v1 import operation_pb2 as opb
from openai_bridge.errors import InferenceError
from openai_bridge.management import translate
from openai_bridge.management.schemas import DownloadBody, EstimateBody, LoadBody
from tests.unit.bridge.management_fakes import SMOL, builtin, cached, operation


@pytest.mark.parametrize(
    ("enum", "value", "prefix", "expected"),
    [
        (opb.OperationState, opb.OPERATION_STATE_RUNNING, "OPERATION_STATE_", "running"),
        (opb.OperationKind, opb.OPERATION_KIND_MODEL_DOWNLOAD, "OPERATION_KIND_", "model_download"),
        (mpb.WeightFormat, mpb.WEIGHT_FORMAT_SAFETENSORS, "WEIGHT_FORMAT_", "safetensors"),
        (
            mpb.CachedModelState,
            mpb.CACHED_MODEL_STATE_CORRUPTED,
            "CACHED_MODEL_STATE_",
            "corrupted",
        ),
        (opb.OperationState, opb.OPERATION_STATE_UNSPECIFIED, "OPERATION_STATE_", None),
        (opb.OperationState, 99, "OPERATION_STATE_", None),  # newer server, older bridge
    ],
)
def test_enum_name(enum, value, prefix, expected):
    assert translate.enum_name(enum, value, prefix) == expected


def test_cached_model_json():
    assert translate.cached_model(cached()) == {
        "id": SMOL,
        "repo_id": SMOL,
        "revision": "main",
        "commit_sha": "abc123",
        "format": "safetensors",
        "parameter_count": 134_515_008,
        "size_bytes": 269_060_381,
        "state": "ready",
        "loaded": False,
    }


def test_builtin_model_has_nulls_for_unknowns():
    body = translate.cached_model(builtin())
    assert body["repo_id"] is None and body["commit_sha"] is None
    assert body["parameter_count"] is None  # 0 means unknown
    assert (body["format"], body["loaded"]) == ("gguf", True)


def test_running_operation_json():
    assert translate.operation(operation()) == {
        "id": "op-1",
        "kind": "model_download",
        "state": "running",
        "done": False,
        "stage": "downloading",
        "target": SMOL,
        "bytes_done": 1000,
        "bytes_total": 4000,
        "bytes_per_s": 500.0,
        "eta_s": None,
        "error_message": None,
        "error_reason": None,
        "created_at_unix_ms": 1_700_000_000_000,
        "updated_at_unix_ms": 1_700_000_001_000,
        "finished_at_unix_ms": None,
    }


def test_eta_zero_is_not_null():
    assert translate.operation(operation(eta_s=0.0))["eta_s"] == 0.0
    assert translate.operation(operation(eta_s=6.5))["eta_s"] == 6.5


def test_failed_operation_json():
    op = operation(
        opb.OPERATION_STATE_FAILED,
        error_message="Disk full.",
        error_reason="OUT_OF_DISK",
        finished_at_unix_ms=1_700_000_002_000,
        bytes_total=0,
    )
    body = translate.operation(op)
    assert body["state"] == "failed" and body["done"] is True
    assert (body["error_message"], body["error_reason"]) == ("Disk full.", "out_of_disk")
    assert body["finished_at_unix_ms"] == 1_700_000_002_000
    assert body["bytes_total"] is None  # 0 means unknown


def test_download_request():
    body = DownloadBody(repo_id="org/m", token="hf_x", format="pytorch")
    assert translate.download_request(body) == mpb.DownloadModelRequest(
        repo_id="org/m", token="hf_x", format=mpb.WEIGHT_FORMAT_PYTORCH
    )
    assert translate.download_request(DownloadBody(repo_id="org/m")).format == 0


def test_download_body_hides_the_token_from_repr():
    assert "hf_secret" not in repr(DownloadBody(repo_id="org/m", token="hf_secret"))


def test_load_and_estimate_requests():
    load = LoadBody(quantization="bnb_4bit", dtype="float16", device="cuda", allow_overcommit=True)
    assert translate.load_request("org/m", load) == mpb.LoadModelRequest(
        id="org/m",
        spec=mpb.LoadSpec(dtype="float16", quantization=mpb.QUANTIZATION_BNB_4BIT, device="cuda"),
        allow_overcommit=True,
    )
    estimate = EstimateBody(context_tokens=2048, sae_bytes=10, quantization="none")
    assert translate.estimate_request("org/m", estimate) == mpb.EstimateModelMemoryRequest(
        id="org/m",
        spec=mpb.LoadSpec(quantization=mpb.QUANTIZATION_NONE, context_tokens=2048),
        sae_bytes=10,
    )


@pytest.mark.parametrize("raw", ["", "/", "//"])
def test_empty_model_id_is_400(raw):
    with pytest.raises(InferenceError) as caught:
        translate.model_id(raw)
    assert (caught.value.grpc_code, caught.value.param) == (grpc.StatusCode.INVALID_ARGUMENT, "id")


@pytest.mark.parametrize(("size", "expected"), [(None, 0), (1, 1), (200, 200)])
def test_page_size(size, expected):
    assert translate.page_size(size) == expected


@pytest.mark.parametrize("size", [0, -1, 201])
def test_page_size_out_of_range(size):
    with pytest.raises(InferenceError) as caught:
        translate.page_size(size)
    assert caught.value.param == "page_size"


def test_page_token_empty_is_null():
    assert translate.page([], "") == {"data": [], "next_page_token": None}
    assert translate.page([], "t2") == {"data": [], "next_page_token": "t2"}


def test_operation_frame_exact_bytes():
    frame = translate.operation_frame(operation(opb.OPERATION_STATE_SUCCEEDED, bytes_done=4000))
    assert frame.startswith('{"type":"operation","operation":{"id":"op-1","kind":"model_download",')
    assert '"state":"succeeded","done":true' in frame


@pytest.mark.parametrize(
    ("code", "reason", "close"),
    [
        (grpc.StatusCode.NOT_FOUND, None, 1008),
        (grpc.StatusCode.UNAUTHENTICATED, None, 1008),
        (grpc.StatusCode.UNAVAILABLE, "SERVICE_UNREACHABLE", 1011),
        (grpc.StatusCode.INTERNAL, None, 1011),
    ],
)
def test_error_frame(code, reason, close):
    frame, close_code = translate.error_frame(InferenceError(code, reason, "Nope."))
    assert close_code == close
    assert frame.startswith('{"type":"error","error":{"message":"Nope.","type":')


def test_error_frame_exact_bytes():
    error = InferenceError(grpc.StatusCode.NOT_FOUND, None, "No operation `x`.")
    assert translate.error_frame(error) == (
        '{"type":"error","error":{"message":"No operation `x`.","type":"not_found_error",'
        '"param":null,"code":null}}',
        1008,
    )
