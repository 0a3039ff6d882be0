"""Pure translation between millm.v1 messages and engine domain types."""

from __future__ import annotations

from inference_service.engine.types import (
    ChatTurn,
    FinishedEvent,
    GenerationEvent,
    ModelDescription,
    SamplingOptions,
    TokenEvent,
    TokenLogprob,
)
from millm.v1 import inference_service_pb2 as pb

_FINISH_REASONS = {
    "stop": pb.FINISH_REASON_STOP,
    "length": pb.FINISH_REASON_LENGTH,
    "cancelled": pb.FINISH_REASON_CANCELLED,
}


def chat_turns(chat: pb.ChatMessages) -> list[ChatTurn]:
    return [ChatTurn(role=m.role, content=m.content) for m in chat.messages]


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
