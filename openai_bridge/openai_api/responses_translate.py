"""Pure translation for the Responses API: a `/v1/responses` body -> a chat request, and
a chat completion -> a `response` object.

The Responses API is served by the chat path, so everything here is reshaping. What
the bridge cannot do is refused with a 400 naming the field as the client spelt it:
stored state (`previous_response_id`, `conversation`, `background`), built-in tools,
images and files, logprobs. Fields that change nothing here are accepted: `store`
(nothing is ever stored), `reasoning` (the model does not reason), `truncation`
(an input too long for the context is a 400 either way), `include` entries about
items this server never produces, and the hints `text.verbosity`, `service_tier`,
`max_tool_calls` (built-in tools only), `prompt_cache_key`, `safety_identifier`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal, cast

from pydantic import BaseModel, ValidationError

from openai_bridge.errors import InferenceError, invalid_request, unsupported
from openai_bridge.openai_api.protocol import (
    ChatCompletionRequest,
    ChatMessage,
    ContentPart,
    FunctionCall,
    FunctionDefinition,
    JsonSchemaFormat,
    MillmExtension,
    NamedFunction,
    NamedToolChoice,
    OpenAIBody,
    ResponseFormat,
    StreamOptions,
    Tool,
    ToolCall,
)
from openai_bridge.openai_api.translate import ResponseIds

ROLES = ("user", "system", "developer", "assistant")
TEXT_PARTS = ("input_text", "output_text")
# `include` entries about outputs this server never produces (built-in tool calls,
# reasoning, images): asking for them changes nothing. Logprobs would, so they are refused.
HARMLESS_INCLUDES = frozenset(
    {
        "code_interpreter_call.outputs",
        "computer_call_output.output.image_url",
        "file_search_call.results",
        "message.input_image.image_url",
        "reasoning.encrypted_content",
        "web_search_call.action.sources",
        "web_search_call.results",
    }
)
# Chat Completions fields sent here by mistake: each has a Responses spelling.
RESPELLED = {
    "messages": "input",
    "max_tokens": "max_output_tokens",
    "max_completion_tokens": "max_output_tokens",
    "response_format": "text.format",
    "functions": "tools",
    "function_call": "tool_choice",
}
# Chat Completions fields with no Responses counterpart.
CHAT_ONLY = (
    "n",
    "stop",
    "seed",
    "logprobs",
    "logit_bias",
    "frequency_penalty",
    "presence_penalty",
)
# How the chat path names a field -> how a Responses client sent it (prefixes; the
# indices of `messages` are not those of `input`, so those map to `input` whole).
CHAT_PARAMS = (
    ("response_format.json_schema", "text.format"),
    ("response_format", "text.format"),
    ("max_tokens", "max_output_tokens"),
    ("messages", "input"),
)


class ResponsesRequest(OpenAIBody):
    """The fields read here; input items and tools are checked by hand below, so that
    a refusal names the exact place (`input[2].content[0].type`)."""

    model: str | None = None
    input: str | list[dict[str, Any]] | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stream: bool | None = False
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: dict[str, Any] | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    store: bool | None = None
    previous_response_id: str | None = None
    conversation: str | dict[str, Any] | None = None
    background: bool | None = None
    prompt: dict[str, Any] | None = None
    include: list[str] | None = None
    top_logprobs: int | None = None
    reasoning: dict[str, Any] | None = None
    truncation: Literal["auto", "disabled"] | None = None
    # miLLM's own extension, handed to the chat path unchanged.
    millm: MillmExtension | None = None


# ---------------------------------------------------------------- requests


def _refuse_unsupported(body: ResponsesRequest) -> None:
    extra = body.model_extra or {}
    for name, ours in RESPELLED.items():
        if name in extra:
            raise invalid_request(
                f"`{name}` is a Chat Completions field; the Responses API spells it `{ours}`.",
                name,
            )
    for name in CHAT_ONLY:
        if name in extra:
            raise unsupported(
                f"`{name}` is not part of the Responses API; use /v1/chat/completions for it.",
                name,
            )
    stored = "This server stores no responses or conversations"
    if body.previous_response_id is not None:
        raise unsupported(
            f"{stored}, so there is none to continue; send the whole conversation in `input`.",
            "previous_response_id",
        )
    if body.conversation is not None:
        raise unsupported(f"{stored}; send the whole conversation in `input`.", "conversation")
    if body.background:
        raise unsupported(
            f"{stored}, so a background response could not be polled; leave out "
            "`background` or send false.",
            "background",
        )
    if body.prompt is not None:
        raise unsupported(
            "Stored prompt templates are not supported; send `instructions` and `input`.",
            "prompt",
        )
    if body.top_logprobs:
        raise unsupported(
            "Logprobs are not available from /v1/responses; use /v1/chat/completions.",
            "top_logprobs",
        )
    for i, entry in enumerate(body.include or []):
        if entry not in HARMLESS_INCLUDES:
            raise unsupported(
                f"`include` value `{entry}` is not supported"
                + ("; for logprobs use /v1/chat/completions." if "logprobs" in entry else "."),
                f"include[{i}]",
            )


def _string(item: dict[str, Any], key: str, param: str) -> str:
    value = item.get(key)
    if not isinstance(value, str):
        raise invalid_request(f"`{param}` must be a string.", param)
    return value


def _parts(
    content: Any, param: str, kinds: tuple[str, ...], refusals: bool = False
) -> str | list[ContentPart]:
    """A content string, or a list of text parts as the chat path takes them; images,
    files and audio are refused where they stand."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise invalid_request(f"`{param}` must be a string or a list of content parts.", param)
    parts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in kinds:
            parts.append(ContentPart(type="text", text=_string(part, "text", f"{param}[{j}].text")))
        elif kind == "refusal" and refusals:
            # An earlier assistant turn that declined: its words are the turn's text.
            parts.append(
                ContentPart(type="text", text=_string(part, "refusal", f"{param}[{j}].refusal"))
            )
        else:
            raise unsupported(
                f"Content parts of type `{kind}` are not supported; send text "
                f"({', '.join(kinds)}).",
                f"{param}[{j}].type",
            )
    return parts


