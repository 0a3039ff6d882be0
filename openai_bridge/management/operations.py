"""/api/v1/operations: read, list, cancel and watch long-running operations."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, WebSocket
from fastapi.responses import JSONResponse

from millm.v1 import operations_service_pb2 as ospb
from openai_bridge import proto_json
from openai_bridge.grpc_calls import ServiceCalls
from openai_bridge.management import watch
from openai_bridge.management.common import PageSize, PageToken, paging
from openai_bridge.state import Management

router = APIRouter(prefix="/api/v1/operations")


@router.get("")
async def list_operations(
    management: Management,
    page_size: PageSize = None,
    page_token: PageToken = None,
    unfinished_only: bool = False,
) -> JSONResponse:
    request = ospb.ListOperationsRequest(
        **paging(page_size, page_token), unfinished_only=unfinished_only
    )
    response = await management.unary(management.stubs.operations.ListOperations, request)
    return JSONResponse(proto_json.page(response.operations, response.next_page_token))


@router.get("/{operation_id}")
async def get_operation(operation_id: str, management: Management) -> JSONResponse:
    response = await management.unary(
        management.stubs.operations.GetOperation, ospb.GetOperationRequest(id=operation_id)
    )
    return JSONResponse(proto_json.to_json(response.operation))


@router.post("/{operation_id}/cancel")
async def cancel_operation(operation_id: str, management: Management) -> JSONResponse:
    response = await management.unary(
        management.stubs.operations.CancelOperation, ospb.CancelOperationRequest(id=operation_id)
    )
    return JSONResponse(proto_json.to_json(response.operation))


@router.websocket("/{operation_id}/watch")
async def watch_operation(websocket: WebSocket, operation_id: str) -> None:
    """One `{"type": "operation", "operation": {...}}` frame per snapshot; close 1000
    after the final one. Errors and leaving as `watch.relay` says."""

    async def frames(management: ServiceCalls) -> AsyncIterator[str]:
        request = ospb.WatchOperationRequest(id=operation_id)
        snapshots = watch.until_final(
            management.server_stream(management.stubs.operations.WatchOperation, request),
            lambda update: update.operation.state in proto_json.FINAL_STATES,
            "operation",
        )
        try:
            async for snapshot in snapshots:
                yield proto_json.compact(
                    {"type": "operation", "operation": proto_json.to_json(snapshot.operation)}
                )
        finally:
            await snapshots.aclose()  # type: ignore[attr-defined]

    await watch.relay(websocket, frames, f"operation {operation_id}")
