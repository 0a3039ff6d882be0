"""/api/v1/training: SAE training runs, their metrics and live progress, corpora, templates.

Every route answers its RPC's response message as JSON (`{"run": {...}}`,
`{"template": {...}}`, ...); lists answer `{"data": [...], "next_page_token"}`
as everywhere in /api/v1. Fixed paths (`templates/import`) are registered
before the `{id}` routes.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

import grpc
from fastapi import APIRouter, Query, Request, WebSocket
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

from millm.v1 import training_pb2 as tpb
from millm.v1 import training_service_pb2 as tspb
from openai_bridge import proto_json
from openai_bridge.errors import InferenceError, invalid_request
from openai_bridge.grpc_calls import ServiceCalls
from openai_bridge.management import watch
from openai_bridge.management.common import (
    PageSize,
    PageToken,
    attachment,
    created,
    given,
    paging,
    safe_filename,
)
from openai_bridge.management.schemas import (
    TEMPLATE_NAME_MAX,
    UINT64_MAX,
    TrainingResumeBody,
    TrainingRunBody,
    TrainingTemplateBody,
    TrainingTemplateDuplicateBody,
    TrainingTemplateUpdateBody,
)
from openai_bridge.request_checks import loads_bounded
from openai_bridge.state import Management

router = APIRouter(prefix="/api/v1/training")

CORPUS_NAME_MAX = 255
# Limits of the service (ListTrainingMetricsRequest.limit).
MAX_METRICS_LIMIT = 10_000
# The service stores the upload as it comes; 1 MiB messages keep each one well
# under gRPC's 4 MiB default limit while costing few round trips.
UPLOAD_CHUNK_BYTES = 1 << 20


# A run in one of these states trains no more; its watch ends after it.
TRAINING_FINAL_STATES = frozenset(
    {
        tpb.TRAINING_STATE_STOPPED,
        tpb.TRAINING_STATE_COMPLETED,
        tpb.TRAINING_STATE_FAILED,
        tpb.TRAINING_STATE_INTERRUPTED,
    }
)


def list_metrics_request(
    id_: str, after_step: int | None, limit: int | None
) -> tspb.ListTrainingMetricsRequest:
    """0 for `limit` lets the service choose (1000)."""
    if after_step is not None and not 0 <= after_step <= UINT64_MAX:
        raise invalid_request(f"`after_step` must be 0 to {UINT64_MAX}.", "after_step")
    if limit is not None and not 1 <= limit <= MAX_METRICS_LIMIT:
        raise invalid_request(f"`limit` must be 1 to {MAX_METRICS_LIMIT}.", "limit")
    return tspb.ListTrainingMetricsRequest(id=id_, after_step=after_step or 0, limit=limit or 0)


def template_filename(document: str, id_: str) -> str:
    """`<template name>.json` from the exported document, header-safe (the id if no name)."""
    try:
        value = json.loads(document)
    except ValueError:
        value = None
    name = value.get("name") if isinstance(value, dict) else None
    stem = safe_filename(name) if isinstance(name, str) else ""
    return f"{stem or id_}.json"


async def upload_requests(
    name: str, body: AsyncIterator[bytes]
) -> AsyncIterator[tspb.UploadCorpusRequest]:
    """The UploadCorpus messages for a raw body: the name, then ~1 MiB pieces of data."""
    yield tspb.UploadCorpusRequest(name=name)
    pending = bytearray()
    async for piece in body:
        pending += piece
        while len(pending) >= UPLOAD_CHUNK_BYTES:
            yield tspb.UploadCorpusRequest(data=bytes(pending[:UPLOAD_CHUNK_BYTES]))
            del pending[:UPLOAD_CHUNK_BYTES]
    if pending:
        yield tspb.UploadCorpusRequest(data=bytes(pending))


def _created(location: str, response: Any) -> JSONResponse:
    return created(location, proto_json.to_json(response))


# ---------------------------------------------------------------- runs


@router.post("/runs", status_code=201)
async def start_training(body: TrainingRunBody, management: Management) -> JSONResponse:
    request = proto_json.message(tspb.StartTrainingRequest, given(body))
    response = await management.unary(management.stubs.training.StartTraining, request)
    return _created(f"/api/v1/training/runs/{response.run.id}", response)


@router.get("/runs")
async def list_training_runs(
    management: Management,
    page_size: PageSize = None,
    page_token: PageToken = None,
) -> JSONResponse:
    request = tspb.ListTrainingRunsRequest(**paging(page_size, page_token))
    response = await management.unary(management.stubs.training.ListTrainingRuns, request)
    return JSONResponse(proto_json.page(response.runs, response.next_page_token))


@router.get("/runs/{id}/metrics")
async def list_training_metrics(
    id: str,
    management: Management,
    after_step: Annotated[int | None, Query()] = None,
    limit: Annotated[int | None, Query()] = None,
) -> JSONResponse:
    request = list_metrics_request(id, after_step, limit)
    response = await management.unary(management.stubs.training.ListTrainingMetrics, request)
    return JSONResponse(proto_json.page(response.metrics))


@router.post("/runs/{id}/stop")
async def stop_training(id: str, management: Management) -> JSONResponse:
    response = await management.unary(
        management.stubs.training.StopTraining, tspb.StopTrainingRequest(id=id)
    )
    return JSONResponse(proto_json.to_json(response))


@router.post("/runs/{id}/resume")
async def resume_training(
    id: str, management: Management, body: TrainingResumeBody | None = None
) -> JSONResponse:
    request = proto_json.message(tspb.ResumeTrainingRequest, {"id": id, **given(body)})
    response = await management.unary(management.stubs.training.ResumeTraining, request)
    return JSONResponse(proto_json.to_json(response))


@router.websocket("/runs/{id}/watch")
async def watch_training_run(websocket: WebSocket, id: str) -> None:
    """One `{"type": "run", "run": {...}, "metrics": [...]}` frame per change; close 1000
    once the run has finished. Errors as on /api/v1/operations/{id}/watch."""

    async def frames(management: ServiceCalls) -> AsyncIterator[str]:
        request = tspb.WatchTrainingRunRequest(id=id)
        updates = watch.until_final(
            management.server_stream(management.stubs.training.WatchTrainingRun, request),
            lambda update: update.run.state in TRAINING_FINAL_STATES,
            "run",
        )
        try:
            async for update in updates:
                yield proto_json.compact({"type": "run", **proto_json.to_json(update)})
        finally:
            await updates.aclose()  # type: ignore[attr-defined]

    await watch.relay(websocket, frames, f"training run {id}")


@router.get("/runs/{id}")
async def get_training_run(id: str, management: Management) -> JSONResponse:
    response = await management.unary(
        management.stubs.training.GetTrainingRun, tspb.GetTrainingRunRequest(id=id)
    )
    return JSONResponse(proto_json.to_json(response))


@router.delete("/runs/{id}")
async def delete_training_run(id: str, management: Management) -> JSONResponse:
    response = await management.unary(
        management.stubs.training.DeleteTrainingRun, tspb.DeleteTrainingRunRequest(id=id)
    )
    return JSONResponse(proto_json.to_json(response))


# ---------------------------------------------------------------- corpora


@router.post("/corpora", status_code=201)
async def upload_corpus(
    request: Request,
    management: Management,
    name: Annotated[str | None, Query(max_length=CORPUS_NAME_MAX)] = None,
) -> JSONResponse:
    """The body is the file itself, streamed on to the service as it arrives."""
    if not name:
        raise invalid_request("Name the file in the query: `?name=corpus.jsonl` (or .txt).", "name")
    if request.headers.get("content-type", "").startswith("multipart/"):
        raise invalid_request(
            "Send the file itself as the body (curl --data-binary @corpus.jsonl), not a form."
        )
    messages = upload_requests(name, request.stream())
    try:
        response = await management.client_stream(management.stubs.training.UploadCorpus, messages)
    except ClientDisconnect:
        raise InferenceError(
            grpc.StatusCode.CANCELLED, None, "The client went away during the upload."
        ) from None
    finally:
        await messages.aclose()  # type: ignore[attr-defined]
    return _created(f"/api/v1/training/corpora/{response.corpus.id}", response)


@router.get("/corpora")
async def list_corpora(management: Management) -> JSONResponse:
    response = await management.unary(
        management.stubs.training.ListCorpora, tspb.ListCorporaRequest()
    )
    return JSONResponse(proto_json.page(response.corpora))


@router.delete("/corpora/{id}")
async def delete_corpus(id: str, management: Management) -> JSONResponse:
    response = await management.unary(
        management.stubs.training.DeleteCorpus, tspb.DeleteCorpusRequest(id=id)
    )
    return JSONResponse(proto_json.to_json(response))


# ---------------------------------------------------------------- templates


def _template_created(response: Any) -> JSONResponse:
    return _created(f"/api/v1/training/templates/{response.template.id}", response)


@router.post("/templates", status_code=201)
async def create_training_template(
    body: TrainingTemplateBody, management: Management
) -> JSONResponse:
    request = proto_json.message(tspb.CreateTrainingTemplateRequest, given(body))
    response = await management.unary(management.stubs.training.CreateTrainingTemplate, request)
    return _template_created(response)


@router.get("/templates")
async def list_training_templates(management: Management) -> JSONResponse:
    response = await management.unary(
        management.stubs.training.ListTrainingTemplates, tspb.ListTrainingTemplatesRequest()
    )
    return JSONResponse(proto_json.page(response.templates))


@router.post("/templates/import", status_code=201)
async def import_training_template(
    request: Request,
    management: Management,
    name: Annotated[str | None, Query(max_length=TEMPLATE_NAME_MAX)] = None,
) -> JSONResponse:
    """Takes the exported document as it is; the service reads and checks it."""
    try:
        document = (await request.body()).decode("utf-8")
    except UnicodeDecodeError:
        raise invalid_request("The template is not UTF-8 text.", "json") from None
    # Parsed here only to refuse what would fail deep in the service (nesting, lone
    # surrogates); the text goes on verbatim.
    loads_bounded(document, "The template", "json")
    response = await management.unary(
        management.stubs.training.ImportTrainingTemplate,
        tspb.ImportTrainingTemplateRequest(json=document, name=name or ""),
    )
    return _template_created(response)


@router.post("/templates/{id}/duplicate", status_code=201)
async def duplicate_training_template(
    id: str, management: Management, body: TrainingTemplateDuplicateBody | None = None
) -> JSONResponse:
    request = proto_json.message(tspb.DuplicateTrainingTemplateRequest, {"id": id, **given(body)})
    response = await management.unary(management.stubs.training.DuplicateTrainingTemplate, request)
    return _template_created(response)


@router.get("/templates/{id}/export", response_model=None)
async def export_training_template(id: str, management: Management) -> Response:
    """The service's JSON, byte for byte, as a download named after the template."""
    response = await management.unary(
        management.stubs.training.ExportTrainingTemplate, tspb.ExportTrainingTemplateRequest(id=id)
    )
    headers = attachment(template_filename(response.json, id), id)
    return Response(response.json, media_type="application/json", headers=headers)


@router.get("/templates/{id}")
async def get_training_template(id: str, management: Management) -> JSONResponse:
    response = await management.unary(
        management.stubs.training.GetTrainingTemplate, tspb.GetTrainingTemplateRequest(id=id)
    )
    return JSONResponse(proto_json.to_json(response))


@router.patch("/templates/{id}")
async def update_training_template(
    id: str, body: TrainingTemplateUpdateBody, management: Management
) -> JSONResponse:
    request = proto_json.message(tspb.UpdateTrainingTemplateRequest, {"id": id, **given(body)})
    response = await management.unary(management.stubs.training.UpdateTrainingTemplate, request)
    return JSONResponse(proto_json.to_json(response))


@router.delete("/templates/{id}")
async def delete_training_template(id: str, management: Management) -> JSONResponse:
    response = await management.unary(
        management.stubs.training.DeleteTrainingTemplate, tspb.DeleteTrainingTemplateRequest(id=id)
    )
    return JSONResponse(proto_json.to_json(response))
