"""/api/v1/operations: read, list, cancel and watch long-running operations."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

import grpc
from fastapi import APIRouter, Query, WebSocket
from fastapi.responses import JSONResponse
from starlette.websockets import WebSocketDisconnect

from millm.v1 import operations_service_pb2 as ospb
from openai_bridge.errors import InferenceError
from openai_bridge.management import translate
from openai_bridge.management_client import ManagementClient
from openai_bridge.state import MANAGEMENT_NOT_CONFIGURED, BridgeState, Management

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1/operations")

UNEXPECTED = "Internal server error; the details are in the bridge log."


@router.get("")
async def list_operations(
    management: Management,
    page_size: Annotated[int | None, Query()] = None,
    page_token: Annotated[str | None, Query(max_length=1024)] = None,
    unfinished_only: bool = False,
) -> JSONResponse:
    request = translate.list_operations_request(page_size, page_token, unfinished_only)
    response = await management.list_operations(request)
    operations = [translate.operation(op) for op in response.operations]
    return JSONResponse(translate.page(operations, response.next_page_token))


@router.get("/{operation_id}")
async def get_operation(operation_id: str, management: Management) -> JSONResponse:
    response = await management.get_operation(ospb.GetOperationRequest(id=operation_id))
    return JSONResponse(translate.operation(response.operation))


@router.post("/{operation_id}/cancel")
async def cancel_operation(operation_id: str, management: Management) -> JSONResponse:
    response = await management.cancel_operation(ospb.CancelOperationRequest(id=operation_id))
    return JSONResponse(translate.operation(response.operation))


@router.websocket("/{operation_id}/watch")
async def watch_operation(websocket: WebSocket, operation_id: str) -> None:
    """One text frame per snapshot; close 1000 after the final one.

    On an error: one `{"type": "error", "error": {...}}` frame, then close 1008
    (a 4xx in the error table, such as not found) or 1011 (a 5xx). A client
    that leaves cancels the gRPC watch at once, even between snapshots.
    """
    await websocket.accept()
    state: BridgeState = websocket.app.state.bridge
    pump = asyncio.create_task(_send_snapshots(websocket, state.management, operation_id))
    listen = asyncio.create_task(_until_disconnected(websocket))
    try:
        await asyncio.wait({pump, listen}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (pump, listen):
            task.cancel()
        await asyncio.gather(pump, listen, return_exceptions=True)


async def _send_snapshots(
    websocket: WebSocket, management: ManagementClient | None, operation_id: str
) -> None:
    try:
        if management is None:
            raise InferenceError(grpc.StatusCode.UNIMPLEMENTED, None, MANAGEMENT_NOT_CONFIGURED)
        snapshots = management.watch_operation(operation_id)
        try:
            async for snapshot in snapshots:
                await websocket.send_text(translate.operation_frame(snapshot))
        finally:
            await snapshots.aclose()  # type: ignore[attr-defined]
        await websocket.close(translate.CLOSE_NORMAL)
    except WebSocketDisconnect:
        return
    except Exception as exc:
        if not isinstance(exc, InferenceError):
            log.error("watching operation %s failed", operation_id, exc_info=exc)
            exc = InferenceError(grpc.StatusCode.INTERNAL, None, UNEXPECTED)
        frame, close_code = translate.error_frame(exc)
        try:
            await websocket.send_text(frame)
            await websocket.close(close_code)
        except (WebSocketDisconnect, RuntimeError):
            pass  # the client left meanwhile


async def _until_disconnected(websocket: WebSocket) -> None:
    """Reads (and ignores) client frames until the client goes; then the watch is cancelled."""
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
