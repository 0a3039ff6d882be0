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

from millm.v1 import sae_pb2 as spb
from millm.v1 import sae_service_pb2 as sspb
from openai_bridge import proto_json
from openai_bridge.errors import InferenceError, invalid_request
from openai_bridge.management.common import (
    PageSize,
    PageToken,
    attachment,
    created,
    given,
    operation_accepted,
    paging,
)
from openai_bridge.management.schemas import (
    SaeAttachBody,
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

SAE_SOURCE_REQUIRED = (
    "Name the SAE to download in one way: either `repo_id` (with optional `path` and "
    "`revision`) or `release` and `sae_id`."
)


def download_sae_request(body: SaeDownloadBody) -> sspb.DownloadSaeRequest:
    """The body names a Hub folder or a registry entry, never both (the `source` oneof)."""
    names_hub = body.repo_id is not None or body.path is not None or body.revision is not None
    names_release = body.release is not None or body.sae_id is not None
    if names_hub == names_release:
        raise invalid_request(SAE_SOURCE_REQUIRED)
    token = body.token or ""
    if names_release:
        if body.release is None:
            raise invalid_request("`sae_id` needs the `release` it belongs to.", "release")
        if body.sae_id is None:
            raise invalid_request("`release` needs the `sae_id` of one SAE in it.", "sae_id")
        release = spb.ReleaseSaeSource(release=body.release, sae_id=body.sae_id)
        return sspb.DownloadSaeRequest(release=release, token=token)
    if body.repo_id is None:
        raise invalid_request("`path` and `revision` need the `repo_id` they are in.", "repo_id")
    hub = spb.HubSaeSource(repo_id=body.repo_id, path=body.path or "", revision=body.revision or "")
    return sspb.DownloadSaeRequest(hub=hub, token=token)


# ---------------------------------------------------------------- fixed paths


@router.get("/sae-releases")
async def list_sae_releases(
    management: Management,
    model: Annotated[str | None, Query(max_length=200)] = None,
    page_size: PageSize = None,
    page_token: PageToken = None,
) -> JSONResponse:
    request = sspb.ListSaeReleasesRequest(model_filter=model or "", **paging(page_size, page_token))
    response = await management.unary(management.stubs.saes.ListSaeReleases, request)
    return JSONResponse(proto_json.page(response.releases, response.next_page_token))


@router.get("/saes")
async def list_saes(
    management: Management, page_size: PageSize = None, page_token: PageToken = None
) -> JSONResponse:
    request = sspb.ListSaesRequest(**paging(page_size, page_token))
    response = await management.unary(management.stubs.saes.ListSaes, request)
    return JSONResponse(proto_json.page(response.saes, response.next_page_token))


@router.get("/saes/cache")
async def get_sae_cache_usage(management: Management) -> JSONResponse:
    response = await management.unary(
        management.stubs.saes.GetSaeCacheUsage, sspb.GetSaeCacheUsageRequest()
    )
    return JSONResponse(proto_json.to_json(response))


@router.get("/saes/attachments")
async def list_sae_attachments(management: Management) -> JSONResponse:
    response = await management.unary(
        management.stubs.saes.ListSaeAttachments, sspb.ListSaeAttachmentsRequest()
    )
    # The list, plus how the start-up restore of the last attachment went.
    listing = proto_json.page(response.attachments)
    listing["restore"] = proto_json.to_json(response.restore)
    return JSONResponse(listing)


@router.post("/saes/preview")
async def preview_sae_repo(body: SaePreviewBody, management: Management) -> JSONResponse:
    request = proto_json.message(sspb.PreviewSaeRepoRequest, given(body))
    response = await management.unary(management.stubs.saes.PreviewSaeRepo, request)
    return JSONResponse(proto_json.to_json(response))


@router.post("/saes/download", status_code=202)
async def download_sae(body: SaeDownloadBody, management: Management) -> JSONResponse:
    response = await management.unary(management.stubs.saes.DownloadSae, download_sae_request(body))
    return operation_accepted(response.operation)


@router.post("/saes/import", status_code=201)
async def import_sae(body: SaeImportBody, management: Management) -> JSONResponse:
    request = proto_json.message(sspb.ImportSaeRequest, given(body))
    response = await management.unary(management.stubs.saes.ImportSae, request)
    return created(f"/api/v1/saes/{response.sae.id}", proto_json.to_json(response.sae))


@router.post("/saes/detach")
async def detach_sae(management: Management, body: SaeHookBody | None = None) -> JSONResponse:
    request = proto_json.message(sspb.DetachSaeRequest, given(body))
    response = await management.unary(management.stubs.saes.DetachSae, request)
    return JSONResponse(proto_json.to_json(response))


# ---------------------------------------------------------------- /saes/{id}/<verb>


@router.post("/saes/{id}/compatibility")
async def check_sae_compatibility(
    id: str, management: Management, body: SaeHookBody | None = None
) -> JSONResponse:
    request = proto_json.message(sspb.CheckSaeCompatibilityRequest, {"id": id, **given(body)})
    response = await management.unary(management.stubs.saes.CheckSaeCompatibility, request)
    return JSONResponse(proto_json.to_json(response.compatibility))


@router.post("/saes/{id}/attach")
async def attach_sae(
    id: str, management: Management, body: SaeAttachBody | None = None
) -> JSONResponse:
    request = proto_json.message(sspb.AttachSaeRequest, {"id": id, **given(body)})
    response = await management.unary(management.stubs.saes.AttachSae, request)
    return JSONResponse(proto_json.to_json(response))


@router.post("/saes/{id}/upload", status_code=202)
async def upload_sae(id: str, body: SaeUploadBody, management: Management) -> JSONResponse:
    request = proto_json.message(sspb.UploadSaeRequest, {"id": id, **given(body)})
    response = await management.unary(management.stubs.saes.UploadSae, request)
    return operation_accepted(response.operation)


@router.get("/saes/{id}/export", response_model=None)
async def export_sae(
    id: str, management: Management, layout: Annotated[SaeLayoutName | None, Query()] = None
) -> StreamingResponse:
    """Streams the zip through as it comes. The first chunk is read here, before any
    status is sent, so that a failure to start (unknown id, unreadable files) is an
    ordinary JSON error; a failure after that can only cut the download short."""
    request = proto_json.message(sspb.ExportSaeRequest, {"id": id, "layout": layout})
    chunks = management.server_stream(management.stubs.saes.ExportSae, request)
    try:
        first = await anext(chunks)
    except StopAsyncIteration:
        raise InferenceError(
            grpc.StatusCode.INTERNAL, "INTERNAL", "The inference service sent an empty archive."
        ) from None
    headers = attachment(first.filename, f"{id}.zip")
    return _ArchiveResponse(_archive_body(id, first.data, chunks), headers)


# ---------------------------------------------------------------- bare /saes/{id}


@router.get("/saes/{id}")
async def get_sae(id: str, management: Management) -> JSONResponse:
    response = await management.unary(management.stubs.saes.GetSae, sspb.GetSaeRequest(id=id))
    return JSONResponse(proto_json.to_json(response.sae))


@router.delete("/saes/{id}")
async def delete_sae(id: str, management: Management) -> JSONResponse:
    response = await management.unary(management.stubs.saes.DeleteSae, sspb.DeleteSaeRequest(id=id))
    return JSONResponse({"id": id, "deleted": True, **proto_json.to_json(response)})


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

    def __init__(self, body: AsyncGenerator[bytes, None], headers: dict[str, str]) -> None:
        super().__init__(body, media_type="application/zip", headers=headers)
        self._body = body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except InferenceError:
            return  # logged by the body; re-raising would only add a traceback
        finally:
            await self._body.aclose()
