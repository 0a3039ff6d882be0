"""Pure translation of results: millm.v1 messages -> OpenAI JSON (responses, chunks,
embeddings, model cards). Requests go the other way in `build.py`.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from millm.v1 import inference_service_pb2 as pb
from openai_bridge.openai_api.tool_calls import ParsedCall, ToolMode, parse_whole

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


def usage(u: pb.Usage) -> dict[str, Any]:
    return usage_total([pb.GenerateFinished(usage=u)])


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


def usage_total(finished: Sequence[pb.GenerateFinished], samples: int = 1) -> dict[str, Any]:
    """Usage of choices in OpenAI's order, `samples` per prompt: each prompt counted
    once, the completions summed. `cached_tokens`: prompt tokens the prefix cache
    supplied (docs/openai-api.md)."""
    prompt_tokens = sum(f.usage.prompt_tokens for f in finished[::samples])
    completion_tokens = sum(f.usage.completion_tokens for f in finished)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {
            "cached_tokens": sum(f.usage.cached_tokens for f in finished[::samples])
        },
    }


def _call_json(call: ParsedCall) -> dict[str, Any]:
    return {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    }


def call_finish_reason(finish: str, calls: bool, tool_mode: ToolMode) -> str:
    """A reply that ended by itself after calling tools says so."""
    if calls and finish == "stop":
        return "function_call" if tool_mode == "functions" else "tool_calls"
    return finish


def chat_choice(
    index: int,
    text: str,
    logprobs: Sequence[pb.TokenLogprob] | None,
    finished: pb.GenerateFinished,
    tool_mode: ToolMode = "none",
) -> dict[str, Any]:
    calls: list[ParsedCall] = []
    if tool_mode != "none":
        text, calls = parse_whole(text)
    message: dict[str, Any] = {
        "role": "assistant",
        # OpenAI sends null content beside calls when the model wrote nothing else.
        "content": text if text or not calls else None,
        "tool_calls": None,
        "refusal": None,
    }
    if calls and tool_mode == "functions":
        message["function_call"] = _call_json(calls[0])["function"]
    elif calls:
        message["tool_calls"] = [_call_json(call) for call in calls]
    return {
        "index": index,
        "message": message,
        "logprobs": chat_logprobs(logprobs) if logprobs is not None else None,
        "finish_reason": call_finish_reason(finish_reason(finished), bool(calls), tool_mode),
    }


def chat_completion(
    ids: ResponseIds, choices: list[dict[str, Any]], usage: dict[str, int]
) -> dict[str, Any]:
    return {**_envelope(ids, "chat.completion"), "choices": choices, "usage": usage}


def completion_choice(
    index: int,
    text: str,
    logprobs: Sequence[pb.TokenLogprob] | None,
    finished: pb.GenerateFinished,
    echo: str = "",
) -> dict[str, Any]:
    return {
        "text": echo + text,
        "index": index,
        "logprobs": completion_logprobs(logprobs, len(echo)) if logprobs is not None else None,
        "finish_reason": finish_reason(finished),
    }


def text_completion(
    ids: ResponseIds, choices: list[dict[str, Any]], usage: dict[str, int]
) -> dict[str, Any]:
    return {**_envelope(ids, "text_completion"), "choices": choices, "usage": usage}


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
    index: int = 0,
) -> dict[str, Any]:
    choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
    return _chunk(ids, "chat.completion.chunk", [choice], include_usage, millm)


def completion_chunk(
    ids: ResponseIds,
    text: str,
    *,
    include_usage: bool,
    logprobs: dict[str, Any] | None = None,
    finish: str | None = None,
    millm: dict[str, Any] | None = None,
    index: int = 0,
) -> dict[str, Any]:
    choice = {"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish}
    return _chunk(ids, "text_completion", [choice], include_usage, millm)


def usage_chunk(ids: ResponseIds, obj: str, usage: dict[str, int]) -> dict[str, Any]:
    """The extra `include_usage` chunk: no choices, the whole request's usage."""
    chunk = _chunk(ids, obj, [], include_usage=True)
    chunk["usage"] = usage
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
