"""/api/v1/events: the service's state changes as they happen (a WebSocket in front of
`EventService.WatchEvents`), so clients need not poll.

One text frame per event: `{"type": <payload kind>, "sequence": n,
"occurred_at_unix_ms": t, <payload kind>: {...}}`. `?after=<sequence>` resumes after the
last event a client saw; a `resync` frame says events were lost (re-read the state).
The socket stays open until the client leaves; if the inference service goes away it
closes (1011 after an error frame, or 1000), and the client reconnects with `after`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, WebSocket

from millm.v1 import event_service_pb2 as epb
from openai_bridge import proto_json
from openai_bridge.errors import invalid_request
from openai_bridge.grpc_calls import ServiceCalls
from openai_bridge.management import watch

router = APIRouter(prefix="/api/v1")

UINT64_MAX = 2**64 - 1


def event_frame(event: epb.Event) -> str:
    """The JSON text of one event, its payload kind first as `type`."""
    return proto_json.compact({"type": event.WhichOneof("payload"), **proto_json.to_json(event)})


@router.websocket("/events")
async def watch_events(websocket: WebSocket) -> None:
    """Errors (a bad `after`, the service unreachable) as `watch.relay` says."""
    raw = websocket.query_params.get("after", "") or "0"

    async def frames(management: ServiceCalls) -> AsyncIterator[str]:
        if not raw.isdigit() or int(raw) > UINT64_MAX:
            raise invalid_request(
                f"`after` must be an event sequence (a whole number); got `{raw}`.", "after"
            )
        request = epb.WatchEventsRequest(after_sequence=int(raw))
        responses = management.server_stream(management.stubs.events.WatchEvents, request)
        try:
            async for response in responses:
                yield event_frame(response.event)
        finally:
            await responses.aclose()  # type: ignore[attr-defined]

    await watch.relay(websocket, frames, "events")
