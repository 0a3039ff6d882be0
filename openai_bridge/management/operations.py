"""/api/v1/operations: read, list, cancel and watch long-running operations."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Query, WebSocket
from fastapi.responses import JSONResponse

from millm.v1 import operations_service_pb2 as ospb
from openai_bridge.grpc_calls import ServiceCalls
from openai_bridge.management import translate, watch
from openai_bridge.state import Management

router = APIRouter(prefix="/api/v1/operations")


@router.get("")
async def list_operations(
    management: Management,
    page_size: Annotated[int | None, Query()] = None,
    page_token: Annotated[str | None, Query(max_length=1024)] = None,
    unfinished_only: bool = False,
) -> JSONResponse:
    request = translate.list_operations_request(page_size, page_token, unfinished_only)
    response = await management.unary(management.stubs.operations.ListOperations, request)
    operations = [translate.operation(op) for op in response.operations]
    return JSONResponse(translate.page(operations, response.next_page_token))


@router.get("/{operation_id}")
async def get_operation(operation_id: str, management: Management) -> JSONResponse:
    response = await management.unary(
        management.stubs.operations.GetOperation, ospb.GetOperationRequest(id=operation_id)
    )
    return JSONResponse(translate.operation(response.operation))


@router.post("/{operation_id}/cancel")
async def cancel_operation(operation_id: str, management: Management) -> JSONResponse:
    response = await management.unary(
        management.stubs.operations.CancelOperation, ospb.CancelOperationRequest(id=operation_id)
    )
    return JSONResponse(translate.operation(response.operation))


@router.websocket("/{operation_id}/watch")
async def watch_operation(websocket: WebSocket, operation_id: str) -> None:
    """One text frame per snapshot; close 1000 after the final one.

    On an error: one `{"type": "error", "error": {...}}` frame, then close 1008
    (a 4xx in the error table, such as not found) or 1011 (a 5xx). A client
    that leaves cancels the gRPC watch at once, even between snapshots.
    """

    async def frames(management: ServiceCalls) -> AsyncIterator[str]:
        request = ospb.WatchOperationRequest(id=operation_id)
        updates = watch.until_final(
            management.server_stream(management.stubs.operations.WatchOperation, request),
            lambda update: translate.is_final(update.operation),
            "operation",
        )
        try:
            async for update in updates:
                yield translate.operation_frame(update.operation)
        finally:
            await updates.aclose()  # type: ignore[attr-defined]

    await watch.relay(websocket, frames, f"operation {operation_id}")
