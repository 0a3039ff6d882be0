"""millm.v1 messages <-> API JSON: enums, nulls, units, the override table, requests, frames."""

from __future__ import annotations

import json
import typing

import grpc
import pytest

from millm.v1 import model_service_pb2 as mpb
from millm.v1 import operation_pb2 as opb
from millm.v1 import sae_pb2 as spb
from millm.v1 import sae_service_pb2 as sspb
from millm.v1 import steering_pb2 as stpb
from millm.v1 import steering_service_pb2 as stspb
from millm.v1 import training_pb2 as tpb
from openai_bridge import proto_json, steering_json
from openai_bridge.errors import InferenceError
from openai_bridge.management import common, models, schemas, watch
from openai_bridge.management.schemas import DownloadBody, EstimateBody, LoadBody
from tests.unit.bridge.management_fakes import SMOL, builtin, cached, operation


@pytest.mark.parametrize(
    ("enum", "value", "expected"),
    [
        (opb.OperationState, opb.OPERATION_STATE_RUNNING, "running"),
        (opb.OperationKind, opb.OPERATION_KIND_MODEL_DOWNLOAD, "model_download"),
        (mpb.WeightFormat, mpb.WEIGHT_FORMAT_SAFETENSORS, "safetensors"),
        (mpb.CachedModelState, mpb.CACHED_MODEL_STATE_CORRUPTED, "corrupted"),
        (opb.OperationState, opb.OPERATION_STATE_UNSPECIFIED, None),
        (opb.OperationState, 99, None),  # newer server, older bridge
    ],
)
def test_enum_json(enum, value, expected):
    assert proto_json.enum_json(enum.DESCRIPTOR, value) == expected


@pytest.mark.parametrize(
    ("names", "enum"),
    [
        (schemas.WeightFormatName, mpb.WeightFormat),
        (schemas.QuantizationName, mpb.Quantization),
        (schemas.SaeLayoutName, spb.SaeLayout),
        (schemas.TrainingArchitectureName, tpb.TrainingArchitecture),
        (steering_json.SteeringModeName, stpb.SteeringMode),
    ],
)
def test_request_enum_names_are_the_protos(names, enum):
    # GGUF is read from the cache, never asked for in a download.
    expected = [n for n in proto_json.enum_names(enum.DESCRIPTOR) if n != "gguf"]
    assert list(typing.get_args(names)) == expected


def test_training_config_body_has_every_proto_field():
    proto = [f.name for f in tpb.TrainingConfig.DESCRIPTOR.fields]
    assert list(schemas.TrainingConfigBody.model_fields) == proto
    corpus = [f.name for f in tpb.CorpusSource.DESCRIPTOR.fields]
    assert list(schemas.CorpusSourceBody.model_fields) == corpus


