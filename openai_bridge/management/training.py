"""/api/v1/training: SAE training runs, their metrics and live progress, corpora, templates.

Every route answers its RPC's response message as JSON (`{"run": {...}}`,
`{"corpora": [...]}`, ...) in the conventions of `training_translate`. Fixed
paths (`templates/import`) are registered before the `{id}` routes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

import grpc
from fastapi import APIRouter, Query, Request, WebSocket
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

from millm.v1 import training_pb2 as tpb
from millm.v1 import training_service_pb2 as tspb
from openai_bridge.errors import InferenceError, invalid_request
from openai_bridge.grpc_calls import ServiceCalls
from openai_bridge.management import training_translate as translate
from openai_bridge.management import watch
from openai_bridge.management.schemas import (
    TEMPLATE_NAME_MAX,
    TrainingResumeBody,
    TrainingRunBody,
    TrainingTemplateBody,
    TrainingTemplateDuplicateBody,
    TrainingTemplateUpdateBody,
)
from openai_bridge.management.translate import export_content_disposition
from openai_bridge.request_checks import loads_bounded
from openai_bridge.state import Management

router = APIRouter(prefix="/api/v1/training")

CORPUS_NAME_MAX = 255

# A run in one of these states trains no more; its watch ends after it.
TRAINING_FINAL_STATES = frozenset(
    {
        tpb.TRAINING_STATE_STOPPED,
        tpb.TRAINING_STATE_COMPLETED,
        tpb.TRAINING_STATE_FAILED,
        tpb.TRAINING_STATE_INTERRUPTED,
    }
)


def _created(location: str, payload: dict[str, Any]) -> JSONResponse:
    return JSONResponse(payload, status_code=201, headers={"Location": location})


# ---------------------------------------------------------------- runs


@router.post("/runs", status_code=201)
async def start_training(body: TrainingRunBody, management: Management) -> JSONResponse:
    response = await management.unary(
        management.stubs.training.StartTraining, translate.start_request(body)
    )
    return _created(f"/api/v1/training/runs/{response.run.id}", translate.message_json(response))


@router.get("/runs")
async def list_training_runs(
    management: Management,
    page_size: Annotated[int | None, Query()] = None,
    page_token: Annotated[str | None, Query(max_length=1024)] = None,
) -> JSONResponse:
    response = await management.unary(
        management.stubs.training.ListTrainingRuns,
        translate.list_runs_request(page_size, page_token),
    )
    return JSONResponse(translate.message_json(response))


@router.get("/runs/{id}/metrics")
async def list_training_metrics(
    id: str,
    management: Management,
    after_step: Annotated[int | None, Query()] = None,
    limit: Annotated[int | None, Query()] = None,
) -> JSONResponse:
    request = translate.list_metrics_request(id, after_step, limit)
    response = await management.unary(management.stubs.training.ListTrainingMetrics, request)
    return JSONResponse(translate.message_json(response))


@router.post("/runs/{id}/stop")
async def stop_training(id: str, management: Management) -> JSONResponse:
    response = await management.unary(
        management.stubs.training.StopTraining, tspb.StopTrainingRequest(id=id)
    )
    return JSONResponse(translate.message_json(response))


@router.post("/runs/{id}/resume")
async def resume_training(
    id: str, management: Management, body: TrainingResumeBody | None = None
) -> JSONResponse:
    from_scratch = body.from_scratch if body is not None else False
    request = tspb.ResumeTrainingRequest(id=id, from_scratch=from_scratch)
    response = await management.unary(management.stubs.training.ResumeTraining, request)
    return JSONResponse(translate.message_json(response))


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
                yield translate.watch_frame(update)
        finally:
            await updates.aclose()  # type: ignore[attr-defined]

    await watch.relay(websocket, frames, f"training run {id}")


@router.get("/runs/{id}")
async def get_training_run(id: str, management: Management) -> JSONResponse:
    response = await management.unary(
        management.stubs.training.GetTrainingRun, tspb.GetTrainingRunRequest(id=id)
    )
    return JSONResponse(translate.message_json(response))


@router.delete("/runs/{id}")
async def delete_training_run(id: str, management: Management) -> JSONResponse:
    response = await management.unary(
        management.stubs.training.DeleteTrainingRun, tspb.DeleteTrainingRunRequest(id=id)
    )
    return JSONResponse(translate.message_json(response))


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
    messages = translate.upload_requests(name, request.stream())
    try:
        response = await management.client_stream(management.stubs.training.UploadCorpus, messages)
    except ClientDisconnect:
        raise InferenceError(
            grpc.StatusCode.CANCELLED, None, "The client went away during the upload."
        ) from None
    finally:
        await messages.aclose()  # type: ignore[attr-defined]
    location = f"/api/v1/training/corpora/{response.corpus.id}"
    return _created(location, translate.message_json(response))


@router.get("/corpora")
async def list_corpora(management: Management) -> JSONResponse:
    response = await management.unary(
        management.stubs.training.ListCorpora, tspb.ListCorporaRequest()
    )
    return JSONResponse(translate.message_json(response))


@router.delete("/corpora/{id}")
async def delete_corpus(id: str, management: Management) -> JSONResponse:
    response = await management.unary(
        management.stubs.training.DeleteCorpus, tspb.DeleteCorpusRequest(id=id)
    )
    return JSONResponse(translate.message_json(response))


# ---------------------------------------------------------------- templates


def _template_created(response: Any) -> JSONResponse:
    location = f"/api/v1/training/templates/{response.template.id}"
    return _created(location, translate.message_json(response))


@router.post("/templates", status_code=201)
async def create_training_template(
    body: TrainingTemplateBody, management: Management
) -> JSONResponse:
    response = await management.unary(
        management.stubs.training.CreateTrainingTemplate, translate.create_template_request(body)
    )
    return _template_created(response)


@router.get("/templates")
async def list_training_templates(management: Management) -> JSONResponse:
    response = await management.unary(
        management.stubs.training.ListTrainingTemplates, tspb.ListTrainingTemplatesRequest()
    )
    return JSONResponse(translate.message_json(response))


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
    name = body.name if body is not None and body.name else ""
    response = await management.unary(
        management.stubs.training.DuplicateTrainingTemplate,
        tspb.DuplicateTrainingTemplateRequest(id=id, name=name),
    )
    return _template_created(response)


@router.get("/templates/{id}/export", response_model=None)
async def export_training_template(id: str, management: Management) -> Response:
    """The service's JSON, byte for byte, as a download named after the template."""
    response = await management.unary(
        management.stubs.training.ExportTrainingTemplate, tspb.ExportTrainingTemplateRequest(id=id)
    )
    disposition = export_content_disposition(translate.template_filename(response.json, id), id)
    return Response(
        response.json,
        media_type="application/json",
        headers={"Content-Disposition": disposition},
    )


@router.get("/templates/{id}")
async def get_training_template(id: str, management: Management) -> JSONResponse:
    response = await management.unary(
        management.stubs.training.GetTrainingTemplate, tspb.GetTrainingTemplateRequest(id=id)
    )
    return JSONResponse(translate.message_json(response))


@router.patch("/templates/{id}")
async def update_training_template(
    id: str, body: TrainingTemplateUpdateBody, management: Management
) -> JSONResponse:
    response = await management.unary(
        management.stubs.training.UpdateTrainingTemplate,
        translate.update_template_request(id, body),
    )
    return JSONResponse(translate.message_json(response))


@router.delete("/templates/{id}")
async def delete_training_template(id: str, management: Management) -> JSONResponse:
    response = await management.unary(
        management.stubs.training.DeleteTrainingTemplate, tspb.DeleteTrainingTemplateRequest(id=id)
    )
    return JSONResponse(translate.message_json(response))
