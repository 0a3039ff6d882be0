"""The one builder of an OpenAI request's gRPC requests: a chat or legacy completion
body -> every `GenerateStart` it needs, an embeddings body -> its `EmbedRequest`.

Each request is built once, whole, and never changed afterwards. No I/O here (the
model id is split beforehand, `millm.choose_model`). Capabilities the bridge does
not offer (images, audio, `best_of`, `suffix`) are refused with a 400 naming the
offending field; values are otherwise passed through for the inference service to
range-check.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from millm.v1 import inference_service_pb2 as pb
from millm.v1 import steering_pb2 as stpb
from openai_bridge.errors import invalid_request, unsupported
from openai_bridge.openai_api import millm
from openai_bridge.openai_api.protocol import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    EmbeddingRequest,
    FunctionDefinition,
    NamedToolChoice,
    SamplingFields,
)
from openai_bridge.openai_api.tool_calls import ToolMode

# Most independent samples one request may ask for (`n`); each is a row of the batch.
MAX_N = 16
# Seeds the bridge picks for a comparison; small enough for any sampler backend.
SEED_RANGE = 2**31


@dataclass(frozen=True)
class GenerationPlan:
    """An OpenAI request's generations: one complete `GenerateStart` per choice, in
    OpenAI's order (the `samples` of the first prompt, then of the next); for
    `millm.compare` the unsteered twin of the first; the model as the client named
    it; the `millm` extension, to name service errors after the client's fields; and
    whether the answer streams."""

    starts: list[pb.GenerateStart]
    unsteered: pb.GenerateStart | None
    model: millm.ModelChoice
    extension: millm.Extension
    samples: int
    stream: bool

    @property
    def activations(self) -> bool:
        return self.extension.activations is not None


# ---------------------------------------------------------------- fields


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
                f"messages[{index}].content[{j}].type",
            )
    return "\n".join(texts)


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


def _tools(
    body: ChatCompletionRequest,
) -> tuple[list[pb.ToolDefinition], pb.OutputConstraint | None, ToolMode]:
    """The tools to offer and the constraint `tool_choice` asks for, and how the reply
    is read. `none` offers nothing; `auto` (the default) lets the model choose;
    `required` and a named function allow nothing but calls."""
    definitions, mode = _tool_definitions(body)
    choice = _tool_choice(body, mode)
    param = "function_call" if mode == "functions" else "tool_choice"
    if not definitions:
        if choice not in (None, "none", "auto"):
            raise invalid_request(f"`{param}` needs `tools` to choose from.", param)
        return [], None, "none"
    if choice == "none":
        return [], None, "none"
    offered = [
        pb.ToolDefinition(
            name=definition.name,
            description=definition.description or "",
            parameters_json=json.dumps(definition.parameters)
            if definition.parameters is not None
            else "",
        )
        for definition in definitions
    ]
    # Several constrained calls only when asked for outright: made to call, small
    # models repeat calls until max_tokens cuts the last one (7 of 10 replies in
    # bench/constrained.py with OpenAI's implicit default), and a required reply
    # must always be valid.
    parallel = body.parallel_tool_calls is True and mode == "tools"
    if choice == "required":
        calls = pb.ToolCallConstraint(parallel=parallel)
    elif isinstance(choice, NamedToolChoice):
        names = [d.name for d in definitions]
        if choice.function.name not in names:
            raise invalid_request(
                f"`{param}` names `{choice.function.name}`, which is not among the tools "
                f"offered ({', '.join(names)}).",
                param,
            )
        calls = pb.ToolCallConstraint(name=choice.function.name)
    else:
        return offered, None, mode
    return offered, pb.OutputConstraint(tool_calls=calls), mode


def _constraint(
    body: ChatCompletionRequest, tool_calls: pb.OutputConstraint | None
) -> pb.OutputConstraint | None:
    """The reply's constraint: the tool calls required, or `response_format`'s."""
    fmt = body.response_format
    if fmt is None or fmt.type == "text":
        return tool_calls
    if tool_calls is not None:
        raise invalid_request(
            "`response_format` cannot be combined with a `tool_choice` that requires a call.",
            "response_format",
        )
    if fmt.type == "json_object":
        return pb.OutputConstraint(json_object=pb.JsonObjectConstraint())
    if fmt.type == "json_schema":
        if fmt.json_schema is None or fmt.json_schema.json_schema is None:
            raise invalid_request(
                "`response_format.json_schema.schema` is required for type `json_schema`.",
                "response_format.json_schema.schema",
            )
        return pb.OutputConstraint(json_schema=json.dumps(fmt.json_schema.json_schema))
    raise unsupported(
        f"`response_format` of type `{fmt.type}` is not supported; use `text`, "
        "`json_object` or `json_schema`.",
        "response_format.type",
    )


def _prompts(prompt: Any) -> list[str | list[int]]:
    """The prompt forms OpenAI takes: a string, token ids, or a list of either."""
    if isinstance(prompt, str):
        return [prompt]
    if prompt and isinstance(prompt[0], int):
        return [list(prompt)]
    return list(prompt)


# ---------------------------------------------------------------- the requests


def _sample(sampling: pb.SamplingParams, seed: int | None, i: int) -> pb.SamplingParams:
    """Sample `i` of `n`: with a seed it draws from seed + i (reproducible, and different
    from the others); without one, each draws its own."""
    sample = pb.SamplingParams()
    sample.CopyFrom(sampling)
    if seed is not None:
        sample.seed = (seed + i) % 2**64
    return sample


def _plan(
    body: SamplingFields,
    model: millm.ModelChoice,
    inputs: Sequence[dict[str, Any]],
    n: int,
    sampling: pb.SamplingParams,
) -> GenerationPlan:
    """`n` samples of each of `inputs` (the `GenerateStart` fields of one prompt), with
    the model, sampling, steering and activations every choice shares."""
    stream = bool(body.stream)
    extension = millm.for_generation(body.millm, model, stream=stream)
    if extension.compare and len(inputs) * n > 1:
        raise unsupported(
            "`millm.compare` compares one completion; ask for `n` = 1 and one prompt.",
            "millm.compare",
        )
    seed: int | None = sampling.seed if sampling.HasField("seed") else None
    if extension.compare and seed is None:
        # Both runs of a comparison must draw the same random numbers.
        seed = random.randrange(SEED_RANGE)
    samples = [_sample(sampling, seed, i) for i in range(n)]
    starts = [
        pb.GenerateStart(
            **given,
            model=model.model,
            sampling=sample,
            steering=extension.steering,
            activations=extension.activations,
        )
        for given in inputs
        for sample in samples
    ]
    unsteered = None
    if extension.compare:
        off = stpb.RequestSteering(disabled=True)
        unsteered = pb.GenerateStart(
            **inputs[0], model=model.model, sampling=samples[0], steering=off
        )
    return GenerationPlan(starts, unsteered, model, extension, n, stream)


def chat(body: ChatCompletionRequest, model: millm.ModelChoice) -> tuple[GenerationPlan, ToolMode]:
    """A chat request's generations, and how their replies are searched for tool calls."""
    n = choice_count(body)
    if not body.messages:
        raise invalid_request("`messages` must not be empty.", "messages")
    messages = [_chat_message(m, i) for i, m in enumerate(body.messages)]
    max_tokens = (
        body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    )
    sampling = _sampling(body, max_tokens, bool(body.logprobs), body.top_logprobs)
    tools, tool_calls, tool_mode = _tools(body)
    chat = pb.ChatMessages(
        messages=messages,
        tools=tools,
        continue_final_message=bool(body.continue_final_message),
        add_generation_prompt=body.add_generation_prompt,
    )
    given = {"chat": chat, "constraint": _constraint(body, tool_calls)}
    return _plan(body, model, [given], n, sampling), tool_mode


