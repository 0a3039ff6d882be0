"""FeatureService over real gRPC with the built-in model, small SAEs and real SQLite.

Every number the service reports is checked against a direct computation: the
same windows through the model (training's `capture`) and the SAE's encode.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import grpc
import pytest
import torch
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from inference_service.features.lens import decoder_row_logits
from inference_service.features.reading import corpus_windows
from inference_service.sae.architectures import Sae, SaeWeights
from inference_service.sae.feature_stats import CORPUS_STATISTICS_FILE
from inference_service.training.corpus import read_documents
from inference_service.training.sites import capture, capture_site
from millm.v1 import feature_service_pb2 as pb
from millm.v1 import feature_service_pb2_grpc as pb_grpc
from millm.v1 import operation_pb2, sae_pb2
from millm.v1 import operations_service_pb2 as opb
from millm.v1 import operations_service_pb2_grpc as opb_grpc
from millm.v1 import sae_service_pb2 as spb
from millm.v1 import sae_service_pb2_grpc as spb_grpc
from millm.v1 import training_service_pb2 as tpb
from millm.v1 import training_service_pb2_grpc as tpb_grpc
from tests.fixtures.saes import random_sae, write_sae
from tests.fixtures.servers import running_server

HOOK = "blocks.3.hook_resid_post"
NEURONPEDIA = Path(__file__).parents[1] / "fixtures" / "neuronpedia_explanations.json"
LOWER = [
    "the cat sat on the mat and looked at the rain outside.",
    "we walked to the market to buy bread and fresh apples.",
    "she wrote a long letter to her friend about the summer.",
    "the river ran quietly past the old stone bridge at dawn.",
]
CORPUS = "\n\n".join(
    [*LOWER, *(t.upper() for t in LOWER), "A short note on volcanoes and the water cycle."] * 2
)


@pytest.fixture(scope="module")
async def server(data_dir, tmp_path_factory):
    async with running_server(data_dir, tmp_path_factory.mktemp("feature-service")) as srv:
        yield srv


@pytest.fixture
async def channel(server):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        yield ch


@pytest.fixture
def stub(channel):
    return pb_grpc.FeatureServiceStub(channel)


async def _hidden(server, texts: list[str]) -> list[torch.Tensor]:
    """Each text's hidden state at HOOK, [T, d_model], read directly."""
    engine = server.host.engine
    tokenizer = engine.loaded_model.tokenizer
    model = engine.loaded_model.model
    site = capture_site(model, HOOK, "hook")
    rows = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    return [
        (await engine.call_on_lane(lambda ids=ids: capture(model, [site], torch.tensor([ids]))))[0][
            0
        ]
        for ids in rows
    ]


@pytest.fixture(scope="module")
async def upper_sae(server, tmp_path_factory) -> tuple[str, Sae]:
    """A small SAE whose feature 0 is the direction from lower- to upper-case text:
    it fires on the upper-cased texts and not on the originals."""
    lower = [h[1:].mean(0) for h in await _hidden(server, LOWER)]
    upper = [h[1:].mean(0) for h in await _hidden(server, [t.upper() for t in LOWER])]
    direction = torch.stack(upper).mean(0) - torch.stack(lower).mean(0)
    direction = direction / direction.norm()
    middle = (torch.stack(upper) @ direction).min() + (torch.stack(lower) @ direction).max()
    base = random_sae(d_sae=48, hook_name=HOOK, seed=3, with_sparsity=False)
    weights = base.weights
    w_enc = weights.W_enc.clone()
    b_enc = weights.b_enc.clone()
    w_enc[:, 0] = direction
    b_enc[0] = -middle / 2
    sae = Sae(base.spec, SaeWeights(w_enc, b_enc, weights.W_dec, torch.zeros_like(weights.b_dec)))
    folder = write_sae(tmp_path_factory.mktemp("upper-sae") / "sae", sae)
    stub = spb_grpc.SaeServiceStub(grpc.aio.insecure_channel(f"127.0.0.1:{server.port}"))
    imported = await stub.ImportSae(spb.ImportSaeRequest(path=str(folder), name="upper"))
    return imported.sae.id, sae


@pytest.fixture(scope="module")
async def gpt2_sae(server, tmp_path_factory) -> str:
    folder = write_sae(
        tmp_path_factory.mktemp("gpt2-sae") / "sae",
        random_sae(d_in=768, model_name="gpt2-small", hook_name="blocks.0.hook_resid_pre"),
    )
    stub = spb_grpc.SaeServiceStub(grpc.aio.insecure_channel(f"127.0.0.1:{server.port}"))
    return (await stub.ImportSae(spb.ImportSaeRequest(path=str(folder)))).sae.id