def _message(item: dict[str, Any], param: str) -> ChatMessage:
    role = item.get("role")
    if role not in ROLES:
        raise invalid_request(
            f"`{param}.role` must be one of {', '.join(ROLES)}; got {role!r}.", f"{param}.role"
        )
    content = _parts(item.get("content"), f"{param}.content", TEXT_PARTS, role == "assistant")
    return ChatMessage(role=role, content=content)


def _call(item: dict[str, Any], param: str) -> ToolCall:
    return ToolCall(
        id=_string(item, "call_id", f"{param}.call_id"),
        function=FunctionCall(
            name=_string(item, "name", f"{param}.name"),
            arguments=_string(item, "arguments", f"{param}.arguments"),
        ),
    )


def _messages(body: ResponsesRequest) -> list[ChatMessage]:
    messages = [ChatMessage(role="system", content=body.instructions)] if body.instructions else []
    if not body.input and not isinstance(body.input, str):
        raise invalid_request("`input` is required and must not be empty.", "input")
    if isinstance(body.input, str):
        return [*messages, ChatMessage(role="user", content=body.input)]
    for i, item in enumerate(body.input):
        param = f"input[{i}]"
        kind = item.get("type", "message")
        if kind == "message":
            messages.append(_message(item, param))
        elif kind == "function_call":
            # Calls made in one turn belong to one assistant message, after its text.
            last = messages[-1] if messages else None
            if last is None or last.role != "assistant":
                last = ChatMessage(role="assistant", content=None)
                messages.append(last)
            last.tool_calls = [*(last.tool_calls or []), _call(item, param)]
        elif kind == "function_call_output":
            messages.append(
                ChatMessage(
                    role="tool",
                    tool_call_id=_string(item, "call_id", f"{param}.call_id"),
                    content=_parts(item.get("output"), f"{param}.output", ("input_text",)),
                )
            )
        else:
            raise unsupported(
                f"Input items of type `{kind}` are not supported; send messages, "
                "`function_call` and `function_call_output` items.",
                f"{param}.type",
            )
    return messages


