"""/api/v1/monitoring: what is captured, the recorded history, feature statistics, and the
live activation stream (a WebSocket in front of the bidirectional `Monitor` call)."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Literal

from fastapi import APIRouter, Query, WebSocket
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.types import Message
from starlette.websockets import WebSocketDisconnect

from millm.v1 import monitoring_service_pb2 as monpb
from openai_bridge import proto_json
from openai_bridge.errors import invalid_request, validation_failure
from openai_bridge.grpc_calls import StreamCall
from openai_bridge.management.common import attachment, given
from openai_bridge.management.schemas import UINT32_MAX, MonitorControl, MonitoringConfigBody
from openai_bridge.management.watch import report
from openai_bridge.request_checks import loads_bounded
from openai_bridge.state import Management, service_calls

log = logging.getLogger(__name__)

MonitorStream = StreamCall[monpb.MonitorRequest, monpb.MonitorResponse]

router = APIRouter(prefix="/api/v1/monitoring")

# A viewer that says nothing this long after connecting gets the top 10 features.
FIRST_MESSAGE_WAIT_S = 1.0
DEFAULT_TOP_K = 10
# RFC 6455: the server is going away (the service ended the stream, as on shutdown).
CLOSE_GOING_AWAY = 1001
EXPORT_TYPES = {"json": "application/json", "csv": "text/csv"}


def _uint32(value: int | None, param: str) -> int:
    """None -> 0 (the service's default)."""
    if value is None:
        return 0
    if not 0 <= value <= UINT32_MAX:
        raise invalid_request(f"`{param}` is out of range.", param)
    return value


def feature_list(raw: list[str], param: str = "features") -> list[int]:
    """`?features=1,2,3` and `?features=1&features=2`, in the order given."""
    indexes: list[int] = []
    for part in (p.strip() for item in raw for p in item.split(",")):
        if not part:
            continue
        if not part.isdigit() or int(part) > UINT32_MAX:
            raise invalid_request(
                f"`{param}` must be feature indexes separated by commas, such as 1,2,3; "
                f"got `{part}`.",
                param,
            )
        indexes.append(int(part))
    return indexes


@router.get("/config")
async def get_monitoring_config(management: Management) -> JSONResponse:
    response = await management.unary(
        management.stubs.monitoring.GetMonitoringConfig, monpb.GetMonitoringConfigRequest()
    )
    config = proto_json.to_json(response.config)
    return JSONResponse({**config, "subscribers": response.subscribers})


@router.put("/config")
async def set_monitoring_config(body: MonitoringConfigBody, management: Management) -> JSONResponse:
    # Unset fields keep their values, so the change is made on the current configuration.
    current = await management.unary(
        management.stubs.monitoring.GetMonitoringConfig, monpb.GetMonitoringConfigRequest()
    )
    proto_json.fill(current.config, given(body))
    request = monpb.SetMonitoringConfigRequest(config=current.config)
    response = await management.unary(management.stubs.monitoring.SetMonitoringConfig, request)
    return JSONResponse(proto_json.to_json(response.config))


@router.get("/history")
async def get_monitoring_history(
    management: Management,
    limit: Annotated[int | None, Query()] = None,
    request_id: Annotated[str | None, Query(max_length=128)] = None,
) -> JSONResponse:
    request = monpb.GetMonitoringHistoryRequest(
        limit=_uint32(limit, "limit"), request_id=request_id or ""
    )
    response = await management.unary(management.stubs.monitoring.GetMonitoringHistory, request)
    return JSONResponse(proto_json.page(response.frames))


@router.delete("/history")
async def clear_monitoring_history(management: Management) -> JSONResponse:
    await management.unary(
        management.stubs.monitoring.ClearMonitoringHistory, monpb.ClearMonitoringHistoryRequest()
    )
    return JSONResponse({"cleared": True})


@router.get("/statistics")
async def get_feature_statistics(
    management: Management,
    features: Annotated[list[str] | None, Query()] = None,
    limit: Annotated[int | None, Query()] = None,
) -> JSONResponse:
    request = monpb.GetFeatureStatisticsRequest(
        features=feature_list(features or []), limit=_uint32(limit, "limit")
    )
    response = await management.unary(management.stubs.monitoring.GetFeatureStatistics, request)
    return JSONResponse({"tokens": response.tokens, **proto_json.page(response.features)})


@router.get("/export", response_model=None)
async def export_monitoring_history(
    management: Management, format: Literal["json", "csv"] = "json"
) -> Response:
    response = await management.unary(
        management.stubs.monitoring.ExportMonitoringHistory,
        monpb.ExportMonitoringHistoryRequest(format=format),
    )
    filename = f"monitoring-history.{format}"
    return Response(
        response.data,
        media_type=response.content_type or EXPORT_TYPES[format],
        headers=attachment(filename, filename),
    )


# ---------------------------------------------------------------- the live stream


class Selection:
    """What one WebSocket viewer asked for so far; each message changes only what it names."""

    def __init__(self, top_k: int) -> None:
        self.features: list[int] = []
        self.top_k = top_k
        self.paused = False

    def apply(self, control: MonitorControl) -> None:
        if control.features is not None:
            self.features = list(control.features)
        if control.top_k is not None:
            self.top_k = control.top_k
        if control.paused is not None:
            self.paused = control.paused

    def request(self) -> monpb.MonitorRequest:
        return monpb.MonitorRequest(features=self.features, top_k=self.top_k, paused=self.paused)


# Frames waiting for a slow WebSocket client before newer ones are dropped.
SEND_QUEUE_FRAMES = 4
# Marks the end of the service's stream in the send queue.
_END = monpb.MonitorResponse()


@router.websocket("/stream")
async def monitor_stream(websocket: WebSocket) -> None:
    """Text frames `{"type": "frame", "frame": {...}, "dropped_frames": n}`.

    The client sends `{"features", "top_k", "paused"}` whenever it likes; each
    message changes only the keys it has. Silence for `FIRST_MESSAGE_WAIT_S`
    after connecting starts with the top `DEFAULT_TOP_K` features. An error
    (a bad message, or one from the service) is one `{"type": "error", "error":
    {...}}` frame, then close 1008 (client error) or 1011 (server error), as the
    operations watch does. A client that leaves cancels the gRPC call at once.
    """
    await websocket.accept()
    stream: MonitorStream | None = None
    pending: asyncio.Future[Message] | None = None
    try:
        selection = Selection(top_k=DEFAULT_TOP_K)
        pending = asyncio.ensure_future(websocket.receive())
        done, _ = await asyncio.wait({pending}, timeout=FIRST_MESSAGE_WAIT_S)
        if done:
            if not _apply(pending.result(), selection):
                return  # left before the stream started
            pending = None
        calls = await service_calls(websocket)
        stream = calls.bidi(calls.stubs.monitoring.Monitor)
        await stream.send(selection.request())
        await _relay(websocket, stream, selection, pending)
    except WebSocketDisconnect:
        return
    except Exception as exc:
        await report(websocket, exc, "the monitoring stream")
    finally:
        if pending is not None:
            pending.cancel()
        if stream is not None:
            stream.cancel()


async def _relay(
    websocket: WebSocket,
    stream: MonitorStream,
    selection: Selection,
    pending: asyncio.Future[Message] | None,
) -> None:
    """Frames out and control messages in, until either side ends or fails."""
    pump = asyncio.create_task(_send_frames(websocket, stream))
    listen = asyncio.create_task(_read_controls(websocket, stream, selection, pending))
    try:
        await asyncio.wait({pump, listen}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (pump, listen):
            task.cancel()
        results = await asyncio.gather(pump, listen, return_exceptions=True)
    for result in results:
        if isinstance(result, Exception):
            raise result
    if pump.done() and not pump.cancelled() and pump.exception() is None:
        # The service ended the stream (it is shutting down).
        await websocket.close(CLOSE_GOING_AWAY)


async def _send_frames(websocket: WebSocket, stream: MonitorStream) -> None:
    """Reads the service's frames as fast as they come and sends what the client can
    take. The socket applies backpressure; rather than pass it back to the service,
    frames that do not fit in `SEND_QUEUE_FRAMES` are dropped here and counted with
    the service's own drops, so a stalled client never holds anything up."""
    outbox: asyncio.Queue[monpb.MonitorResponse] = asyncio.Queue(SEND_QUEUE_FRAMES)
    dropped_here = 0
    failure: Exception | None = None

    async def receive() -> None:
        nonlocal dropped_here, failure
        try:
            async for response in stream:
                try:
                    outbox.put_nowait(response)
                except asyncio.QueueFull:
                    dropped_here += 1
        except Exception as exc:  # reported after what was already queued is sent
            failure = exc
        await outbox.put(_END)

    reader = asyncio.create_task(receive())
    try:
        while (response := await outbox.get()) is not _END:
            response.dropped_frames += dropped_here
            frame = {"type": "frame", **proto_json.to_json(response)}
            await websocket.send_text(proto_json.compact(frame))
    finally:
        reader.cancel()
    if failure is not None:
        raise failure


async def _read_controls(
    websocket: WebSocket,
    stream: MonitorStream,
    selection: Selection,
    pending: asyncio.Future[Message] | None,
) -> None:
    """Returns when the client leaves; raises `InferenceError` on a bad message."""
    while True:
        message = await pending if pending is not None else await websocket.receive()
        pending = None
        if not _apply(message, selection):
            return
        await stream.send(selection.request())


def _apply(message: Message, selection: Selection) -> bool:
    """Applies one ASGI message to `selection`; False when the client has left."""
    if message["type"] == "websocket.disconnect":
        return False
    raw = message.get("text")
    if raw is None:
        raw = (message.get("bytes") or b"").decode("utf-8", errors="replace")
    value = loads_bounded(raw, "A control message")
    if not isinstance(value, dict):
        raise invalid_request("A control message must be a JSON object.")
    try:
        selection.apply(MonitorControl.model_validate(value))
    except ValidationError as exc:
        raise validation_failure(exc.errors()) from None
    return True
