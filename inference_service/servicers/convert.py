"""Pure translation between millm.v1 messages and engine domain types."""

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
from inference_service.errors import InvalidArgumentError
from inference_service.hub.files import WeightFormat
from inference_service.models.catalog import CachedModel
from inference_service.models.manager import LoadEstimate, LoadSpec
from inference_service.operations.types import OperationSnapshot
from inference_service.servicers import steering_convert
from millm.v1 import inference_service_pb2 as pb
from millm.v1 import model_service_pb2, operation_pb2

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
                prompt_tokens=event.prompt_tokens, completion_tokens=event.completion_tokens
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


_OPERATION_STATES = {
    "pending": operation_pb2.OPERATION_STATE_PENDING,
    "running": operation_pb2.OPERATION_STATE_RUNNING,
    "succeeded": operation_pb2.OPERATION_STATE_SUCCEEDED,
    "failed": operation_pb2.OPERATION_STATE_FAILED,
    "cancelled": operation_pb2.OPERATION_STATE_CANCELLED,
}
_OPERATION_KINDS = {
    "model_download": operation_pb2.OPERATION_KIND_MODEL_DOWNLOAD,
    "sae_download": operation_pb2.OPERATION_KIND_SAE_DOWNLOAD,
    "sae_upload": operation_pb2.OPERATION_KIND_SAE_UPLOAD,
}


def operation(snapshot: OperationSnapshot) -> operation_pb2.Operation:
    message = operation_pb2.Operation(
        id=snapshot.id,
        kind=_OPERATION_KINDS.get(snapshot.kind, operation_pb2.OPERATION_KIND_UNSPECIFIED),
        state=_OPERATION_STATES[snapshot.state],
        stage=snapshot.stage,
        target=snapshot.target,
        bytes_done=snapshot.bytes_done,
        bytes_total=snapshot.bytes_total,
        bytes_per_s=snapshot.bytes_per_s,
        error_message=snapshot.error_message,
        error_reason=snapshot.error_reason,
        created_at_unix_ms=snapshot.created_at_unix_ms,
        updated_at_unix_ms=snapshot.updated_at_unix_ms,
        finished_at_unix_ms=snapshot.finished_at_unix_ms,
    )
    if snapshot.eta_s is not None:
        message.eta_s = snapshot.eta_s
    return message


_WEIGHT_FORMATS: dict[str, int] = {
    "safetensors": model_service_pb2.WEIGHT_FORMAT_SAFETENSORS,
    "pytorch": model_service_pb2.WEIGHT_FORMAT_PYTORCH,
    "gguf": model_service_pb2.WEIGHT_FORMAT_GGUF,
}
_CACHED_STATES = {
    "downloading": model_service_pb2.CACHED_MODEL_STATE_DOWNLOADING,
    "ready": model_service_pb2.CACHED_MODEL_STATE_READY,
    "corrupted": model_service_pb2.CACHED_MODEL_STATE_CORRUPTED,
    "missing": model_service_pb2.CACHED_MODEL_STATE_MISSING,
}


# The formats a download can ask for; a GGUF file is served, never downloaded.
_DOWNLOADABLE: dict[int, WeightFormat] = {
    model_service_pb2.WEIGHT_FORMAT_SAFETENSORS: "safetensors",
    model_service_pb2.WEIGHT_FORMAT_PYTORCH: "pytorch",
}


def weight_format(value: int) -> WeightFormat | None:
    """The domain name of a requested WeightFormat; None for 'no preference'."""
    if value == model_service_pb2.WEIGHT_FORMAT_UNSPECIFIED:
        return None
    if value not in _DOWNLOADABLE:
        raise InvalidArgumentError(
            "A download takes safetensors or pytorch weights; leave `format` unset"
            " to take what the repository has.",
            param="format",
        )
    return _DOWNLOADABLE[value]


def cached_model(model: CachedModel, *, loaded: bool) -> model_service_pb2.CachedModel:
    return model_service_pb2.CachedModel(
        id=model.id,
        repo_id=model.repo_id,
        revision=model.revision,
        commit_sha=model.commit_sha,
        format=_WEIGHT_FORMATS.get(model.format, model_service_pb2.WEIGHT_FORMAT_UNSPECIFIED),
        parameter_count=model.parameter_count,
        size_bytes=model.size_bytes,
        state=_CACHED_STATES[model.state],
        loaded=loaded,
    )


_QUANTIZATIONS = {
    model_service_pb2.QUANTIZATION_NONE: "none",
    model_service_pb2.QUANTIZATION_INT8_DYNAMIC: "int8_dynamic",
    model_service_pb2.QUANTIZATION_BNB_8BIT: "bnb_8bit",
    model_service_pb2.QUANTIZATION_BNB_4BIT: "bnb_4bit",
}


def load_spec(
    model_id: str, spec: model_service_pb2.LoadSpec, *, allow_overcommit: bool = False
) -> LoadSpec:
    """Empty and zero fields keep the service's settings (see LoadSpec in the proto)."""
    return LoadSpec(
        model_id=model_id,
        dtype=spec.dtype or None,
        quantization=_QUANTIZATIONS.get(spec.quantization, "none"),
        device=spec.device or None,
        context_tokens=spec.context_tokens or None,
        allow_overcommit=allow_overcommit,
    )


def memory_estimate(estimate: LoadEstimate) -> model_service_pb2.EstimateModelMemoryResponse:
    memory = estimate.memory
    return model_service_pb2.EstimateModelMemoryResponse(
        weights_bytes=memory.weights_bytes,
        kv_cache_bytes=memory.kv_cache_bytes,
        overhead_bytes=memory.overhead_bytes,
        sae_bytes=memory.sae_bytes,
        total_bytes=memory.total_bytes,
        available_bytes=estimate.available_bytes,
        fits=estimate.fits,
        device=estimate.device,
    )