def _checked(model: type[BaseModel], raw: dict[str, Any], param: str) -> Any:
    """`raw` as `model`; a shape error names the field under `param`."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first.get("loc", ()) if "[" not in str(p))
        where = f"{param}.{loc}" if loc else param
        raise invalid_request(
            f"{first.get('msg', 'Invalid value')} (at `{where}`)", where
        ) from None


def _tools(body: ResponsesRequest) -> list[Tool] | None:
    """Responses function tools are flat; chat nests the definition under `function`."""
    if body.tools is None:
        return None
    tools = []
    for i, tool in enumerate(body.tools):
        if tool.get("type") != "function":
            raise unsupported(
                f"Tools of type `{tool.get('type')}` are not supported; send function tools.",
                f"tools[{i}].type",
            )
        fields = {k: v for k, v in tool.items() if k != "type"}
        tools.append(
            Tool(type="function", function=_checked(FunctionDefinition, fields, f"tools[{i}]"))
        )
    return tools


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice | None


def _tool_choice(choice: str | dict[str, Any] | None) -> ToolChoice:
    if choice is None or choice in ("none", "auto", "required"):
        return cast(ToolChoice, choice)
    if isinstance(choice, str):
        raise invalid_request(
            f"`tool_choice` must be none, auto, required or a function; got {choice!r}.",
            "tool_choice",
        )
    if choice.get("type") != "function":
        raise unsupported(
            f"`tool_choice` of type `{choice.get('type')}` is not supported; name a function "
            'as {"type": "function", "name": ...}.',
            "tool_choice.type",
        )
    return NamedToolChoice(function=NamedFunction(name=_string(choice, "name", "tool_choice.name")))


def _response_format(text: dict[str, Any] | None) -> ResponseFormat | None:
    """`text.format` as chat's `response_format`: json_schema's fields move down a level."""
    fmt = (text or {}).get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict):
        raise invalid_request("`text.format` must be an object.", "text.format")
    kind = fmt.get("type")
    if kind in ("text", "json_object"):
        return ResponseFormat(type=kind)
    if kind != "json_schema":
        raise unsupported(
            f"`text.format` of type `{kind}` is not supported; use text, json_object or "
            "json_schema.",
            "text.format.type",
        )
    if not isinstance(fmt.get("schema"), dict):
        raise invalid_request(
            "`text.format.schema` (an object) is required for type json_schema.",
            "text.format.schema",
        )
    fields = {k: v for k, v in fmt.items() if k != "type"}
    return ResponseFormat(
        type="json_schema", json_schema=_checked(JsonSchemaFormat, fields, "text.format")
    )


def chat_request(body: ResponsesRequest) -> ChatCompletionRequest:
    """The chat request that generates this response. A stream asks for the usage chunk,
    which the final event reports."""
    _refuse_unsupported(body)
    return ChatCompletionRequest(
        model=body.model,
        messages=_messages(body),
        max_tokens=body.max_output_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        stream=bool(body.stream),
        stream_options=StreamOptions(include_usage=True) if body.stream else None,
        tools=_tools(body),
        tool_choice=_tool_choice(body.tool_choice),
        parallel_tool_calls=body.parallel_tool_calls,
        response_format=_response_format(body.text),
        user=body.user,
        millm=body.millm,
    )


def _renamed(param: str) -> str:
    for chat, ours in CHAT_PARAMS:
        if param == chat or param.startswith((f"{chat}.", f"{chat}[")):
            return ours if chat == "messages" else ours + param[len(chat) :]
    return param


@contextmanager
def client_names() -> Iterator[None]:
    """Renames the chat path's errors to the fields a Responses client sent:
    `max_tokens` -> `max_output_tokens`, `response_format.json_schema.schema` ->
    `text.format.schema`, `messages` -> `input` (in `param` and in the message)."""
    try:
        yield
    except InferenceError as error:
        rename(error)
        raise


def rename(error: InferenceError) -> None:
    if error.param is None or (param := _renamed(error.param)) == error.param:
        return
    error.message = re.sub(rf"\b{re.escape(error.param)}\b", param, error.message)
    error.param = param


# ---------------------------------------------------------------- responses


def echo(body: ResponsesRequest) -> dict[str, Any]:
    """The request fields a response object repeats, as they took effect: nothing is
    stored, nothing reasons, nothing is truncated."""
    return {
        "instructions": body.instructions,
        "max_output_tokens": body.max_output_tokens,
        "parallel_tool_calls": body.parallel_tool_calls is not False,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": False,
        "temperature": body.temperature,
        "text": {"format": (body.text or {}).get("format") or {"type": "text"}},
        "tool_choice": body.tool_choice or "auto",
        "tools": body.tools or [],
        "top_p": body.top_p,
        "truncation": "disabled",
        "user": body.user,
        "metadata": body.metadata or {},
    }


def response_id(chat_id: str) -> str:
    """`resp_<request id>`: the chat path names it `chatcmpl-<request id>`."""
    return chat_id.removeprefix("chatcmpl-")


def output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    return {
        "type": "message",
        "id": item_id,
        "status": status,
        "role": "assistant",
        "content": [output_text(text)],
    }


def call_item_id(call_id: str) -> str:
    """`fc_<hex>` for the chat path's `call_<hex>`: one id per call, in both shapes."""
    return f"fc_{call_id.removeprefix('call_')}"


