"""/api/v1/saes/{id}/features and /labels against a fake FeatureService on real gRPC:
the JSON each answers, what each sends, 400s for bad input, the service's errors."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import grpc
import pytest
from fastapi.testclient import TestClient

from millm.v1 import feature_service_pb2 as fpb
from millm.v1 import feature_service_pb2_grpc as fpb_grpc
from millm.v1 import operation_pb2 as opb
from openai_bridge.app import create_app
from openai_bridge.config import BridgeSettings
from openai_bridge.errors import InferenceError
from tests.fixtures.grpc_server import service_error, serving

SAE = "sae-3f9c2a7b1d04"
FEATURES = f"/api/v1/saes/{SAE}/features"
LABELS = f"/api/v1/saes/{SAE}/labels"


def caps_label(index: int = 7) -> fpb.FeatureLabel:
    return fpb.FeatureLabel(index=index, label="upper case", notes="fires on CAPS", source="user")


def dashboard() -> fpb.Feature:
    return fpb.Feature(
        index=7,
        statistics=fpb.CorpusStatistics(
            tokens=100_000,
            firing_rate=0.0125,
            max_activation=12.5,
            mean_activation=3.25,
            quantiles=[2.5, 8.0, 11.5],
            histogram=fpb.FeatureHistogram(bin_edges=[0.0, 6.25, 12.5], counts=[900, 350]),
        ),
        top_contexts=[
            fpb.FeatureContext(
                tokens=["A", " GOOD", ""], activations=[0.0, 12.5, 1.5], peak=1, max_activation=12.5
            )
        ],
        promoted=[fpb.LensToken(token=" LOUD", token_id=504, logit=3.5)],
        suppressed=[fpb.LensToken(token="", token_id=0, logit=-2.25)],
        label=caps_label(),
        suggested_strength=6.25,
    )


class FakeFeatureService(fpb_grpc.FeatureServiceServicer):
    """Answers fixed messages; records each request by the RPC's snake-case name.
    `errors[name]` makes that RPC fail; `delay_s[name]` makes it answer that late."""

    def __init__(self) -> None:
        self.calls: dict[str, object] = {}
        self.errors: dict[str, InferenceError] = {}
        self.delay_s: dict[str, float] = {}

    async def _enter(self, name: str, request: object) -> None:
        self.calls[name] = request
        if name in self.errors:
            raise service_error(self.errors[name])
        await asyncio.sleep(self.delay_s.get(name, 0))

    async def ComputeFeatureStatistics(self, request, context):
        await self._enter("compute_feature_statistics", request)
        operation = opb.Operation(
            id="op-9",
            kind=opb.OPERATION_KIND_FEATURE_STATISTICS,
            state=opb.OPERATION_STATE_PENDING,
            target=request.sae_id,
        )
        return fpb.ComputeFeatureStatisticsResponse(operation=operation)

    async def GetFeature(self, request, context):
        await self._enter("get_feature", request)
        if request.index == 8:  # a feature nothing has been computed for
            return fpb.GetFeatureResponse(feature=fpb.Feature(index=8))
        return fpb.GetFeatureResponse(feature=dashboard())

    async def SearchFeaturesByText(self, request, context):
        await self._enter("search_features_by_text", request)
        hit = fpb.TextFeatureHit(
            index=7,
            max_activation=12.5,
            total_activation=14.0,
            positions=[1, 2],
            label=caps_label(),
        )
        return fpb.SearchFeaturesByTextResponse(tokens=["A", " GOOD", "!"], hits=[hit])

    async def ContrastFeatures(self, request, context):
        await self._enter("contrast_features", request)
        hit = fpb.ContrastHit(
            index=7,
            auroc=0.975,
            firing_rate_gap=0.5,
            mean_positive=6.5,
            mean_negative=0.25,
            suggested_strength=6.5,
        )
        return fpb.ContrastFeaturesResponse(measure=request.measure or 1, hits=[hit])

    async def SearchFeatureLabels(self, request, context):
        await self._enter("search_feature_labels", request)
        return fpb.SearchFeatureLabelsResponse(labels=[caps_label()])

    async def SetFeatureLabel(self, request, context):
        await self._enter("set_feature_label", request)
        if not request.label and not request.notes:
            return fpb.SetFeatureLabelResponse()
        label = fpb.FeatureLabel(
            index=request.index, label=request.label, notes=request.notes, source="user"
        )
        return fpb.SetFeatureLabelResponse(label=label)

    async def ExportFeatureLabels(self, request, context):
        await self._enter("export_feature_labels", request)
        return fpb.ExportFeatureLabelsResponse(data=b'{"sae_sha256": "ab", "labels": []}')

    async def ImportFeatureLabels(self, request, context):
        await self._enter("import_feature_labels", request)
        return fpb.ImportFeatureLabelsResponse(imported=3, skipped=1)


@pytest.fixture
def features() -> FakeFeatureService:
    return FakeFeatureService()


@pytest.fixture
def served(features) -> Iterator[str]:
    with serving(features) as address:
        yield address


def client(address: str, **settings) -> TestClient:
    app = create_app(BridgeSettings(inference_address=address, api_key="", **settings))
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture
def api(served) -> Iterator[TestClient]:
    with client(served) as http:
        yield http


def error_of(response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


LABEL_JSON = {"index": 7, "label": "upper case", "notes": "fires on CAPS", "source": "user"}


# ---------------------------------------------------------------- the dashboard


def test_feature_dashboard_json(api, features):
    response = api.get(f"{FEATURES}/7?lens_tokens=5")

    assert response.status_code == 200
    assert response.json() == {
        "index": 7,
        "statistics": {
            "tokens": 100_000,
            "firing_rate": 0.0125,
            "max_activation": 12.5,
            "mean_activation": 3.25,
            "quantiles": [2.5, 8.0, 11.5],
            "histogram": {"bin_edges": [0.0, 6.25, 12.5], "counts": [900, 350]},
        },
        # A token that decodes to "" is text, not null.
        "top_contexts": [
            {
                "tokens": ["A", " GOOD", ""],
                "activations": [0.0, 12.5, 1.5],
                "peak": 1,
                "max_activation": 12.5,
            }
        ],
        "promoted": [{"token": " LOUD", "token_id": 504, "logit": 3.5}],
        "suppressed": [{"token": "", "token_id": 0, "logit": -2.25}],
        "label": LABEL_JSON,
        "suggested_strength": 6.25,
    }
    assert features.calls["get_feature"] == fpb.GetFeatureRequest(
        sae_id=SAE, index=7, lens_tokens=5
    )


def test_a_feature_with_nothing_computed_has_nulls(api):
    body = api.get(f"{FEATURES}/8").json()

    assert body["statistics"] is None
    assert body["label"] is None
    assert body["suggested_strength"] is None
    assert body["top_contexts"] == body["promoted"] == []


@pytest.mark.parametrize(
    ("path", "param"),
    [
        ("/-1", "index"),
        (f"/{2**32}", "index"),
        ("/seven", "index"),
        ("/7?lens_tokens=0", "query.lens_tokens"),
        ("/7?lens_tokens=101", "query.lens_tokens"),
    ],
)
def test_bad_index_or_lens_is_400(api, features, path, param):
    error = error_of(api.get(FEATURES + path), 400)

    assert error["param"] == param
    assert features.calls == {}


def test_unknown_sae_is_404_as_the_service_says(api, features):
    features.errors["get_feature"] = InferenceError(
        grpc.StatusCode.NOT_FOUND, "NOT_FOUND", f"No cached SAE `{SAE}x`.", param="sae_id"
    )

    error = error_of(api.get(f"/api/v1/saes/{SAE}x/features/7"), 404)

    assert error == {
        "message": f"No cached SAE `{SAE}x`.",
        "type": "not_found_error",
        "param": "sae_id",
        "code": "not_found",
    }


def test_index_past_the_sae_is_the_services_400(api, features):
    features.errors["get_feature"] = InferenceError(
        grpc.StatusCode.INVALID_ARGUMENT, None, "The SAE has 64 features.", param="index"
    )

    error = error_of(api.get(f"{FEATURES}/64"), 400)

    assert error["param"] == "index"
    assert error["message"] == "The SAE has 64 features."


# ---------------------------------------------------------------- statistics


def test_statistics_start_an_operation(api, features):
    response = api.post(
        f"{FEATURES}/statistics", json={"corpus_id": "corpus-1", "max_tokens": 20_000}
    )

    assert response.status_code == 202
    assert response.headers["location"] == "/api/v1/operations/op-9"
    assert response.json()["kind"] == "feature_statistics"
    assert response.json()["done"] is False
    assert features.calls["compute_feature_statistics"] == fpb.ComputeFeatureStatisticsRequest(
        sae_id=SAE, corpus_id="corpus-1", max_tokens=20_000
    )


def test_statistics_need_no_body(api, features):
    assert api.post(f"{FEATURES}/statistics").status_code == 202
    assert features.calls["compute_feature_statistics"] == fpb.ComputeFeatureStatisticsRequest(
        sae_id=SAE
    )


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"top_contexts": -1}, "top_contexts"),
        ({"corpus": "x"}, "corpus"),
    ],
)
def test_bad_statistics_body_is_400(api, features, body, param):
    error = error_of(api.post(f"{FEATURES}/statistics", json=body), 400)

    assert error["param"] == param
    assert "compute_feature_statistics" not in features.calls


# ---------------------------------------------------------------- search


def test_search_by_text(api, features):
    response = api.post(f"{FEATURES}/search", json={"text": "A GOOD!", "limit": 5})

    assert response.json() == {
        "tokens": ["A", " GOOD", "!"],
        "hits": [
            {
                "index": 7,
                "max_activation": 12.5,
                "total_activation": 14.0,
                "positions": [1, 2],
                "label": LABEL_JSON,
            }
        ],
    }
    assert features.calls["search_features_by_text"] == fpb.SearchFeaturesByTextRequest(
        sae_id=SAE, text="A GOOD!", limit=5
    )


@pytest.mark.parametrize(
    ("body", "param"),
    [({}, "text"), ({"text": ""}, "text"), ({"text": "x", "limit": 0}, "limit")],
)
def test_bad_search_body_is_400(api, body, param):
    assert error_of(api.post(f"{FEATURES}/search", json=body), 400)["param"] == param


def test_contrast_by_transform(api, features):
    body = {"positive_texts": ["Good morning."], "transform": "uppercase", "measure": "auroc"}

    response = api.post(f"{FEATURES}/contrast", json=body)

    assert response.json() == {
        "measure": "auroc",
        "hits": [
            {
                "index": 7,
                "auroc": 0.975,
                "firing_rate_gap": 0.5,
                "mean_positive": 6.5,
                "mean_negative": 0.25,
                "suggested_strength": 6.5,
                "label": None,
            }
        ],
    }
    assert features.calls["contrast_features"] == fpb.ContrastFeaturesRequest(
        sae_id=SAE,
        positive_texts=["Good morning."],
        transform=fpb.TEXT_TRANSFORM_UPPERCASE,
        measure=fpb.CONTRAST_MEASURE_AUROC,
    )


def test_contrast_two_sets(api, features):
    body = {
        "positive_texts": ["HELLO", "YES"],
        "negative_texts": ["hello"],
        "measure": "firing_rate_gap",
        "limit": 3,
    }

    assert api.post(f"{FEATURES}/contrast", json=body).json()["measure"] == "firing_rate_gap"
    sent = features.calls["contrast_features"]
    assert list(sent.negative_texts) == ["hello"]
    assert sent.measure == fpb.CONTRAST_MEASURE_FIRING_RATE_GAP
    assert sent.limit == 3


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"positive_texts": ["a"]}, "negative_texts"),
        ({"positive_texts": ["a"], "negative_texts": ["b"], "transform": "uppercase"}, "transform"),
        ({"positive_texts": [], "transform": "uppercase"}, "positive_texts"),
        ({"positive_texts": ["a", ""], "transform": "uppercase"}, "positive_texts.1"),
        ({"positive_texts": ["a"], "transform": "lowercase"}, "transform"),
        ({"positive_texts": ["a"], "transform": "uppercase", "measure": "gap"}, "measure"),
    ],
)
def test_bad_contrast_body_is_400(api, features, body, param):
    error = error_of(api.post(f"{FEATURES}/contrast", json=body), 400)

    assert error["param"] == param
    assert "contrast_features" not in features.calls


def test_contrast_outlives_the_request_deadline_where_search_does_not(served, features):
    """Contrast reads every text it is sent through the model: no deadline. A search
    reads one text and keeps the bridge's deadline."""
    features.delay_s = {"contrast_features": 0.6, "search_features_by_text": 0.6}
    body = {"positive_texts": ["a"], "transform": "uppercase"}
    with client(served, request_timeout_s=0.2) as http:
        assert http.post(f"{FEATURES}/contrast", json=body).status_code == 200
        assert http.post(f"{FEATURES}/search", json={"text": "a"}).status_code == 504


