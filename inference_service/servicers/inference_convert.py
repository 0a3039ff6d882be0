"""Pure translation between InferenceService messages and the engine's domain types."""

from __future__ import annotations

from inference_service.engine.memory import MemoryUsage
from inference_service.engine.scheduler import BatchStats
from inference_service.engine.types import (
    ChatOptions,
    ChatTurn,
    FinishedEvent,
    GenerationEvent,
    JsonObject,
    JsonSchema,
    ModelDescription,
    OutputConstraint,
    SamplingOptions,
    TokenEvent,
    TokenLogprob,
    ToolCallRecord,
    ToolCalls,
    ToolSpec,
)
from inference_service.host import ModelState
from inference_service.servicers import steering_convert
from millm.v1 import inference_service_pb2 as pb

MODEL_STATES = {
    ModelState.NOT_LOADED: pb.MODEL_STATE_NOT_LOADED,
    ModelState.LOADING: pb.MODEL_STATE_LOADING,
    ModelState.READY: pb.MODEL_STATE_READY,
    ModelState.FAILED: pb.MODEL_STATE_FAILED,
}
_FINISH_REASONS = {
    "stop": pb.FINISH_REASON_STOP,
    "length": pb.FINISH_REASON_LENGTH,
    "cancelled": pb.FINISH_REASON_CANCELLED,
}


def chat_turns(chat: pb.ChatMessages) -> list[ChatTurn]:
    return [
        ChatTurn(
            role=m.role,
            content=m.content,
            tool_calls=tuple(
                ToolCallRecord(id=c.id, name=c.name, arguments_json=c.arguments_json)
                for c in m.tool_calls
            ),
            tool_call_id=m.tool_call_id,
            name=m.name,
        )
        for m in chat.messages
    ]


def chat_options(chat: pb.ChatMessages) -> ChatOptions:
    return ChatOptions(
        tools=tools(chat),
        continue_final_message=chat.continue_final_message,
        add_generation_prompt=(
            chat.add_generation_prompt if chat.HasField("add_generation_prompt") else None
        ),
    )


def tools(chat: pb.ChatMessages) -> tuple[ToolSpec, ...]:
    return tuple(
        ToolSpec(
            index=i,
            name=t.name,
            description=t.description,
            parameters_json=t.parameters_json,
        )
        for i, t in enumerate(chat.tools)
    )


def output_constraint(constraint: pb.OutputConstraint) -> OutputConstraint | None:
    kind = constraint.WhichOneof("kind")
    if kind == "json_object":
        return JsonObject()
    if kind == "json_schema":
        return JsonSchema(constraint.json_schema)
    if kind == "tool_calls":
        return ToolCalls(name=constraint.tool_calls.name, parallel=constraint.tool_calls.parallel)
    return None


def sampling_options(params: pb.SamplingParams) -> SamplingOptions:
    return SamplingOptions(
        temperature=params.temperature if params.HasField("temperature") else 1.0,
        top_p=params.top_p if params.HasField("top_p") else 1.0,
        seed=params.seed if params.HasField("seed") else None,
        max_tokens=params.max_tokens if params.HasField("max_tokens") else None,
        stop=tuple(params.stop),
        logprobs=params.logprobs,
        top_logprobs=params.top_logprobs,
        frequency_penalty=params.frequency_penalty,
        presence_penalty=params.presence_penalty,
        logit_bias=tuple(sorted(params.logit_bias.items())),
    )


def _token_logprob(lp: TokenLogprob) -> pb.TokenLogprob:
    return pb.TokenLogprob(
        token_id=lp.token_id,
        token=lp.token,
        token_bytes=lp.token_bytes,
        logprob=lp.logprob,
        top_logprobs=[
            pb.TopLogprob(
                token_id=top.token_id,
                token=top.token,
                token_bytes=top.token_bytes,
                logprob=top.logprob,
            )
            for top in lp.top_logprobs
        ],
    )


def generate_response(event: GenerationEvent) -> pb.GenerateResponse:
    if isinstance(event, TokenEvent):
        return pb.GenerateResponse(
            delta=pb.TokenDelta(
                text=event.text,
                token_ids=event.token_ids,
                logprobs=[_token_logprob(lp) for lp in event.logprobs],
                activations=[steering_convert.token_activations(a) for a in event.activations],
            )
        )
    assert isinstance(event, FinishedEvent)
    return pb.GenerateResponse(
        finished=pb.GenerateFinished(
            finish_reason=_FINISH_REASONS[event.finish_reason],
            usage=pb.Usage(
                prompt_tokens=event.prompt_tokens,
                completion_tokens=event.completion_tokens,
                cached_tokens=event.cached_tokens,
            ),
            queue_ns=event.queue_ns,
            prefill_ns=event.prefill_ns,
            decode_ns=event.decode_ns,
        )
    )


def batch_status(stats: BatchStats) -> pb.BatchStatus:
    return pb.BatchStatus(
        waiting=stats.waiting,
        active_sequences=stats.active,
        max_batch_size=stats.max_batch_size,
        occupancy=stats.occupancy,
        tokens_per_second=stats.tokens_per_s,
        kv_cache_bytes=stats.kv_cache_bytes,
        kv_cache_budget_bytes=stats.kv_cache_budget_bytes,
    )


def memory_status(usage: MemoryUsage) -> pb.MemoryStatus:
    return pb.MemoryStatus(
        resident_bytes=usage.resident_bytes,
        system_available_bytes=usage.system_available_bytes,
        device=usage.device,
        device_allocated_bytes=usage.device_allocated_bytes,
        device_total_bytes=usage.device_total_bytes,
    )


def model_info(description: ModelDescription) -> pb.ModelInfo:
    return pb.ModelInfo(
        id=description.id,
        source=description.source,
        architecture=description.architecture,
        num_layers=description.num_layers,
        hidden_size=description.hidden_size,
        vocab_size=description.vocab_size,
        max_context_tokens=description.max_context_tokens,
        dtype=description.dtype,
        device=description.device,
        parameter_count=description.parameter_count,
        loaded_at_unix_s=description.loaded_at_unix_s,
    )
