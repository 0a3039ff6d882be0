"""/api/v1/saes and /api/v1/sae-releases: finding SAEs, the SAE cache, attach and detach.

Route order matters: `/saes/{id}` would also match "cache" and "attachments",
so the fixed paths are registered first, then the `{id}/<verb>` routes, and
the bare `{id}` routes last.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Annotated

import grpc
from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.types import Receive, Scope, Send

from millm.v1 import operation_pb2 as opb
from millm.v1 import sae_service_pb2 as sspb
from openai_bridge.errors import InferenceError
from openai_bridge.management import translate
from openai_bridge.management.schemas import (
    SaeDownloadBody,
    SaeHookBody,
    SaeImportBody,
    SaeLayoutName,
    SaePreviewBody,
    SaeUploadBody,
)
from openai_bridge.state import Management

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1")

PageSize = Annotated[int | None, Query()]
PageToken = Annotated[str | None, Query(max_length=1024)]


def _operation_accepted(operation: opb.Operation) -> JSONResponse:
    location = f"/api/v1/operations/{operation.id}"
    return JSONResponse(
        translate.operation(operation), status_code=202, headers={"Location": location}
    )


# ---------------------------------------------------------------- fixed paths


@router.get("/sae-releases")
async def list_sae_releases(
    management: Management,
    model: Annotated[str | None, Query(max_length=200)] = None,
    page_size: PageSize = None,
    page_token: PageToken = None,
) -> JSONResponse:
    request = translate.list_sae_releases_request(model, page_size, page_token)
    response = await management.unary(management.stubs.saes.ListSaeReleases, request)
    releases = [translate.sae_release(r) for r in response.releases]
    return JSONResponse(translate.page(releases, response.next_page_token))


@router.get("/saes")
async def list_saes(
    management: Management, page_size: PageSize = None, page_token: PageToken = None
) -> JSONResponse:
    response = await management.unary(
        management.stubs.saes.ListSaes, translate.list_saes_request(page_size, page_token)
    )
    saes = [translate.sae(s) for s in response.saes]
    return JSONResponse(translate.page(saes, response.next_page_token))


@router.get("/saes/cache")
async def get_sae_cache_usage(management: Management) -> JSONResponse:
    response = await management.unary(
        management.stubs.saes.GetSaeCacheUsage, sspb.GetSaeCacheUsageRequest()
    )
    return JSONResponse(translate.sae_cache_usage(response))


@router.get("/saes/attachments")
async def list_sae_attachments(management: Management) -> JSONResponse:
    response = await management.unary(
        management.stubs.saes.ListSaeAttachments, sspb.ListSaeAttachmentsRequest()
    )
    return JSONResponse({"data": [translate.sae_attachment(a) for a in response.attachments]})


@router.post("/saes/preview")
async def preview_sae_repo(body: SaePreviewBody, management: Management) -> JSONResponse:
    response = await management.unary(
        management.stubs.saes.PreviewSaeRepo, translate.preview_sae_request(body)
    )
    return JSONResponse(translate.sae_preview(response))


@router.post("/saes/download", status_code=202)
async def download_sae(body: SaeDownloadBody, management: Management) -> JSONResponse:
    response = await management.unary(
        management.stubs.saes.DownloadSae, translate.download_sae_request(body)
    )
    return _operation_accepted(response.operation)


@router.post("/saes/import", status_code=201)
async def import_sae(body: SaeImportBody, management: Management) -> JSONResponse:
    response = await management.unary(
        management.stubs.saes.ImportSae, translate.import_sae_request(body)
    )
    location = f"/api/v1/saes/{response.sae.id}"
    return JSONResponse(
        translate.sae(response.sae), status_code=201, headers={"Location": location}
    )


@router.post("/saes/detach")
async def detach_sae(management: Management, body: SaeHookBody | None = None) -> JSONResponse:
    response = await management.unary(
        management.stubs.saes.DetachSae, translate.detach_request(body or SaeHookBody())
    )
    return JSONResponse(translate.detach_result(response))


# ---------------------------------------------------------------- /saes/{id}/<verb>


@router.post("/saes/{id}/compatibility")
async def check_sae_compatibility(
    id: str, management: Management, body: SaeHookBody | None = None
) -> JSONResponse:
    request = translate.compatibility_request(id, body or SaeHookBody())
    response = await management.unary(management.stubs.saes.CheckSaeCompatibility, request)
    return JSONResponse(translate.sae_compatibility(response.compatibility))


@router.post("/saes/{id}/attach")
async def attach_sae(
    id: str, management: Management, body: SaeHookBody | None = None
) -> JSONResponse:
    response = await management.unary(
        management.stubs.saes.AttachSae, translate.attach_request(id, body or SaeHookBody())
    )
    return JSONResponse(translate.attach_result(response))


@router.post("/saes/{id}/upload", status_code=202)
async def upload_sae(id: str, body: SaeUploadBody, management: Management) -> JSONResponse:
    response = await management.unary(
        management.stubs.saes.UploadSae, translate.upload_sae_request(id, body)
    )
    return _operation_accepted(response.operation)


@router.get("/saes/{id}/export", response_model=None)
async def export_sae(
    id: str, management: Management, layout: Annotated[SaeLayoutName | None, Query()] = None
) -> StreamingResponse:
    """Streams the zip through as it comes. The first chunk is read here, before any
    status is sent, so that a failure to start (unknown id, unreadable files) is an
    ordinary JSON error; a failure after that can only cut the download short."""
    request = translate.export_request(id, layout)
    chunks = management.server_stream(management.stubs.saes.ExportSae, request)
    try:
        first = await anext(chunks)
    except StopAsyncIteration:
        raise InferenceError(
            grpc.StatusCode.INTERNAL, "INTERNAL", "The inference service sent an empty archive."
        ) from None
    disposition = translate.export_content_disposition(first.filename, id)
    return _ArchiveResponse(_archive_body(id, first.data, chunks), disposition)


# ---------------------------------------------------------------- bare /saes/{id}


@router.get("/saes/{id}")
async def get_sae(id: str, management: Management) -> JSONResponse:
    response = await management.unary(management.stubs.saes.GetSae, sspb.GetSaeRequest(id=id))
    return JSONResponse(translate.sae(response.sae))


@router.delete("/saes/{id}")
async def delete_sae(id: str, management: Management) -> JSONResponse:
    response = await management.unary(management.stubs.saes.DeleteSae, sspb.DeleteSaeRequest(id=id))
    return JSONResponse(translate.sae_delete_result(id, response))


# ---------------------------------------------------------------- export streaming


async def _archive_body(
    id_: str, first: bytes, chunks: AsyncIterator[sspb.ExportSaeResponse]
) -> AsyncGenerator[bytes, None]:
    try:
        yield first
        async for chunk in chunks:
            yield chunk.data
    except InferenceError as error:
        log.warning("export of SAE %s failed after it started: %s", id_, error.message)
        raise
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]


class _ArchiveResponse(StreamingResponse):
    """A streaming response that always closes its body, and so the gRPC export.

    Starlette cancels the send when the client leaves but does not close the
    body iterator; without this the export would run on until garbage collection.
    A failure after the 200 ends the response without its last chunk, so the
    server drops the connection and the client sees a cut transfer, never a
    complete-looking truncated zip.
    """

    def __init__(self, body: AsyncGenerator[bytes, None], content_disposition: str) -> None:
        super().__init__(
            body,
            media_type="application/zip",
            headers={"Content-Disposition": content_disposition},
        )
        self._body = body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except InferenceError:
            return  # logged by the body; re-raising would only add a traceback
        finally:
            await self._body.aclose()
