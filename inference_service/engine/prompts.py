"""Turns chat turns and plain text into token ids with the model's own tokenizer."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from inference_service.engine.grammar import TOOL_CALL_CLOSE, TOOL_CALL_OPEN
from inference_service.engine.types import ChatOptions, ChatTurn, ToolCallRecord, ToolSpec
from inference_service.errors import InvalidArgumentError

# OpenAI's newer "developer" role means what chat templates call "system".
_ROLE_ALIASES = {"developer": "system"}
_KNOWN_ROLES = frozenset({"system", "user", "assistant", "tool"})
NO_OPTIONS = ChatOptions()

# Tools for a model whose chat template has no tool format of its own: a system
# message lists them and asks for the same `<tool_call>` framing that
# constrained decoding enforces (the Hermes / Qwen convention). docs/openai-api.md
# shows it.
FALLBACK_TOOLS_INTRO = (
    "You can call functions to help you answer. These are the functions, one JSON object per line:"
)
FALLBACK_TOOLS_HOWTO = (
    "To call a function, reply with only this, one block per call:\n"
    f'{TOOL_CALL_OPEN}{{"name": "<function name>", "arguments": {{<arguments as JSON>}}}}'
    f"{TOOL_CALL_CLOSE}\n"
    "If no function is needed, answer normally."
)


def render_chat(
    tokenizer: Any, turns: Sequence[ChatTurn], options: ChatOptions = NO_OPTIONS
) -> list[int]:
    """Token ids of `turns` in the chat template, ending with the assistant's cue
    (or inside the last turn, when continuing it)."""
    if not turns:
        raise InvalidArgumentError(
            "'messages' must contain at least one message.", param="messages"
        )
    if not getattr(tokenizer, "chat_template", None):
        raise InvalidArgumentError(
            "This model has no chat template; send a plain prompt to the completions "
            "endpoint instead.",
            param="messages",
        )
    continuing = options.continue_final_message
    cue = options.add_generation_prompt if options.add_generation_prompt is not None else True
    if continuing and options.add_generation_prompt is None:
        cue = False
    if continuing and cue:
        raise InvalidArgumentError(
            "`continue_final_message` continues the last message, so "
            "`add_generation_prompt` must be false.",
            param="add_generation_prompt",
        )
    if continuing and _role(turns[-1], len(turns) - 1) != "assistant":
        raise InvalidArgumentError(
            "`continue_final_message` needs the last message to be the assistant's.",
            param="continue_final_message",
        )
    native = bool(options.tools) and template_has_tools(tokenizer)
    messages = [_message(turn, i, native) for i, turn in enumerate(turns)]
    extra: dict[str, Any] = {}
    if native:
        extra["tools"] = [_tool_json(tool) for tool in options.tools]
    elif options.tools:
        messages = _with_tool_prompt(messages, options.tools)
    try:
        # Rendered to text first: with tokenize=True transformers 5 returns a
        # BatchEncoding whose shape depends on other flags. The template already
        # contains the special tokens, so encoding must not add more.
        text = tokenizer.apply_chat_template(
            messages,
            tokenize=False,
            add_generation_prompt=cue,
            continue_final_message=continuing,
            **extra,
        )
    except Exception as exc:  # jinja2 errors, and templates that raise on purpose
        raise InvalidArgumentError(
            f"The model's chat template refused these messages: {exc}", param="messages"
        ) from None
    return list(tokenizer.encode(text, add_special_tokens=False))


def template_has_tools(tokenizer: Any) -> bool:
    """Whether the chat template renders `tools` itself (templates name the variable)."""
    template = getattr(tokenizer, "chat_template", None) or ""
    return "tools" in template


def _role(turn: ChatTurn, index: int) -> str:
    role = _ROLE_ALIASES.get(turn.role, turn.role)
    if role not in _KNOWN_ROLES:
        raise InvalidArgumentError(
            f"messages[{index}].role is {turn.role!r}; expected one of "
            "'system', 'developer', 'user', 'assistant' or 'tool'.",
            param="messages",
        )
    return role


def _message(turn: ChatTurn, index: int, native_tools: bool) -> dict[str, Any]:
    role = _role(turn, index)
    message: dict[str, Any] = {"role": role, "content": turn.content}
    if native_tools:
        if turn.tool_calls:
            message["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": _arguments(call)},
                }
                for call in turn.tool_calls
            ]
        if turn.tool_call_id:
            message["tool_call_id"] = turn.tool_call_id
        if turn.name:
            message["name"] = turn.name
        return message
    # The fallback writes calls and results as text, the way the model was asked to.
    if turn.tool_calls:
        blocks = [call_text(call.name, _arguments(call)) for call in turn.tool_calls]
        message["content"] = "\n".join([turn.content, *blocks] if turn.content else blocks)
    if role == "tool":
        message["content"] = f"<tool_response>\n{turn.content}\n</tool_response>"
    return message


def call_text(name: str, arguments: Any) -> str:
    """One call as the fallback format and the tool-call grammar write it."""
    body = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
    return f"{TOOL_CALL_OPEN}{body}{TOOL_CALL_CLOSE}"


def _arguments(call: ToolCallRecord) -> Any:
    """Arguments as an object (templates serialise them themselves), or the raw text
    when a client sent something that is not JSON."""
    try:
        return json.loads(call.arguments_json) if call.arguments_json else {}
    except json.JSONDecodeError:
        return call.arguments_json


def _tool_json(tool: ToolSpec) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name}
    if tool.description:
        function["description"] = tool.description
    function["parameters"] = (
        json.loads(tool.parameters_json) if tool.parameters_json else {"type": "object"}
    )
    return {"type": "function", "function": function}


def _with_tool_prompt(
    messages: list[dict[str, Any]], tools: Sequence[ToolSpec]
) -> list[dict[str, Any]]:
    listing = "\n".join(
        json.dumps(_tool_json(tool)["function"], ensure_ascii=False) for tool in tools
    )
    prompt = f"{FALLBACK_TOOLS_INTRO}\n{listing}\n\n{FALLBACK_TOOLS_HOWTO}"
    if messages and messages[0]["role"] == "system":
        first = {**messages[0], "content": f"{messages[0]['content']}\n\n{prompt}"}
        return [first, *messages[1:]]
    return [{"role": "system", "content": prompt}, *messages]


def encode_text(tokenizer: Any, text: str, *, add_special_tokens: bool = True) -> list[int]:
    """Token ids of plain text (a completions prompt or an embedding input)."""
    return list(tokenizer.encode(text, add_special_tokens=add_special_tokens))


def decode_tokens(tokenizer: Any, token_ids: Sequence[int]) -> str:
    return tokenizer.decode(list(token_ids), skip_special_tokens=False)
