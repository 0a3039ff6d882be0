"""Pure translation: OpenAI request models -> millm.v1 messages, and results -> OpenAI JSON.

No I/O here. Capabilities the bridge does not offer (images, audio, `best_of`,
`suffix`) are refused with a 400 naming the offending field; values are otherwise
passed through for the inference service to range-check.
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from millm.v1 import inference_service_pb2 as pb
from openai_bridge.errors import invalid_request, unsupported
from openai_bridge.openai_api.protocol import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    EmbeddingRequest,
    FunctionDefinition,
    NamedToolChoice,
    SamplingFields,
)
from openai_bridge.openai_api.tool_calls import ParsedCall, parse_whole

# Most independent samples one request may ask for (`n`); each is a row of the batch.
MAX_N = 16

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


def choice_count(body: SamplingFields) -> int:
    """`n`: how many independent samples to generate."""
    n = 1 if body.n is None else body.n
    if not 1 <= n <= MAX_N:
        raise invalid_request(f"`n` must be between 1 and {MAX_N}; got {n}.", "n")
    return n


def _logit_bias(bias: dict[str, float] | None) -> dict[int, float]:
    """OpenAI sends token ids as JSON object keys, so as strings."""
    out = {}
    for key, value in (bias or {}).items():
        try:
            out[int(key)] = value
        except ValueError:
            raise invalid_request(
                f"`logit_bias` keys are token ids; {key!r} is not a number.", "logit_bias"
            ) from None
    return out


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
    try:
        sampling.logit_bias.update(_logit_bias(body.logit_bias))
    except (ValueError, TypeError, OverflowError):
        raise invalid_request("`logit_bias` has a token id out of range.", "logit_bias") from None
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


ToolMode = Literal["none", "tools", "functions"]


@dataclass(frozen=True)
class ChatPlan:
    """A chat request translated: the generation to start, how many samples, and
    whether the reply is searched for tool calls (and in which shape they are told)."""

    start: pb.GenerateStart
    n: int
    tool_mode: ToolMode


def _arguments_text(arguments: str | dict[str, Any]) -> str:
    return arguments if isinstance(arguments, str) else json.dumps(arguments)


def _chat_message(message: ChatMessage, index: int) -> pb.ChatMessage:
    role = "tool" if message.role == "function" else message.role
    calls = [
        pb.ToolCall(
            id=call.id,
            name=call.function.name,
            arguments_json=_arguments_text(call.function.arguments),
        )
        for call in message.tool_calls or []
    ]
    if message.function_call is not None:
        calls.append(
            pb.ToolCall(
                name=message.function_call.name,
                arguments_json=_arguments_text(message.function_call.arguments),
            )
        )
    return pb.ChatMessage(
        role=role,
        content=_message_text(message, index),
        tool_calls=calls,
        tool_call_id=message.tool_call_id or "",
        name=message.name or "",
    )


def _tool_definitions(body: ChatCompletionRequest) -> tuple[list[FunctionDefinition], ToolMode]:
    if body.tools and body.functions:
        raise invalid_request("Send `tools` or the older `functions`, not both.", "functions")
    if body.functions:
        return list(body.functions), "functions"
    definitions = []
    for i, tool in enumerate(body.tools or []):
        if tool.type != "function" or tool.function is None:
            raise unsupported(
                f"Tools of type `{tool.type}` are not supported; send function tools.",
                f"tools[{i}].type",
            )
        definitions.append(tool.function)
    return definitions, "tools"


def _tool_choice(body: ChatCompletionRequest, mode: ToolMode) -> str | NamedToolChoice | None:
    """tool_choice, or the legacy function_call spelled the same way."""
    if mode == "functions":
        legacy = body.function_call
        if legacy is None or isinstance(legacy, str):
            return legacy
        return NamedToolChoice(function=legacy)
    return body.tool_choice


def _tools_and_constraint(body: ChatCompletionRequest, start: pb.GenerateStart) -> ToolMode:
    """Offers the tools and constrains the reply as `tool_choice` asks; returns how the
    reply is read. `none` offers nothing; `auto` (the default) lets the model choose;
    `required` and a named function allow nothing but calls."""
    definitions, mode = _tool_definitions(body)
    choice = _tool_choice(body, mode)
    param = "function_call" if mode == "functions" else "tool_choice"
    if not definitions:
        if choice not in (None, "none", "auto"):
            raise invalid_request(f"`{param}` needs `tools` to choose from.", param)
        return "none"
    if choice == "none":
        return "none"
    for definition in definitions:
        start.chat.tools.append(
            pb.ToolDefinition(
                name=definition.name,
                description=definition.description or "",
                parameters_json=json.dumps(definition.parameters)
                if definition.parameters is not None
                else "",
            )
        )
    # Several constrained calls only when asked for outright: made to call, small
    # models repeat calls until max_tokens cuts the last one (7 of 10 replies in
    # bench/constrained.py with OpenAI's implicit default), and a required reply
    # must always be valid.
    parallel = body.parallel_tool_calls is True and mode == "tools"
    if choice == "required":
        start.constraint.tool_calls.CopyFrom(pb.ToolCallConstraint(parallel=parallel))
    elif isinstance(choice, NamedToolChoice):
        names = [d.name for d in definitions]
        if choice.function.name not in names:
            raise invalid_request(
                f"`{param}` names `{choice.function.name}`, which is not among the tools "
                f"offered ({', '.join(names)}).",
                param,
            )
        start.constraint.tool_calls.CopyFrom(pb.ToolCallConstraint(name=choice.function.name))
    return mode


def _response_format(body: ChatCompletionRequest, start: pb.GenerateStart) -> None:
    fmt = body.response_format
    if fmt is None or fmt.type == "text":
        return
    if start.HasField("constraint"):
        raise invalid_request(
            "`response_format` cannot be combined with a `tool_choice` that requires a call.",
            "response_format",
        )
    if fmt.type == "json_object":
        start.constraint.json_object.SetInParent()
    elif fmt.type == "json_schema":
        if fmt.json_schema is None or fmt.json_schema.json_schema is None:
            raise invalid_request(
                "`response_format.json_schema.schema` is required for type `json_schema`.",
                "response_format.json_schema.schema",
            )
        start.constraint.json_schema = json.dumps(fmt.json_schema.json_schema)
    else:
        raise unsupported(
            f"`response_format` of type `{fmt.type}` is not supported; use `text`, "
            "`json_object` or `json_schema`.",
            "response_format.type",
        )


def chat_start(body: ChatCompletionRequest) -> ChatPlan:
    n = choice_count(body)
    if not body.messages:
        raise invalid_request("`messages` must not be empty.", "messages")
    chat = pb.ChatMessages(
        messages=[_chat_message(m, i) for i, m in enumerate(body.messages)],
        continue_final_message=bool(body.continue_final_message),
    )
    if body.add_generation_prompt is not None:
        chat.add_generation_prompt = body.add_generation_prompt
    max_tokens = (
        body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    )
    sampling = _sampling(body, max_tokens, bool(body.logprobs), body.top_logprobs)
    start = pb.GenerateStart(model=body.model or "", chat=chat, sampling=sampling)
    tool_mode = _tools_and_constraint(body, start)
    _response_format(body, start)
    return ChatPlan(start, n, tool_mode)


def sample_starts(start: pb.GenerateStart, n: int) -> list[pb.GenerateStart]:
    """`n` independent samples of one request: with a seed, sample i draws from seed + i
    (reproducible, and different from each other); without one, each draws its own."""
    starts = [start]
    for i in range(1, n):
        copy = pb.GenerateStart()
        copy.CopyFrom(start)
        if copy.sampling.HasField("seed"):
            copy.sampling.seed = (start.sampling.seed + i) % 2**64
        starts.append(copy)
    return starts


@dataclass(frozen=True)
class CompletionPlan:
    """A legacy completion translated: the generation every choice shares (model,
    sampling; `millm` is applied to it), each prompt's input, `n` samples of each, and
    whether each choice starts with its prompt (`echo`)."""

    start: pb.GenerateStart
    inputs: list[pb.GenerateStart]
    n: int
    echo: bool

    def choice_starts(self) -> list[pb.GenerateStart]:
        """One start per choice, in OpenAI's order: the `n` samples of the first
        prompt, then of the next."""
        starts = []
        for prompt in self.inputs:
            start = pb.GenerateStart()
            start.CopyFrom(self.start)
            start.MergeFrom(prompt)
            starts.extend(sample_starts(start, self.n))
        return starts


def _prompts(prompt: Any) -> list[str | list[int]]:
    """The prompt forms OpenAI takes: a string, token ids, or a list of either."""
    if isinstance(prompt, str):
        return [prompt]
    if prompt and isinstance(prompt[0], int):
        return [list(prompt)]
    return list(prompt)


def completion_start(body: CompletionRequest) -> CompletionPlan:
    n = choice_count(body)
    if body.best_of is not None and body.best_of != n:
        raise unsupported("`best_of` must equal `n` (no server-side ranking).", "best_of")
    if body.suffix:
        raise unsupported("`suffix` is not supported.", "suffix")
    if body.echo and body.logprobs is not None:
        raise unsupported(
            "`echo` with `logprobs` would need the prompt's logprobs, which this server "
            "does not compute; drop one of them.",
            "echo",
        )
    prompts = _prompts(body.prompt)
    if not prompts:
        raise invalid_request("`prompt` must not be empty.", "prompt")
    if len(prompts) * n > MAX_N:
        raise invalid_request(
            f"{len(prompts)} prompts with `n` = {n} would make {len(prompts) * n} "
            f"completions; at most {MAX_N} per request.",
            "prompt",
        )
    logprobs = body.logprobs is not None
    sampling = _sampling(body, body.max_tokens, logprobs, body.logprobs)
    inputs = []
    for i, prompt in enumerate(prompts):
        param = "prompt" if len(prompts) == 1 else f"prompt[{i}]"
        entry = pb.GenerateStart()
        if isinstance(prompt, str):
            entry.prompt = prompt
        elif not prompt:
            raise invalid_request("`prompt` must not be empty.", param)
        else:
            _assign(entry.prompt_token_ids, "ids", list(prompt), param)
            # Token ids are echoed as the service reads them back.
            entry.echo_prompt = bool(body.echo)
        inputs.append(entry)
    start = pb.GenerateStart(model=body.model or "", sampling=sampling)
    return CompletionPlan(start, inputs, n, bool(body.echo))


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


def usage_total(finished: Sequence[pb.GenerateFinished], samples: int = 1) -> dict[str, int]:
    """Usage of choices in OpenAI's order, `samples` per prompt: each prompt counted
    once, the completions summed."""
    prompt_tokens = sum(f.usage.prompt_tokens for f in finished[::samples])
    completion_tokens = sum(f.usage.completion_tokens for f in finished)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
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
