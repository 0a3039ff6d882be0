"""Pure translation: OpenAI request models -> millm.v1 messages, and results -> OpenAI JSON.

No I/O here. Capabilities the bridge does not offer (n > 1, tools, JSON modes,
images, echo) are refused with a 400 naming the offending field; values are
otherwise passed through for the inference service to range-check.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from millm.v1 import inference_service_pb2 as pb
from openai_bridge.errors import invalid_request, unsupported
from openai_bridge.openai_api.protocol import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    EmbeddingRequest,
    SamplingFields,
)

FINISH_REASONS = {
    pb.FINISH_REASON_STOP: "stop",
    pb.FINISH_REASON_LENGTH: "length",
    # Only a departed client cancels, so nobody reads this; "stop" keeps the type valid.
    pb.FINISH_REASON_CANCELLED: "stop",
}


@dataclass(frozen=True)
class ResponseIds:
    """What every response or chunk of one generation repeats."""

    id: str
    created: int
    model: str


# ---------------------------------------------------------------- requests


def _assign(message: Any, field: str, value: Any, param: str) -> None:
    """Sets a protobuf field, turning a value the wire type cannot hold into a 400."""
    try:
        if isinstance(value, list):
            getattr(message, field).extend(value)
        else:
            setattr(message, field, value)
    except (ValueError, TypeError, OverflowError):
        raise invalid_request(f"`{param}` is out of range.", param) from None


def _refuse_common(body: SamplingFields) -> None:
    if body.n is not None and body.n != 1:
        raise unsupported("Only `n` = 1 is supported.", "n")
    if body.logit_bias:
        raise unsupported("`logit_bias` is not supported.", "logit_bias")


def _sampling(
    body: SamplingFields, max_tokens: int | None, logprobs: bool, top_logprobs: int | None
) -> pb.SamplingParams:
    sampling = pb.SamplingParams()
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    fields: list[tuple[str, Any, str]] = [
        ("temperature", body.temperature, "temperature"),
        ("top_p", body.top_p, "top_p"),
        ("seed", body.seed, "seed"),
        ("max_tokens", max_tokens, "max_tokens"),
        ("stop", stop, "stop"),
        ("logprobs", logprobs, "logprobs"),
        ("top_logprobs", top_logprobs, "top_logprobs"),
        ("frequency_penalty", body.frequency_penalty, "frequency_penalty"),
        ("presence_penalty", body.presence_penalty, "presence_penalty"),
    ]
    for field, value, param in fields:
        if value is not None:
            _assign(sampling, field, value, param)
    return sampling


def _message_text(message: ChatMessage, index: int) -> str:
    """Flattens a content-parts list to text; images and audio are refused."""
    if message.content is None or isinstance(message.content, str):
        return message.content or ""
    texts = []
    for j, part in enumerate(message.content):
        if part.type in ("text", "input_text") and part.text is not None:
            texts.append(part.text)
        else:
            raise unsupported(
                f"Content parts of type `{part.type}` are not supported; send text.",
                f"messages.{index}.content.{j}.type",
            )
    return "\n".join(texts)


def chat_start(body: ChatCompletionRequest) -> pb.GenerateStart:
    _refuse_common(body)
    if body.tools:
        raise unsupported("`tools` are not supported.", "tools")
    if body.response_format is not None and body.response_format.type != "text":
        raise unsupported(
            f"`response_format` of type `{body.response_format.type}` is not supported.",
            "response_format.type",
        )
    if not body.messages:
        raise invalid_request("`messages` must not be empty.", "messages")
    chat = pb.ChatMessages(
        messages=[
            pb.ChatMessage(role=m.role, content=_message_text(m, i))
            for i, m in enumerate(body.messages)
        ]
    )
    max_tokens = (
        body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    )
    sampling = _sampling(body, max_tokens, bool(body.logprobs), body.top_logprobs)
    return pb.GenerateStart(model=body.model or "", chat=chat, sampling=sampling)


def completion_start(body: CompletionRequest) -> pb.GenerateStart:
    _refuse_common(body)
    if body.echo:
        raise unsupported("`echo` is not supported.", "echo")
    if body.best_of is not None and body.best_of != 1:
        raise unsupported("Only `best_of` = 1 is supported.", "best_of")
    if body.suffix:
        raise unsupported("`suffix` is not supported.", "suffix")
    start = pb.GenerateStart(model=body.model or "")
    prompt = body.prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str | list):
        if len(prompt) != 1:
            raise unsupported("Only one prompt per request is supported.", "prompt")
        prompt = prompt[0]
    if isinstance(prompt, str):
        start.prompt = prompt
    elif not prompt:
        raise invalid_request("`prompt` must not be empty.", "prompt")
    else:
        _assign(start.prompt_token_ids, "ids", list(prompt), "prompt")
    logprobs = body.logprobs is not None
    start.sampling.CopyFrom(_sampling(body, body.max_tokens, logprobs, body.logprobs))
    return start


def embed_request(body: EmbeddingRequest) -> pb.EmbedRequest:
    request = pb.EmbedRequest(model=body.model or "")
    items: Sequence[Any] = [body.input] if isinstance(body.input, str) else body.input
    single_ids = bool(items) and isinstance(items[0], int)
    if single_ids:
        items = [items]  # one input given as token ids
    if not items:
        raise invalid_request("`input` must not be empty.", "input")
    for i, item in enumerate(items):
        entry = request.inputs.add()
        if isinstance(item, str):
            entry.text = item
        else:
            _assign(entry.token_ids, "ids", list(item), "input" if single_ids else f"input.{i}")
    if body.dimensions is not None:
        _assign(request, "dimensions", body.dimensions, "dimensions")
    return request


# ---------------------------------------------------------------- responses


def usage(u: pb.Usage) -> dict[str, int]:
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
    }


def finish_reason(finished: pb.GenerateFinished) -> str:
    return FINISH_REASONS.get(finished.finish_reason, "stop")


def _token_bytes(raw: bytes, text: str) -> list[int]:
    return list(raw or text.encode())


def chat_logprobs(entries: Sequence[pb.TokenLogprob]) -> dict[str, Any]:
    """The chat shape: `{"content": [{token, logprob, bytes, top_logprobs}], "refusal": null}`."""
    return {
        "content": [
            {
                "token": e.token,
                "logprob": e.logprob,
                "bytes": _token_bytes(e.token_bytes, e.token),
                "top_logprobs": [
                    {
                        "token": t.token,
                        "logprob": t.logprob,
                        "bytes": _token_bytes(t.token_bytes, t.token),
                    }
                    for t in e.top_logprobs
                ],
            }
            for e in entries
        ],
        "refusal": None,
    }


def completion_logprobs(entries: Sequence[pb.TokenLogprob], text_offset: int) -> dict[str, Any]:
    """The legacy shape; offsets count characters of the completion from `text_offset`."""
    offsets = []
    for e in entries:
        offsets.append(text_offset)
        text_offset += len(e.token)
    return {
        "tokens": [e.token for e in entries],
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": [{t.token: t.logprob for t in e.top_logprobs} for e in entries],
        "text_offset": offsets,
    }


def _envelope(ids: ResponseIds, obj: str) -> dict[str, Any]:
    """The keys every completion object and chunk starts with, in wire order."""
    return {
        "id": ids.id,
        "object": obj,
        "created": ids.created,
        "model": ids.model,
        "system_fingerprint": None,
    }


def chat_completion(
    ids: ResponseIds,
    text: str,
    logprobs: Sequence[pb.TokenLogprob] | None,
    finished: pb.GenerateFinished,
) -> dict[str, Any]:
    return {
        **_envelope(ids, "chat.completion"),
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": text,
                    "tool_calls": None,
                    "refusal": None,
                },
                "logprobs": chat_logprobs(logprobs) if logprobs is not None else None,
                "finish_reason": finish_reason(finished),
            }
        ],
        "usage": usage(finished.usage),
    }


def text_completion(
    ids: ResponseIds,
    text: str,
    logprobs: Sequence[pb.TokenLogprob] | None,
    finished: pb.GenerateFinished,
) -> dict[str, Any]:
    return {
        **_envelope(ids, "text_completion"),
        "choices": [
            {
                "text": text,
                "index": 0,
                "logprobs": completion_logprobs(logprobs, 0) if logprobs is not None else None,
                "finish_reason": finish_reason(finished),
            }
        ],
        "usage": usage(finished.usage),
    }


def _chunk(
    ids: ResponseIds,
    obj: str,
    choices: list[dict[str, Any]],
    include_usage: bool,
    millm: dict[str, Any] | None = None,
) -> dict[str, Any]:
    chunk: dict[str, Any] = {**_envelope(ids, obj), "choices": choices}
    if include_usage:
        chunk["usage"] = None
    if millm is not None:
        # An extra top-level key: the SDK keeps it in `model_extra`.
        chunk["millm"] = millm
    return chunk


def chat_chunk(
    ids: ResponseIds,
    delta: dict[str, Any],
    *,
    include_usage: bool,
    logprobs: dict[str, Any] | None = None,
    finish: str | None = None,
    millm: dict[str, Any] | None = None,
) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
    return _chunk(ids, "chat.completion.chunk", [choice], include_usage, millm)


def completion_chunk(
    ids: ResponseIds,
    text: str,
    *,
    include_usage: bool,
    logprobs: dict[str, Any] | None = None,
    finish: str | None = None,
    millm: dict[str, Any] | None = None,
) -> dict[str, Any]:
    choice = {"text": text, "index": 0, "logprobs": logprobs, "finish_reason": finish}
    return _chunk(ids, "text_completion", [choice], include_usage, millm)


def usage_chunk(ids: ResponseIds, obj: str, u: pb.Usage) -> dict[str, Any]:
    """The extra `include_usage` chunk: no choices, the whole request's usage."""
    chunk = _chunk(ids, obj, [], include_usage=True)
    chunk["usage"] = usage(u)
    return chunk


def float32_base64(values: Sequence[float]) -> str:
    """Little-endian float32 bytes, as `np.frombuffer(..., "float32")` reads them."""
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode("ascii")


def embeddings(response: pb.EmbedResponse, encoding_format: str | None) -> dict[str, Any]:
    encode: Callable[[Sequence[float]], Any] = (
        float32_base64 if encoding_format == "base64" else list
    )
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": encode(e.values)}
            for i, e in enumerate(response.embeddings)
        ],
        "model": response.model,
        "usage": {"prompt_tokens": response.prompt_tokens, "total_tokens": response.prompt_tokens},
    }


def model_card(model: pb.ModelInfo, profile: str | None = None) -> dict[str, Any]:
    """The served model, or with `profile` its `<model>:<profile>` alias."""
    return {
        "id": f"{model.id}:{profile}" if profile else model.id,
        "object": "model",
        "created": model.loaded_at_unix_s,
        "owned_by": "millm",
    }
