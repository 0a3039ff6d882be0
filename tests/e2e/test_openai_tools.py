"""Real clients with their default settings against the running stack: the official SDK's
`parse` and streamed tool calls, `n`, assistant prefill, an Open WebUI native
function-calling chat, LangChain's tools and structured output, and a reply cut
mid-character."""

from __future__ import annotations

import json
from typing import Literal

import httpx
import jsonschema
import pytest
from langchain_core.messages import AIMessage
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field

from tests.fixtures import open_webui

MODEL = "smollm2-135m-instruct"
pytestmark = pytest.mark.e2e

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 40},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
ASK_WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]


class City(BaseModel):
    name: str = Field(max_length=30)
    country: str = Field(max_length=30)
    population_millions: int
    continent: Literal["Europe", "Asia", "Africa", "America", "Oceania"]


def test_sdk_parse_returns_a_validated_pydantic_object(client):
    completion = client.chat.completions.parse(
        model=MODEL,
        messages=[{"role": "user", "content": "Describe Paris."}],
        response_format=City,
        temperature=0,
        max_tokens=80,
    )
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, City)
    assert completion.choices[0].finish_reason == "stop"


def test_required_tool_call_streams_as_openai_does_and_the_sdk_accumulates_it(client):
    with client.chat.completions.stream(
        model=MODEL,
        messages=ASK_WEATHER,
        tools=[WEATHER],
        tool_choice="required",
        temperature=0,
        max_tokens=60,
    ) as stream:
        chunks = [event.chunk for event in stream if event.type == "chunk"]
        final = stream.get_final_completion()
    tool_deltas = [
        call for c in chunks if c.choices for call in (c.choices[0].delta.tool_calls or [])
    ]
    # The first piece names the call; later pieces carry only arguments.
    head, *rest = tool_deltas
    assert head.index == 0 and head.id.startswith("call_") and head.type == "function"
    assert head.function.name == "get_weather" and head.function.arguments == ""
    assert rest and all(d.id is None and d.function.name is None for d in rest)
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])
    # The non-streamed reply is the same call.
    whole = client.chat.completions.create(
        model=MODEL,
        messages=ASK_WEATHER,
        tools=[WEATHER],
        tool_choice="required",
        temperature=0,
        max_tokens=60,
    )
    assert whole.choices[0].message.tool_calls[0].function.arguments == call.function.arguments


def test_tool_results_in_the_history_render_and_the_model_answers(client):
    history = [
        *ASK_WEATHER,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {
                        "name": "get_weather",
                        "arguments": '{"city": "Paris", "unit": "celsius"}',
                    },
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 21}'},
    ]
    reply = client.chat.completions.create(
        model=MODEL, messages=history, tools=[WEATHER], tool_choice="none", max_tokens=30
    )
    assert reply.choices[0].message.tool_calls is None
    assert reply.choices[0].message.content


def test_n_samples_are_rows_with_their_own_index_and_summed_usage(client):
    reply = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Name an animal."}],
        n=2,
        temperature=1.0,
        seed=7,
        max_tokens=12,
    )
    assert [c.index for c in reply.choices] == [0, 1]
    singles = [
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Name an animal."}],
            temperature=1.0,
            seed=seed,
            max_tokens=12,
        )
        for seed in (7, 8)
    ]
    # Sample i draws from seed + i: each equals the single request with that seed.
    assert [c.message.content for c in reply.choices] == [
        s.choices[0].message.content for s in singles
    ]
    assert reply.usage.completion_tokens == sum(s.usage.completion_tokens for s in singles)
    assert reply.usage.prompt_tokens == singles[0].usage.prompt_tokens
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Name an animal."}],
        n=2,
        temperature=1.0,
        seed=7,
        max_tokens=12,
        stream=True,
    )
    texts = {0: "", 1: ""}
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    assert list(texts.values()) == [c.message.content for c in reply.choices]


def test_continue_final_message_carries_on_inside_the_assistant_turn(client):
    reply = client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "The capital of France is"},
        ],
        temperature=0,
        max_tokens=8,
        extra_body={"continue_final_message": True, "add_generation_prompt": False},
    )
    text = reply.choices[0].message.content
    assert "Paris" in text and not text.lstrip().startswith("The capital")


def test_open_webui_native_function_calling_chat_and_its_tasks_answer(stack):
    """37 tools, no tool_choice, streamed, as Open WebUI sends every chat by default;
    then its title, tags and follow-up requests."""
    with httpx.Client(base_url=stack.http_url, timeout=180) as http:
        body = {
            "model": MODEL,
            "messages": open_webui.CHAT,
            "tools": open_webui.TOOLS,
            "stream": True,
            "max_tokens": 40,
            "stream_options": {"include_usage": True},
            "chat_id": "local",  # Open WebUI's own extra fields are accepted
        }
        with http.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200, response.read()
            events = [line for line in response.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]"
        chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
        assert not any("error" in c for c in chunks)
        finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1]
        assert finish in ("stop", "length", "tool_calls")
        reply = "".join(
            c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]
        )
        for kind in ("title", "tags", "follow_ups"):
            task = http.post(
                "/v1/chat/completions",
                json={
                    "model": MODEL,
                    "messages": open_webui.task_request(kind, reply),
                    "stream": False,
                    "max_tokens": 30,
                },
            )
            assert task.status_code == 200, task.text
            assert task.json()["choices"][0]["message"]["role"] == "assistant"


def test_langchain_bind_tools_and_structured_output(stack):
    llm = ChatOpenAI(
        model=MODEL,
        base_url=f"{stack.http_url}/v1",
        api_key="unused",
        temperature=0,
        max_tokens=80,
        max_retries=0,
    )
    message = llm.bind_tools([WEATHER], tool_choice="get_weather").invoke(
        "What is the weather in Paris?"
    )
    assert isinstance(message, AIMessage)
    assert [c["name"] for c in message.tool_calls] == ["get_weather"]
    jsonschema.validate(message.tool_calls[0]["args"], WEATHER["function"]["parameters"])
    for method in ("json_schema", "function_calling"):
        city = llm.with_structured_output(City, method=method).invoke("Describe Paris.")
        assert isinstance(city, City), method
    as_json = llm.with_structured_output(None, method="json_mode").invoke("Describe Paris as JSON.")
    assert isinstance(as_json, dict)


def test_a_reply_cut_mid_character_has_no_broken_character(client, tokenizer):
    byte_token = tokenizer.encode("🍎", add_special_tokens=False)[0]
    options = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Hi"}],
        "temperature": 0,
        "max_tokens": 1,
        "logit_bias": {str(byte_token): 100},
    }
    whole = client.chat.completions.create(**options)
    assert whole.choices[0].finish_reason == "length"
    assert "\ufffd" not in whole.choices[0].message.content
    streamed = "".join(
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(**options, stream=True)
        if c.choices
    )
    assert "\ufffd" not in streamed and streamed == whole.choices[0].message.content
