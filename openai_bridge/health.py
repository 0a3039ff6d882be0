"""GET /health: 200 when the inference service serves a ready model, 503 otherwise.

In front of several services (docs/scale-out.md) the answer and its status describe
the first, and `services` lists every one: its target, state and model."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from millm.v1 import inference_service_pb2 as pb
from openai_bridge.errors import InferenceError
from openai_bridge.services import Surveyed
from openai_bridge.state import State

router = APIRouter()


@router.get("/health")
async def health(state: State) -> JSONResponse:
    try:
        info = await state.client.server_info()
    except InferenceError as error:
        body: dict[str, Any] = {
            "status": "unavailable",
            "model_state": None,
            "message": error.message,
        }
        if state.services.several:
            body["services"] = await _services(state)
        return JSONResponse(body, status_code=503)
    model_state = pb.ModelState.Name(info.model_state).removeprefix("MODEL_STATE_")
    ready = info.model_state == pb.MODEL_STATE_READY
    body = {
        "status": "ok" if ready else model_state.lower(),
        "model_state": model_state,
        "model": info.model.id if info.HasField("model") else None,
        "version": info.version,
        "queue_depth": info.queue_depth,
        "max_queue": info.max_queue,
        "batch": batch_status(info.batch) if info.HasField("batch") else None,
        "memory": memory_status(info.memory) if info.HasField("memory") else None,
    }
    if state.services.several:
        body["services"] = await _services(state)
    headers = {}
    if not ready and info.retry_after_s:
        headers["Retry-After"] = str(info.retry_after_s)
    return JSONResponse(body, status_code=200 if ready else 503, headers=headers)


async def _services(state: State) -> list[dict[str, Any]]:
    try:
        surveyed = await state.services.survey(max_age_s=0)
    except InferenceError:  # none answered
        surveyed = [Surveyed(client, None) for client in state.services.clients]
    return [
        {
            "address": entry.client.calls.address,
            "model_state": (
                pb.ModelState.Name(entry.info.model_state).removeprefix("MODEL_STATE_")
                if entry.info is not None
                else None
            ),
            "model": entry.model.id if entry.model is not None else None,
        }
        for entry in surveyed
    ]


def batch_status(batch: pb.BatchStatus) -> dict[str, Any]:
    return {
        "waiting": batch.waiting,
        "active_sequences": batch.active_sequences,
        "max_batch_size": batch.max_batch_size,
        "occupancy": round(batch.occupancy, 4),
        "tokens_per_second": round(batch.tokens_per_second, 2),
        "kv_cache_bytes": batch.kv_cache_bytes,
        "kv_cache_budget_bytes": batch.kv_cache_budget_bytes,
    }


def memory_status(memory: pb.MemoryStatus) -> dict[str, Any]:
    return {
        "resident_bytes": memory.resident_bytes,
        "system_available_bytes": memory.system_available_bytes,
        "device": memory.device,
        "device_allocated_bytes": memory.device_allocated_bytes,
        "device_total_bytes": memory.device_total_bytes,
    }
