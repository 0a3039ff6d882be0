"""Checks a request before it is admitted, with errors that name the OpenAI field.

Every check here is cheap and runs on the caller's thread, so a bad request is
refused at once instead of after waiting in the queue.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence

from inference_service.engine.types import ChatTurn, SamplingOptions, ToolSpec
from inference_service.errors import ContextLengthExceededError, InvalidArgumentError

MAX_STOP_SEQUENCES = 4
MAX_TOP_LOGPROBS = 20
MAX_LOGIT_BIAS = 100.0


def validate_sampling(options: SamplingOptions) -> None:
    """Raises InvalidArgumentError for the first option outside OpenAI's documented range."""
    _check_range("temperature", options.temperature, 0.0, 2.0, "between 0 and 2")
    if not (_finite(options.top_p) and 0.0 < options.top_p <= 1.0):
        raise InvalidArgumentError(
            f"top_p must be greater than 0 and at most 1; got {options.top_p}.", param="top_p"
        )
    _check_range("frequency_penalty", options.frequency_penalty, -2.0, 2.0, "between -2 and 2")
    _check_range("presence_penalty", options.presence_penalty, -2.0, 2.0, "between -2 and 2")
    if options.max_tokens is not None and options.max_tokens < 1:
        raise InvalidArgumentError(
            f"max_tokens must be at least 1; got {options.max_tokens}.", param="max_tokens"
        )
    if not 0 <= options.top_logprobs <= MAX_TOP_LOGPROBS:
        raise InvalidArgumentError(
            f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}; got {options.top_logprobs}.",
            param="top_logprobs",
        )
    if options.top_logprobs and not options.logprobs:
        raise InvalidArgumentError(
            "top_logprobs requires logprobs to be true.", param="top_logprobs"
        )
    if len(options.stop) > MAX_STOP_SEQUENCES:
        raise InvalidArgumentError(
            f"stop may hold at most {MAX_STOP_SEQUENCES} sequences; got {len(options.stop)}.",
            param="stop",
        )
    if any(not s for s in options.stop):
        raise InvalidArgumentError("stop sequences must not be empty strings.", param="stop")
    for token_id, bias in options.logit_bias:
        _check_range(
            f"logit_bias.{token_id}", bias, -MAX_LOGIT_BIAS, MAX_LOGIT_BIAS, "between -100 and 100"
        )


def validate_logit_bias(options: SamplingOptions, vocab_size: int) -> None:
    for token_id, _ in options.logit_bias:
        if not 0 <= token_id < vocab_size:
            raise InvalidArgumentError(
                f"logit_bias names token id {token_id}, outside this model's vocabulary "
                f"(0 to {vocab_size - 1}).",
                param="logit_bias",
            )


def validate_tools(tools: Sequence[ToolSpec]) -> None:
    """Names present and unique, parameters a JSON object (or absent)."""
    seen: set[str] = set()
    for tool in tools:
        param = f"tools[{tool.index}].function"
        if not tool.name:
            raise InvalidArgumentError("A tool needs a `name`.", param=f"{param}.name")
        if tool.name in seen:
            raise InvalidArgumentError(
                f"Two tools are named `{tool.name}`; names must be unique.", param=f"{param}.name"
            )
        seen.add(tool.name)
        if tool.parameters_json:
            try:
                parameters = json.loads(tool.parameters_json)
            except json.JSONDecodeError:
                parameters = None
            if not isinstance(parameters, dict):
                raise InvalidArgumentError(
                    "`parameters` must be a JSON Schema object.", param=f"{param}.parameters"
                )


def validate_prompt(
    prompt_token_ids: Sequence[int], vocab_size: int, *, param: str = "messages"
) -> None:
    if not prompt_token_ids:
        raise InvalidArgumentError("The prompt is empty; send at least one token.", param=param)
    for token_id in prompt_token_ids:
        if not 0 <= token_id < vocab_size:
            raise InvalidArgumentError(
                f"Token id {token_id} is outside this model's vocabulary (0 to {vocab_size - 1}).",
                param=param,
            )


def fit_context(
    options: SamplingOptions,
    prompt_tokens: int,
    *,
    max_context_tokens: int,
    default_max_tokens: int,
    prompt_param: str = "messages",
) -> SamplingOptions:
    """Returns `options` with max_tokens set, or raises if prompt + completion cannot fit."""
    room = max_context_tokens - prompt_tokens
    if room < 1:
        raise ContextLengthExceededError(
            f"This model's maximum context length is {max_context_tokens} tokens; the prompt "
            f"has {prompt_tokens} tokens, which leaves no room for a completion. "
            "Shorten the prompt.",
            param=prompt_param,
        )
    if options.max_tokens is None:
        return dataclasses.replace(options, max_tokens=min(default_max_tokens, room))
    if options.max_tokens > room:
        raise ContextLengthExceededError(
            f"This model's maximum context length is {max_context_tokens} tokens; the prompt "
            f"has {prompt_tokens} tokens and max_tokens asks for {options.max_tokens}. "
            "Lower max_tokens or shorten the prompt.",
            param="max_tokens",
        )
    return options


def check_prompt_floor(
    chars: int, longest_token_chars: int, max_context_tokens: int, *, param: str
) -> None:
    """Refuses, without tokenizing, a prompt that cannot fit whatever its text says.

    No token stands for more than `longest_token_chars` characters, so `chars`
    characters of prompt text take at least ceil(chars / longest) tokens. Same
    error as `fit_context`, which refuses at max_context_tokens prompt tokens.
    """
    floor = -(-chars // longest_token_chars)
    if floor >= max_context_tokens:
        raise ContextLengthExceededError(
            f"This model's maximum context length is {max_context_tokens} tokens; the prompt "
            f"has {chars} characters, so at least {floor} tokens, which leaves no room for a "
            "completion. Shorten the prompt.",
            param=param,
        )


def chat_chars(turns: Sequence[ChatTurn], tools: Sequence[ToolSpec] = ()) -> int:
    """Characters of a chat that surely reach the rendered prompt: a lower bound,
    cheap enough for a 10 MB request (no tokenizing, no parsing).

    Contents count without leading and trailing whitespace (templates may trim).
    A tool's `parameters` is parsed and dumped again, which drops JSON whitespace
    and turns an escape such as \\u0041 (six characters) into one: only its other
    characters count, divided by six.
    """
    total = sum(len(turn.content.strip()) for turn in turns)
    for tool in tools:
        params = tool.parameters_json
        solid = len(params) - sum(params.count(c) for c in " \t\n\r")
        total += len(tool.name) + len(tool.description.strip()) + solid // 6
    return total


def _finite(value: float) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _check_range(param: str, value: float, low: float, high: float, words: str) -> None:
    if not (_finite(value) and low <= value <= high):
        raise InvalidArgumentError(f"{param} must be {words}; got {value}.", param=param)
