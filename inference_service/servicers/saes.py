"""gRPC adapter for millm.v1.SaeService: Hub previews, the cache, attach and detach."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from inference_service.errors import InvalidArgumentError
from inference_service.sae import registry
from inference_service.sae.catalog import CachedSae, HubRef
from inference_service.sae.manager import AttachOptions, SaeManager
from inference_service.servicers import operations_convert, sae_convert
from inference_service.servicers.paging import next_page_token, page_bounds
from millm.v1 import sae_pb2
from millm.v1 import sae_service_pb2 as pb
from millm.v1 import sae_service_pb2_grpc as pb_grpc

# Size of each ExportSae message; well under gRPC's 4 MiB default limit.
_EXPORT_CHUNK_BYTES = 1 << 20


class SaeServicer(pb_grpc.SaeServiceServicer):
    def __init__(self, manager: SaeManager) -> None:
        self._manager = manager
        self._catalog = manager.catalog

    async def PreviewSaeRepo(
        self, request: pb.PreviewSaeRepoRequest, context: grpc.aio.ServicerContext
    ) -> pb.PreviewSaeRepoResponse:
        ref = _hub_ref(request.repo_id, "", request.revision)
        listing = await asyncio.to_thread(
            self._catalog.listing, ref, request.token or None, with_configs=True
        )
        return pb.PreviewSaeRepoResponse(
            candidates=[sae_convert.candidate(c) for c in listing.candidates],
            commit_sha=listing.commit_sha,
        )

    async def ListSaeReleases(
        self, request: pb.ListSaeReleasesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListSaeReleasesResponse:
        limit, offset = page_bounds(request.page_size, request.page_token)
        found = await asyncio.to_thread(registry.list_releases, request.model_filter)
        page = found[offset : offset + limit + 1]
        return pb.ListSaeReleasesResponse(
            releases=[sae_convert.release(r) for r in page[:limit]],
            next_page_token=next_page_token(offset, limit, len(page)),
        )

    async def DownloadSae(
        self, request: pb.DownloadSaeRequest, context: grpc.aio.ServicerContext
    ) -> pb.DownloadSaeResponse:
        which = request.WhichOneof("source")
        if which == "release":
            ref, release = self._catalog.resolve_release(
                request.release.release.strip(), request.release.sae_id.strip()
            )
        elif which == "hub":
            ref = _hub_ref(request.hub.repo_id, request.hub.path, request.hub.revision)
            release = None
        else:
            raise InvalidArgumentError(
                "Name the SAE: either `hub` (repo_id and path) or `release` (release and sae_id).",
                param="source",
            )
        snapshot = await asyncio.to_thread(
            self._catalog.start_download, ref, request.token or None, release
        )
        return pb.DownloadSaeResponse(operation=operations_convert.operation(snapshot))

    async def ImportSae(
        self, request: pb.ImportSaeRequest, context: grpc.aio.ServicerContext
    ) -> pb.ImportSaeResponse:
        cached = await asyncio.to_thread(self._catalog.import_folder, request.path, request.name)
        return pb.ImportSaeResponse(sae=self._message(cached))

    async def ListSaes(
        self, request: pb.ListSaesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListSaesResponse:
        limit, offset = page_bounds(request.page_size, request.page_token)
        saes = await asyncio.to_thread(self._catalog.list)
        page = saes[offset : offset + limit + 1]
        return pb.ListSaesResponse(
            saes=[self._message(s) for s in page[:limit]],
            next_page_token=next_page_token(offset, limit, len(page)),
        )

    async def GetSae(
        self, request: pb.GetSaeRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetSaeResponse:
        cached = await asyncio.to_thread(self._catalog.get, request.id)
        return pb.GetSaeResponse(sae=self._message(cached))

    async def DeleteSae(
        self, request: pb.DeleteSaeRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteSaeResponse:
        freed = await asyncio.to_thread(self._manager.delete, request.id)
        return pb.DeleteSaeResponse(freed_bytes=freed)

    async def GetSaeCacheUsage(
        self, request: pb.GetSaeCacheUsageRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetSaeCacheUsageResponse:
        used, count, free = await asyncio.to_thread(self._catalog.usage)
        return pb.GetSaeCacheUsageResponse(used_bytes=used, sae_count=count, free_bytes=free)

    async def CheckSaeCompatibility(
        self, request: pb.CheckSaeCompatibilityRequest, context: grpc.aio.ServicerContext
    ) -> pb.CheckSaeCompatibilityResponse:
        result = await self._manager.check(request.id, request.hook_name)
        return pb.CheckSaeCompatibilityResponse(compatibility=sae_convert.compatibility(result))

    async def AttachSae(
        self, request: pb.AttachSaeRequest, context: grpc.aio.ServicerContext
    ) -> pb.AttachSaeResponse:
        options = AttachOptions(
            dtype=request.dtype.strip() or "float32",
            allow_overcommit=request.allow_overcommit,
            replace=request.replace,
        )
        attached = await self._manager.attach(request.id, request.hook_name, options)
        return pb.AttachSaeResponse(
            attachment=sae_convert.attachment(attached.attachment),
            warnings=[sae_convert.issue(w) for w in attached.compatibility.warnings],
            replaced=sae_convert.attachment(attached.replaced) if attached.replaced else None,
        )

    async def DetachSae(
        self, request: pb.DetachSaeRequest, context: grpc.aio.ServicerContext
    ) -> pb.DetachSaeResponse:
        detached = await self._manager.detach(request.hook_name)
        return pb.DetachSaeResponse(
            attachment=sae_convert.attachment(detached.attachment),
            freed_bytes=detached.freed_bytes,
            rss_before_bytes=detached.rss_before_bytes,
            rss_after_bytes=detached.rss_after_bytes,
        )

    async def ListSaeAttachments(
        self, request: pb.ListSaeAttachmentsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListSaeAttachmentsResponse:
        return pb.ListSaeAttachmentsResponse(
            attachments=[sae_convert.attachment(a) for a in self._manager.attachments.list()],
            restore=sae_convert.restore(self._manager.restore_status),
        )

    async def ExportSae(
        self, request: pb.ExportSaeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ExportSaeResponse]:
        filename, archive = await asyncio.to_thread(
            self._catalog.export_archive, request.id, sae_convert.layout(request.layout)
        )
        try:
            with archive.open("rb") as fh:
                first = True
                while chunk := await asyncio.to_thread(fh.read, _EXPORT_CHUNK_BYTES):
                    yield pb.ExportSaeResponse(filename=filename if first else "", data=chunk)
                    first = False
        finally:
            await asyncio.to_thread(archive.unlink, missing_ok=True)

    async def UploadSae(
        self, request: pb.UploadSaeRequest, context: grpc.aio.ServicerContext
    ) -> pb.UploadSaeResponse:
        snapshot = await asyncio.to_thread(
            lambda: self._catalog.start_upload(
                request.id,
                repo_id=request.repo_id.strip(),
                path_in_repo=request.path_in_repo,
                layout=sae_convert.layout(request.layout),  # type: ignore[arg-type]
                token=request.token or None,
                private=request.private,
                commit_message=request.commit_message,
            )
        )
        return pb.UploadSaeResponse(operation=operations_convert.operation(snapshot))

    def _message(self, cached: CachedSae) -> sae_pb2.Sae:
        return sae_convert.sae(cached, attached_hook_name=self._manager.attached_hook(cached.id))


def _hub_ref(repo_id: str, path: str, revision: str) -> HubRef:
    repo_id = repo_id.strip()
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise InvalidArgumentError(
            "`repo_id` must look like 'owner/name', for example "
            "'jbloom/GPT2-Small-SAEs-Reformatted'.",
            param="repo_id",
        )
    return HubRef(repo_id, path.strip().strip("/"), revision.strip() or "main")