# ---------------------------------------------------------------- labels


def test_set_label(api, features):
    response = api.put(f"{FEATURES}/7/label", json={"label": "upper case", "notes": "CAPS"})

    assert response.json() == {
        "label": {"index": 7, "label": "upper case", "notes": "CAPS", "source": "user"}
    }
    assert features.calls["set_feature_label"] == fpb.SetFeatureLabelRequest(
        sae_id=SAE, index=7, label="upper case", notes="CAPS"
    )


def test_delete_label_sends_an_empty_one(api, features):
    assert api.delete(f"{FEATURES}/7/label").json() == {"label": None}
    assert features.calls["set_feature_label"] == fpb.SetFeatureLabelRequest(sae_id=SAE, index=7)


@pytest.mark.parametrize(
    ("body", "param"),
    [({"label": 3}, "label"), ({"label": "x" * 201}, "label"), ({"name": "x"}, "name")],
)
def test_bad_label_body_is_400(api, body, param):
    assert error_of(api.put(f"{FEATURES}/7/label", json=body), 400)["param"] == param


def test_search_labels(api, features):
    response = api.get(f"{LABELS}?query=CAPS&limit=10")

    assert response.json() == {"data": [LABEL_JSON], "next_page_token": None}
    assert features.calls["search_feature_labels"] == fpb.SearchFeatureLabelsRequest(
        sae_id=SAE, query="CAPS", limit=10
    )