def call_item(call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": call_item_id(call_id),
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def message_id(rid: str, n: int = 0) -> str:
    return f"msg_{rid}" if n == 0 else f"msg_{rid}_{n}"


def status_of(finish_reason: str | None) -> str:
    """A reply cut off by `max_output_tokens` is incomplete; every other end completes it."""
    return "incomplete" if finish_reason == "length" else "completed"


def output_items(rid: str, choice: dict[str, Any]) -> list[dict[str, Any]]:
    """A chat choice as output items: its text as one message (also when empty, unless
    it only called tools), then one item per call. A truncated reply leaves its last
    item incomplete."""
    message = choice["message"]
    calls = message.get("tool_calls") or []
    items = []
    if message.get("content") or not calls:
        items.append(message_item(message_id(rid), message.get("content") or "", "completed"))
    for call in calls:
        function = call["function"]
        items.append(call_item(call["id"], function["name"], function["arguments"], "completed"))
    items[-1]["status"] = (
        "incomplete" if status_of(choice["finish_reason"]) == "incomplete" else "completed"
    )
    return items


def usage(chat_usage: dict[str, Any] | None) -> dict[str, Any] | None:
    if chat_usage is None:
        return None
    cached = chat_usage.get("prompt_tokens_details", {}).get("cached_tokens", 0)
    return {
        "input_tokens": chat_usage["prompt_tokens"],
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": chat_usage["completion_tokens"],
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": chat_usage["total_tokens"],
    }


def response_object(
    ids: ResponseIds,
    echoed: dict[str, Any],
    *,
    status: str,
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None,
    completed_at: int | None = None,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The `response` object, in every state a stream reports it and as the final body."""
    incomplete = {"reason": "max_output_tokens"} if status == "incomplete" else None
    return {
        "id": f"resp_{ids.id}",
        "object": "response",
        "created_at": ids.created,
        "status": status,
        "background": False,
        "completed_at": completed_at if status == "completed" else None,
        "error": error,
        "incomplete_details": incomplete,
        "model": ids.model,
        "output": output,
        "usage": usage,
        **echoed,
    }


def _millm_field(field: dict[str, Any], rid: str) -> dict[str, Any]:
    """The `millm` object with the unsteered comparison reshaped like the response."""
    if "default" not in field:
        return field
    default = field["default"]
    choice = default["choices"][0]
    return {
        **field,
        "default": {
            "status": status_of(choice["finish_reason"]),
            "output": output_items(f"{rid}_default", choice),
            "usage": usage(default["usage"]),
        },
    }


def from_chat(
    completion: dict[str, Any], echoed: dict[str, Any], completed_at: int
) -> dict[str, Any]:
    """A non-streamed chat completion as the `response` object."""
    ids = ResponseIds(response_id(completion["id"]), completion["created"], completion["model"])
    choice = completion["choices"][0]
    response = response_object(
        ids,
        echoed,
        status=status_of(choice["finish_reason"]),
        output=output_items(ids.id, choice),
        usage=usage(completion["usage"]),
        completed_at=completed_at,
    )
    if "millm" in completion:
        response["millm"] = _millm_field(completion["millm"], ids.id)
    return response