async def _upload(channel, name: str, text: str) -> str:
    async def parts():
        yield tpb.UploadCorpusRequest(name=name)
        yield tpb.UploadCorpusRequest(data=text.encode())

    response = await tpb_grpc.TrainingServiceStub(channel).UploadCorpus(parts())
    return response.corpus.id


async def _finish(channel, operation_id: str) -> list[operation_pb2.Operation]:
    stub = opb_grpc.OperationsServiceStub(channel)
    request = opb.WatchOperationRequest(id=operation_id)
    return [r.operation async for r in stub.WatchOperation(request)]


def _reason(error: grpc.aio.AioRpcError) -> tuple[str, str]:
    status = rpc_status.from_call(error) or status_pb2.Status()
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.reason, info.metadata.get("param", "")
    return "", ""


async def _error(call) -> tuple[grpc.StatusCode, str, str, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value.code(), *_reason(caught.value), caught.value.details()


# ---- statistics ---------------------------------------------------------------------------


async def test_statistics_equal_a_direct_computation(server, channel, stub, upper_sae):
    sae_id, sae = upper_sae
    before = await stub.GetFeature(pb.GetFeatureRequest(sae_id=sae_id, index=0))
    assert not before.feature.HasField("statistics") and before.feature.suggested_strength == 0
    corpus_id = await _upload(channel, "cases.txt", CORPUS)
    started = await stub.ComputeFeatureStatistics(
        pb.ComputeFeatureStatisticsRequest(
            sae_id=sae_id, corpus_id=corpus_id, max_tokens=300, context_radius=3, top_contexts=4
        )
    )
    assert started.operation.kind == operation_pb2.OPERATION_KIND_FEATURE_STATISTICS
    snapshots = await _finish(channel, started.operation.id)
    assert snapshots[-1].state == operation_pb2.OPERATION_STATE_SUCCEEDED, snapshots[-1]
    # Directly: the same windows, the first position of each left out.
    engine = server.host.engine
    model = engine.loaded_model.model
    site = capture_site(model, HOOK, "hook")
    path = server.features._corpora.path(corpus_id)
    acts, ids = [], []
    for windows in corpus_windows(
        read_documents([path], "text"), engine.loaded_model.tokenizer, 300
    ):
        hidden = await engine.call_on_lane(lambda w=windows: capture(model, [site], w))
        acts.append(sae.encode(hidden[0])[:, 1:].reshape(-1, sae.d_sae))
        ids.append(windows[:, 1:].reshape(-1))
    flat = torch.cat(acts)
    assert flat.shape[0] == 300
    stored = server.features.store.load(server.saes.catalog.get(sae_id).record.weights_sha256)
    assert stored is not None and stored.tokens == 300
    assert torch.equal(stored.firing_count, (flat > 0).sum(0))
    assert torch.allclose(stored.max_activation, flat.amax(0), rtol=1e-4, atol=1e-5)
    # The dashboard of the feature with the strongest activation holds its argmax.
    feature = int(flat.amax(0).argmax())
    where = int(flat[:, feature].argmax())
    shown = (await stub.GetFeature(pb.GetFeatureRequest(sae_id=sae_id, index=feature))).feature
    assert shown.statistics.tokens == 300
    assert shown.statistics.firing_rate == pytest.approx(
        float((flat[:, feature] > 0).float().mean())
    )
    assert shown.statistics.max_activation == pytest.approx(float(flat[:, feature].max()), rel=1e-4)
    assert sum(shown.statistics.histogram.counts) == int((flat[:, feature] > 0).sum())
    assert len(shown.statistics.histogram.bin_edges) == len(shown.statistics.histogram.counts) + 1
    top = shown.top_contexts[0]
    assert top.max_activation == pytest.approx(float(flat[where, feature]), rel=1e-4)
    peak_token = engine.loaded_model.tokenizer.decode([int(torch.cat(ids)[where])])
    assert top.tokens[top.peak] == peak_token
    assert top.activations[top.peak] == pytest.approx(top.max_activation, rel=1e-2)
    q = shown.statistics.quantiles
    assert len(q) == 3 and q[0] <= q[1] <= q[2] <= shown.statistics.max_activation
    assert shown.suggested_strength == pytest.approx(q[2])
    # The statistics travel with the SAE when it is exported.
    saes = spb_grpc.SaeServiceStub(channel)
    request = spb.ExportSaeRequest(id=sae_id, layout=sae_pb2.SAE_LAYOUT_SAELENS)
    data = b"".join([c.data async for c in saes.ExportSae(request)])
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert CORPUS_STATISTICS_FILE in archive.namelist()


# ---- logit lens -------------------------------------------------------------------------------


async def test_logit_lens_equals_a_direct_computation(server, stub, upper_sae):
    sae_id, sae = upper_sae
    shown = (
        await stub.GetFeature(pb.GetFeatureRequest(sae_id=sae_id, index=5, lens_tokens=4))
    ).feature
    model = server.host.engine.loaded_model.model
    with torch.inference_mode():
        row = sae.weights.W_dec[5].to(model.lm_head.weight.dtype)
        logits = model.lm_head(model.model.norm(row)).float()
    assert [t.token_id for t in shown.promoted] == logits.topk(4).indices.tolist()
    assert [t.token_id for t in shown.suppressed] == logits.topk(4, largest=False).indices.tolist()
    assert shown.promoted[0].logit == pytest.approx(float(logits.max()), rel=1e-4)
    tokenizer = server.host.engine.loaded_model.tokenizer
    assert shown.promoted[0].token == tokenizer.decode([shown.promoted[0].token_id])
    assert torch.allclose(decoder_row_logits(model, sae.weights.W_dec[5]), logits, atol=1e-4)


# ---- search ------------------------------------------------------------------------------------


async def test_search_by_text_ranks_by_total_activation(server, stub, upper_sae):
    sae_id, sae = upper_sae
    text = LOWER[0].upper()
    found = await stub.SearchFeaturesByText(
        pb.SearchFeaturesByTextRequest(sae_id=sae_id, text=text, limit=5)
    )
    [hidden] = await _hidden(server, [text])
    acts = sae.encode(hidden)
    acts[0] = 0  # the first position is left out
    totals = acts.sum(0)
    assert [h.index for h in found.hits] == totals.topk(5).indices.tolist()
    assert 0 in [h.index for h in found.hits]
    first = found.hits[0]
    assert first.total_activation == pytest.approx(float(totals.max()), rel=1e-4)
    assert list(first.positions) == (acts[:, first.index] > 0).nonzero().view(-1).tolist()
    assert len(found.tokens) == hidden.shape[0]


async def test_contrast_finds_the_upper_case_feature(stub, upper_sae):
    sae_id, _ = upper_sae
    ranked = {}
    for measure in (pb.CONTRAST_MEASURE_AUROC, pb.CONTRAST_MEASURE_FIRING_RATE_GAP):
        found = await stub.ContrastFeatures(
            pb.ContrastFeaturesRequest(
                sae_id=sae_id,
                positive_texts=LOWER,
                transform=pb.TEXT_TRANSFORM_UPPERCASE,
                measure=measure,
                limit=48,
            )
        )
        assert found.measure == measure and len(found.hits) == 48
        ranked[measure] = found.hits
    by_auroc = [h.auroc for h in ranked[pb.CONTRAST_MEASURE_AUROC]]
    by_gap = [h.firing_rate_gap for h in ranked[pb.CONTRAST_MEASURE_FIRING_RATE_GAP]]
    assert by_auroc == sorted(by_auroc, reverse=True) and by_gap == sorted(by_gap, reverse=True)
    # Random features can separate four texts by chance; the constructed one must.
    upper = next(h for h in ranked[pb.CONTRAST_MEASURE_AUROC] if h.index == 0)
    assert upper.auroc == 1.0 and upper.firing_rate_gap > 0
    assert upper.mean_positive > upper.mean_negative and upper.suggested_strength > 0
    explicit = await stub.ContrastFeatures(
        pb.ContrastFeaturesRequest(
            sae_id=sae_id, positive_texts=[t.upper() for t in LOWER], negative_texts=LOWER, limit=48
        )
    )
    assert [(h.index, h.auroc) for h in explicit.hits] == [
        (h.index, h.auroc) for h in ranked[pb.CONTRAST_MEASURE_AUROC]
    ]


# ---- labels --------------------------------------------------------------------------------------


async def test_labels_round_trip_search_and_neuronpedia(stub, upper_sae):
    sae_id, _ = upper_sae
    stored = await stub.SetFeatureLabel(
        pb.SetFeatureLabelRequest(sae_id=sae_id, index=0, label="Upper Case", notes="from a test")
    )
    assert (stored.label.label, stored.label.source) == ("Upper Case", "user")
    shown = (await stub.GetFeature(pb.GetFeatureRequest(sae_id=sae_id, index=0))).feature
    assert shown.label.label == "Upper Case"
    found = await stub.SearchFeatureLabels(
        pb.SearchFeatureLabelsRequest(sae_id=sae_id, query="upper")
    )
    assert [x.index for x in found.labels] == [0]
    by_notes = await stub.SearchFeatureLabels(
        pb.SearchFeatureLabelsRequest(sae_id=sae_id, query="A TEST")
    )
    assert [x.index for x in by_notes.labels] == [0]
    imported = await stub.ImportFeatureLabels(
        pb.ImportFeatureLabelsRequest(
            sae_id=sae_id, data=NEURONPEDIA.read_bytes(), format=pb.LABEL_FORMAT_NEURONPEDIA
        )
    )
    assert (imported.imported, imported.skipped) == (3, 0)
    exported = json.loads(
        (await stub.ExportFeatureLabels(pb.ExportFeatureLabelsRequest(sae_id=sae_id))).data
    )
    assert [(x["index"], x["label"], x["source"]) for x in exported["labels"]] == [
        (0, "Upper Case", "user"),
        (1, "upper-case letters", "neuronpedia"),
        (5, "words about the sea", "neuronpedia"),
        (7, "closing brackets", "neuronpedia"),
    ]
    upper = await stub.SearchFeatureLabels(
        pb.SearchFeatureLabelsRequest(sae_id=sae_id, query="UPPER")
    )
    assert [x.index for x in upper.labels] == [0, 1]
    # Re-importing miLLM's own export keeps what exists unless told to overwrite.
    exported["labels"][0]["label"] = "changed"
    again = json.dumps(exported).encode()
    kept = await stub.ImportFeatureLabels(pb.ImportFeatureLabelsRequest(sae_id=sae_id, data=again))
    assert (kept.imported, kept.skipped) == (0, 4)
    replaced = await stub.ImportFeatureLabels(
        pb.ImportFeatureLabelsRequest(sae_id=sae_id, data=again, overwrite=True)
    )
    assert replaced.imported == 4
    shown = (await stub.GetFeature(pb.GetFeatureRequest(sae_id=sae_id, index=0))).feature
    assert (shown.label.label, shown.label.source) == ("changed", "millm-import")
    cleared = await stub.SetFeatureLabel(pb.SetFeatureLabelRequest(sae_id=sae_id, index=0))
    assert not cleared.HasField("label")
    shown = (await stub.GetFeature(pb.GetFeatureRequest(sae_id=sae_id, index=0))).feature
    assert not shown.HasField("label")


# ---- errors ----------------------------------------------------------------------------


async def test_errors_name_what_is_wrong(stub, upper_sae, gpt2_sae):
    sae_id, _ = upper_sae
    code, reason, _, _ = await _error(stub.GetFeature(pb.GetFeatureRequest(sae_id="sae-nope")))
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "NOT_FOUND")
    code, reason, _, _ = await _error(
        stub.SearchFeatureLabels(pb.SearchFeatureLabelsRequest(sae_id="sae-nope", query="x"))
    )
    assert code == grpc.StatusCode.NOT_FOUND
    code, reason, _, _ = await _error(
        stub.SearchFeaturesByText(pb.SearchFeaturesByTextRequest(sae_id=gpt2_sae, text="hi"))
    )
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "INCOMPATIBLE_SAE")
    code, reason, param, _ = await _error(
        stub.GetFeature(pb.GetFeatureRequest(sae_id=sae_id, index=48))
    )
    assert (code, reason, param) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", "index")
    code, _, param, _ = await _error(
        stub.SetFeatureLabel(pb.SetFeatureLabelRequest(sae_id=sae_id, index=99, label="x"))
    )
    assert (code, param) == (grpc.StatusCode.INVALID_ARGUMENT, "index")
    for data, layout, words in (
        (b"{not json", pb.LABEL_FORMAT_MILLM, "not UTF-8 JSON"),
        (
            b'{"labels": [{"index": 100, "label": "x"}]}',
            pb.LABEL_FORMAT_MILLM,
            "labels[0].index is 100",
        ),
        (b'[{"index": "3"}]', pb.LABEL_FORMAT_NEURONPEDIA, "[0].description"),
        (b'{"a": 1}', pb.LABEL_FORMAT_NEURONPEDIA, "JSON list"),
    ):
        code, _, param, details = await _error(
            stub.ImportFeatureLabels(
                pb.ImportFeatureLabelsRequest(sae_id=sae_id, data=data, format=layout)
            )
        )
        assert (code, param) == (grpc.StatusCode.INVALID_ARGUMENT, "data") and words in details
    code, _, param, _ = await _error(
        stub.ComputeFeatureStatistics(
            pb.ComputeFeatureStatisticsRequest(sae_id=sae_id, corpus_id="nope")
        )
    )
    assert (code, param) == (grpc.StatusCode.NOT_FOUND, "corpus_id")