def test_export_labels_is_a_json_download(api):
    response = api.get(f"{LABELS}/export")

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["content-disposition"] == (f'attachment; filename="{SAE}.labels.json"')
    assert response.content == b'{"sae_sha256": "ab", "labels": []}'


def test_import_neuronpedia_labels_passes_the_file_on(api, features):
    document = json.dumps([{"index": "7", "description": "upper case"}]).encode()

    response = api.post(
        f"{LABELS}/import?format=neuronpedia&overwrite=true",
        content=document,
        headers={"Content-Type": "application/json"},
    )

    assert response.json() == {"imported": 3, "skipped": 1}
    assert features.calls["import_feature_labels"] == fpb.ImportFeatureLabelsRequest(
        sae_id=SAE, data=document, format=fpb.LABEL_FORMAT_NEURONPEDIA, overwrite=True
    )


def test_import_defaults_to_millm_format(api, features):
    api.post(f"{LABELS}/import", content=b'{"labels": []}')

    sent = features.calls["import_feature_labels"]
    assert sent.format == fpb.LABEL_FORMAT_UNSPECIFIED  # read as miLLM's own
    assert sent.overwrite is False


@pytest.mark.parametrize(
    ("query", "content", "param"),
    [("?format=csv", b"[]", "query.format"), ("", b"index,description", None)],
)
def test_bad_import_is_400(api, features, query, content, param):
    error = error_of(api.post(f"{LABELS}/import{query}", content=content), 400)

    assert error["param"] == param
    assert "import_feature_labels" not in features.calls