def test_cached_model_json():
    assert proto_json.to_json(cached()) == {
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
    body = proto_json.to_json(builtin())
    assert body["repo_id"] is None and body["commit_sha"] is None
    assert body["parameter_count"] is None  # 0 means unknown
    assert (body["format"], body["loaded"]) == ("gguf", True)


def test_running_operation_json():
    assert proto_json.to_json(operation()) == {
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
    assert proto_json.to_json(operation(eta_s=0.0))["eta_s"] == 0.0
    assert proto_json.to_json(operation(eta_s=6.5))["eta_s"] == 6.5


def test_failed_operation_json():
    op = operation(
        opb.OPERATION_STATE_FAILED,
        error_message="Disk full.",
        error_reason="OUT_OF_DISK",
        finished_at_unix_ms=1_700_000_002_000,
        bytes_total=0,
    )
    body = proto_json.to_json(op)
    assert body["state"] == "failed" and body["done"] is True
    assert (body["error_message"], body["error_reason"]) == ("Disk full.", "out_of_disk")
    assert body["finished_at_unix_ms"] == 1_700_000_002_000
    assert body["bytes_total"] is None  # 0 means unknown


def test_download_request():
    body = DownloadBody(repo_id="org/m", token="hf_x", format="pytorch")
    assert proto_json.message(mpb.DownloadModelRequest, common.given(body)) == (
        mpb.DownloadModelRequest(repo_id="org/m", token="hf_x", format=mpb.WEIGHT_FORMAT_PYTORCH)
    )
    plain = common.given(DownloadBody(repo_id="org/m"))
    assert proto_json.message(mpb.DownloadModelRequest, plain).format == 0


def test_download_body_hides_the_token_from_repr():
    assert "hf_secret" not in repr(DownloadBody(repo_id="org/m", token="hf_secret"))


def test_load_and_estimate_requests():
    load = LoadBody(quantization="bnb_4bit", dtype="float16", device="cuda", allow_overcommit=True)
    assert models.load_request("org/m", load) == mpb.LoadModelRequest(
        id="org/m",
        spec=mpb.LoadSpec(dtype="float16", quantization=mpb.QUANTIZATION_BNB_4BIT, device="cuda"),
        allow_overcommit=True,
    )
    estimate = EstimateBody(context_tokens=2048, sae_bytes=10, quantization="none")
    assert models.estimate_request("org/m", estimate) == mpb.EstimateModelMemoryRequest(
        id="org/m",
        spec=mpb.LoadSpec(quantization=mpb.QUANTIZATION_NONE, context_tokens=2048),
        sae_bytes=10,
    )


@pytest.mark.parametrize("raw", ["", "/", "//"])
def test_empty_model_id_is_400(raw):
    with pytest.raises(InferenceError) as caught:
        models.model_id(raw)
    assert (caught.value.grpc_code, caught.value.param) == (grpc.StatusCode.INVALID_ARGUMENT, "id")


@pytest.mark.parametrize(("size", "expected"), [(None, 0), (1, 1), (200, 200)])
def test_page_size(size, expected):
    assert common.page_size(size) == expected


@pytest.mark.parametrize("size", [0, -1, 201])
def test_page_size_out_of_range(size):
    with pytest.raises(InferenceError) as caught:
        common.page_size(size)
    assert caught.value.param == "page_size"


def test_page_token_empty_is_null():
    assert proto_json.page([], "") == {"data": [], "next_page_token": None}
    assert proto_json.page([cached()], "t2") == {
        "data": [proto_json.to_json(cached())],
        "next_page_token": "t2",
    }


def test_operation_frame_exact_bytes():
    op = operation(opb.OPERATION_STATE_SUCCEEDED, bytes_done=4000)
    frame = proto_json.compact({"type": "operation", "operation": proto_json.to_json(op)})
    assert frame.startswith('{"type":"operation","operation":{"id":"op-1","kind":"model_download",')
    assert '"state":"succeeded","done":true' in frame


def test_float32_keeps_its_shortest_form_and_nan_is_a_string():
    config = tpb.TrainingConfig(learning_rate=4e-4)
    assert proto_json.to_json(config)["learning_rate"] == 0.0004
    metrics = proto_json.to_json(tpb.TrainingMetrics(loss=float("nan"), mse=float("-inf")))
    assert (metrics["loss"], metrics["mse"]) == ("NaN", "-Infinity")
    json.dumps(metrics, allow_nan=False)  # valid JSON


def test_a_oneof_shows_only_its_chosen_member():
    config = proto_json.to_json(tpb.TrainingConfig(corpus=tpb.CorpusSource(path="wiki/")))
    assert config["corpus"] == {"path": "wiki/"}
    assert proto_json.to_json(tpb.TrainingConfig())["corpus"] is None


def test_map_keys_are_strings_in_key_order():
    state = stspb.SteeringState(max_activations={10: 2.5, 2: 1.0})
    assert list(proto_json.to_json(state)["max_activations"].items()) == [("2", 1.0), ("10", 2.5)]


def test_sae_source_names_its_kind_beside_its_fields():
    hub = spb.SaeSource(hub=spb.HubSaeSource(repo_id="org/saes", path="l6"))
    sae = proto_json.to_json(spb.Sae(id="s", source=hub, layer=0))
    assert sae["source"] == {
        "type": "hub",
        "repo_id": "org/saes",
        "path": "l6",
        "revision": None,
        "commit_sha": None,
    }
    assert (sae["layer"], sae["k"]) == (0, None)  # `optional`: 0 is a layer, unset is null
    assert proto_json.to_json(spb.Sae(source=spb.SaeSource()))["source"] is None


def test_overrides_where_the_api_differs():
    feature = proto_json.to_json(stpb.SteeringFeature(index=1, strength=2.0))
    assert (feature["mode"], feature["label"]) == ("add", None)  # UNSPECIFIED reads as ADD
    token = proto_json.to_json(stpb.TokenActivations(token=""))
    assert token["token"] == ""  # text, not "none"
    assert proto_json.to_json(spb.SaeRelease(sae_ids=["", "a"]))["sae_ids"] == ["", "a"]
    candidate = proto_json.to_json(spb.SaeCandidate(d_in=0, size_bytes=0))
    assert (candidate["d_in"], candidate["size_bytes"]) == (None, 0)  # 0: unknown / 0 bytes
    issue = proto_json.to_json(spb.CompatibilityIssue(reason="D_IN_MISMATCH", message="m"))
    assert issue == {"reason": "d_in_mismatch", "message": "m"}


def test_message_maps_names_enums_and_nested_lists():
    request = proto_json.message(
        stspb.SetSteeringRequest,
        {"features": [{"index": 3, "mode": "clamp", "strength": 1.5}], "enabled": None},
    )
    assert request == stspb.SetSteeringRequest(
        features=[stpb.SteeringFeature(index=3, mode=stpb.STEERING_MODE_CLAMP, strength=1.5)]
    )
    assert not request.HasField("enabled")  # null: unset, not false
    upload = proto_json.message(sspb.ExportSaeRequest, {"id": "s", "layout": "mistudio"})
    assert upload.layout == spb.SAE_LAYOUT_MISTUDIO


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
    frame, close_code = watch.error_frame(InferenceError(code, reason, "Nope."))
    assert close_code == close
    assert frame.startswith('{"type":"error","error":{"message":"Nope.","type":')


def test_error_frame_exact_bytes():
    error = InferenceError(grpc.StatusCode.NOT_FOUND, None, "No operation `x`.")
    assert watch.error_frame(error) == (
        '{"type":"error","error":{"message":"No operation `x`.","type":"not_found_error",'
        '"param":null,"code":null}}',
        1008,
    )
