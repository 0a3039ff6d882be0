"""Constrained decoding on the real built-in model: JSON Schemas, tool calls and
logit_bias, alone and in a batch. Outputs are checked with `jsonschema`, not with the
grammar engine that produced them."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from inference_service.engine.generation import DecodeBatch, run_generation
from inference_service.engine.grammar import GrammarCompiler
from inference_service.engine.prompts import render_chat
from inference_service.engine.types import (
    ChatOptions,
    ChatTurn,
    FinishedEvent,
    GenerationEvent,
    GenerationRequest,
    JsonObject,
    JsonSchema,
    SamplingOptions,
    TokenEvent,
    ToolCalls,
    ToolSpec,
)
from inference_service.errors import InvalidArgumentError

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 130},
        "city": {"type": "string", "enum": ["Paris", "London", "Rome"]},
        "hobbies": {
            "type": "array",
            "items": {"type": "string", "maxLength": 12},
            "maxItems": 2,
        },
    },
    "required": ["name", "age", "city", "hobbies"],
    "additionalProperties": False,
}
SHORT = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 10}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}
WEATHER = ToolSpec(
    0,
    "get_weather",
    "The current weather in a city.",
    json.dumps(
        {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 30},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
        }
    ),
)
TIME = ToolSpec(
    1,
    "get_time",
    "The current time in a time zone.",
    json.dumps(
        {
            "type": "object",
            "properties": {"timezone": {"type": "string", "maxLength": 30}},
            "required": ["timezone"],
        }
    ),
)
CALL = re.compile(r"<tool_call>\n(.*?)\n</tool_call>", re.S)


@pytest.fixture(scope="module")
def compiler(loaded) -> GrammarCompiler:
    return GrammarCompiler(loaded.tokenizer, loaded.description.vocab_size)


def generate(loaded, prompt_ids, grammar=None, **options) -> tuple[str, FinishedEvent]:
    events: list[GenerationEvent] = []
    request = GenerationRequest(
        "test", tuple(prompt_ids), SamplingOptions(**options), grammar=grammar
    )
    run_generation(loaded, request, events.append, lambda: False)
    *tokens, finished = events
    assert isinstance(finished, FinishedEvent)
    return "".join(e.text for e in tokens if isinstance(e, TokenEvent)), finished


def test_json_schema_output_validates_greedy_and_sampled(loaded, chat_ids, compiler) -> None:
    grammar = compiler.compile(JsonSchema(json.dumps(PERSON)), param="response_format")
    prompt = chat_ids("Describe a person who lives in Rome as JSON.")
    for seed in (None, 1, 2):
        options = {"temperature": 0.0} if seed is None else {"temperature": 1.0, "seed": seed}
        text, finished = generate(loaded, prompt, grammar, max_tokens=200, **options)
        assert finished.finish_reason == "stop", text
        jsonschema.validate(json.loads(text), PERSON)


def test_json_object_is_an_object_even_when_the_prompt_asks_for_prose(
    loaded, chat_ids, compiler
) -> None:
    grammar = compiler.compile(JsonObject(), param="response_format")
    text, finished = generate(
        loaded, chat_ids("Write a poem about the sea."), grammar, temperature=0.0, max_tokens=80
    )
    assert finished.finish_reason == "stop", text
    assert isinstance(json.loads(text), dict)


def test_required_tool_call_names_an_offered_tool_with_valid_arguments(loaded, compiler) -> None:
    tools = (WEATHER, TIME)
    prompt = render_chat(
        loaded.tokenizer,
        [ChatTurn("user", "What's the weather like in Paris?")],
        ChatOptions(tools=tools),
    )
    grammar = compiler.compile(ToolCalls(parallel=False), tools, param="tool_choice")
    for seed in (1, 2):
        text, finished = generate(
            loaded, prompt, grammar, temperature=1.0, seed=seed, max_tokens=80
        )
        assert finished.finish_reason == "stop", text
        calls = CALL.findall(text)
        assert len(calls) == 1 and text == f"<tool_call>\n{calls[0]}\n</tool_call>"
        call = json.loads(calls[0])
        spec = {t.name: t for t in tools}[call["name"]]
        jsonschema.validate(call["arguments"], json.loads(spec.parameters_json))


def test_named_tool_choice_calls_that_tool(loaded, compiler) -> None:
    tools = (WEATHER, TIME)
    prompt = render_chat(
        loaded.tokenizer,
        [ChatTurn("user", "What's the weather like in Paris?")],
        ChatOptions(tools=tools),
    )
    grammar = compiler.compile(ToolCalls(name="get_time"), tools, param="tool_choice")
    text, _ = generate(loaded, prompt, grammar, temperature=0.0, max_tokens=100)
    calls = [json.loads(c) for c in CALL.findall(text)]
    assert calls and all(c["name"] == "get_time" for c in calls)
    for call in calls:
        jsonschema.validate(call["arguments"], json.loads(TIME.parameters_json))


def test_bad_schemas_and_missing_tools_are_refused(compiler) -> None:
    with pytest.raises(InvalidArgumentError) as bad_json:
        compiler.compile(JsonSchema("{not json"), param="response_format")
    assert bad_json.value.param == "response_format"
    with pytest.raises(InvalidArgumentError) as unknown:
        compiler.compile(ToolCalls(name="nope"), (WEATHER,), param="tool_choice")
    assert unknown.value.param == "tool_choice"
    with pytest.raises(InvalidArgumentError):
        compiler.compile(JsonSchema(json.dumps({"type": "no-such-type"})), param="response_format")


def test_logit_bias_bans_and_forces_tokens(loaded, chat_ids) -> None:
    prompt = chat_ids("What is the capital of France?")
    plain, _ = generate(loaded, prompt, temperature=0.0, max_tokens=4)
    first = loaded.tokenizer.encode(plain, add_special_tokens=False)[0]
    banned, _ = generate(loaded, prompt, temperature=0.0, max_tokens=4, logit_bias=((first, -100),))
    assert not banned.startswith(loaded.tokenizer.decode([first]))
    forced_id = loaded.tokenizer.encode(" banana", add_special_tokens=False)[0]
    forced, _ = generate(
        loaded, prompt, temperature=1.0, seed=5, max_tokens=3, logit_bias=((forced_id, 100),)
    )
    assert forced.startswith(loaded.tokenizer.decode([forced_id]) * 3)


def test_each_row_of_a_batch_follows_its_own_grammar(loaded, chat_ids, compiler) -> None:
    """A schema row, a tool-call row and a free row decode together, each as alone."""
    person = compiler.compile(JsonSchema(json.dumps(SHORT)), param="response_format")
    tools = (WEATHER,)
    tool_prompt = render_chat(
        loaded.tokenizer, [ChatTurn("user", "Weather in Rome?")], ChatOptions(tools=tools)
    )
    calls = compiler.compile(ToolCalls(parallel=False), tools, param="tool_choice")
    requests = [
        (chat_ids("A person as JSON."), person),
        (tool_prompt, calls),
        (chat_ids("Tell me about the sea."), None),
    ]
    alone = [generate(loaded, p, g, temperature=0.0, max_tokens=40)[0] for p, g in requests]

    outputs: dict[int, list[GenerationEvent]] = {i: [] for i in range(len(requests))}
    batch = DecodeBatch(loaded)
    for i, (prompt, grammar) in enumerate(requests):
        request = GenerationRequest(
            f"r{i}", tuple(prompt), SamplingOptions(temperature=0.0, max_tokens=40), grammar=grammar
        )
        batch.join(request, outputs[i].append, lambda: False, pytest.fail)
    while batch.rows:
        batch.step()
    together = ["".join(e.text for e in outputs[i] if isinstance(e, TokenEvent)) for i in outputs]
    assert together == alone
    jsonschema.validate(json.loads(together[0]), SHORT)
    assert CALL.fullmatch(together[1])


def test_a_reply_cut_mid_character_never_ends_in_a_broken_one(loaded, chat_ids) -> None:
    """logit_bias forces the first byte token of an emoji; max_tokens cuts right after."""
    byte_token = loaded.tokenizer.encode("🍎", add_special_tokens=False)[0]
    assert "\ufffd" in loaded.tokenizer.decode([byte_token])  # really a piece of a character
    events: list[GenerationEvent] = []
    options = SamplingOptions(
        temperature=0.0, max_tokens=2, logit_bias=((byte_token, 100.0),), logprobs=True
    )
    run_generation(
        loaded, GenerationRequest("t", chat_ids("Hi"), options), events.append, lambda: False
    )
    *tokens, finished = events
    assert finished.finish_reason == "length"
    text = "".join(e.text for e in tokens)
    assert "\ufffd" not in text
    first = tokens[0].logprobs[0]
    raw = first.token_bytes
    assert first.token == "bytes:" + "".join(f"\\x{b:02x}" for b in raw)
    assert raw == "🍎".encode()[: len(raw)]


def test_objects_that_list_properties_are_closed_unless_they_say_otherwise() -> None:
    from inference_service.engine.grammar import close_objects

    schema = {
        "type": "object",
        "properties": {
            "a": {"type": "object", "properties": {"b": {"type": "string"}}},
            "open": {"type": "object", "properties": {}, "additionalProperties": True},
            "list": {"type": "array", "items": {"properties": {"c": {}}}},
        },
        "$defs": {"D": {"type": "object", "properties": {"d": {}}}},
        "allOf": [{"properties": {"x": {}}}],
    }
    closed = close_objects(schema)
    assert closed["additionalProperties"] is False
    assert closed["properties"]["a"]["additionalProperties"] is False
    assert closed["properties"]["open"]["additionalProperties"] is True
    assert closed["properties"]["list"]["items"]["additionalProperties"] is False
    assert closed["$defs"]["D"]["additionalProperties"] is False
    assert "additionalProperties" not in closed["allOf"][0]
    jsonschema.validate({"a": {"b": "x"}, "open": {"z": 1}}, closed)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"a": {"b": "x", "extra": 1}}, closed)


def test_a_stop_string_cuts_constrained_output_like_any_other(loaded, chat_ids, compiler) -> None:
    grammar = compiler.compile(JsonSchema(json.dumps(SHORT)), param="response_format")
    prompt = chat_ids("A person as JSON.")
    whole, _ = generate(loaded, prompt, grammar, temperature=0.0, max_tokens=40)
    stop = '"age"'
    assert stop in whole
    cut, finished = generate(loaded, prompt, grammar, temperature=0.0, max_tokens=40, stop=(stop,))
    assert finished.finish_reason == "stop"
    assert cut == whole[: whole.index(stop)]