def completion(body: CompletionRequest, model: millm.ModelChoice) -> GenerationPlan:
    """A legacy completion's generations: `n` for each prompt."""
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
    sampling = _sampling(body, body.max_tokens, body.logprobs is not None, body.logprobs)
    inputs: list[dict[str, Any]] = []
    for i, prompt in enumerate(prompts):
        param = "prompt" if len(prompts) == 1 else f"prompt[{i}]"
        if isinstance(prompt, str):
            inputs.append({"prompt": prompt})
            continue
        if not prompt:
            raise invalid_request("`prompt` must not be empty.", param)
        ids = pb.TokenIds()
        _assign(ids, "ids", list(prompt), param)
        # Token ids are echoed as the service reads them back.
        inputs.append({"prompt_token_ids": ids, "echo_prompt": bool(body.echo)})
    return _plan(body, model, inputs, n, sampling)


def embed_request(
    body: EmbeddingRequest, model: millm.ModelChoice
) -> tuple[pb.EmbedRequest, millm.Extension]:
    """An embeddings request, and its `millm` extension (steering only)."""
    items: Sequence[Any] = [body.input] if isinstance(body.input, str) else body.input
    single_ids = bool(items) and isinstance(items[0], int)
    if single_ids:
        items = [items]  # one input given as token ids
    if not items:
        raise invalid_request("`input` must not be empty.", "input")
    inputs = []
    for i, item in enumerate(items):
        entry = pb.EmbedInput()
        if isinstance(item, str):
            entry.text = item
        else:
            _assign(entry.token_ids, "ids", list(item), "input" if single_ids else f"input[{i}]")
        inputs.append(entry)
    extension = millm.for_embeddings(body.millm, model)
    request = pb.EmbedRequest(model=model.model, inputs=inputs, steering=extension.steering)
    if body.dimensions is not None:
        _assign(request, "dimensions", body.dimensions, "dimensions")
    return request, extension
