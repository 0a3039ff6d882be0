"""Tools, structured output, n, logit_bias, prefill, echo and list prompts: what reaches
the service and what the client gets back, against the fake client (exact shapes)."""

from __future__ import annotations

import json

from millm.v1 import inference_service_pb2 as pb
from tests.unit.bridge.fakes import delta, finished

CHAT = "/v1/chat/completions"
USER = [{"role": "user", "content": "Weather in Paris?"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather now.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
CALL_TEXT = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def sse_chunks(response) -> list[dict]:
    lines = [x for x in response.text.split("\n\n") if x.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(x.removeprefix("data: ")) for x in lines[:-1]]


def test_tools_and_tool_choice_reach_the_service_as_definitions_and_a_constraint(http, fake):
    body = {"messages": USER, "tools": [WEATHER], "tool_choice": "required"}
    assert http.post(CHAT, json=body).status_code == 200
    start = fake.starts[0]
    (tool,) = start.chat.tools
    assert (tool.name, tool.description) == ("get_weather", "Weather now.")
    assert json.loads(tool.parameters_json) == WEATHER["function"]["parameters"]
    assert start.constraint.tool_calls == pb.ToolCallConstraint(parallel=False)
    http.post(CHAT, json={**body, "parallel_tool_calls": True})
    assert fake.starts[-1].constraint.tool_calls == pb.ToolCallConstraint(parallel=True)
    named = {"type": "function", "function": {"name": "get_weather"}}
    http.post(CHAT, json={**body, "tool_choice": named, "parallel_tool_calls": True})
    assert fake.starts[-1].constraint.tool_calls == pb.ToolCallConstraint(name="get_weather")
    http.post(CHAT, json={**body, "tool_choice": "auto"})
    assert not fake.starts[-1].HasField("constraint") and fake.starts[-1].chat.tools
    http.post(CHAT, json={**body, "tool_choice": "none"})
    assert not fake.starts[-1].chat.tools


def test_a_call_in_the_reply_is_message_tool_calls(http, fake):
    fake.script = [delta(CALL_TEXT, 1), finished()]
    reply = http.post(CHAT, json={"messages": USER, "tools": [WEATHER]}).json()
    choice = reply["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}


def test_a_streamed_call_sends_its_header_then_its_arguments(http, fake):
    pieces = [
        "<tool_",
        'call>\n{"name": "get_weather", "arguments": ',
        '{"city": ',
        '"Paris"}}\n</tool_call>',
    ]
    fake.script = [*(delta(p, i) for i, p in enumerate(pieces)), finished()]
    chunks = sse_chunks(
        http.post(CHAT, json={"messages": USER, "tools": [WEATHER], "stream": True})
    )
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0] == {"role": "assistant"}
    head = deltas[1]["tool_calls"][0]
    assert head["index"] == 0 and head["type"] == "function"
    assert head["function"] == {"name": "get_weather", "arguments": ""}
    arguments = [d["tool_calls"][0]["function"]["arguments"] for d in deltas[2:-1]]
    assert all(set(d["tool_calls"][0]) == {"index", "function"} for d in deltas[2:-1])
    assert "".join(arguments) == '{"city": "Paris"}' and len(arguments) == 2
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_legacy_functions_answer_with_function_call(http, fake):
    fake.script = [delta(CALL_TEXT, 1), finished()]
    body = {
        "messages": USER,
        "functions": [WEATHER["function"]],
        "function_call": {"name": "get_weather"},
    }
    reply = http.post(CHAT, json=body).json()
    assert fake.starts[0].constraint.tool_calls.name == "get_weather"
    choice = reply["choices"][0]
    assert choice["finish_reason"] == "function_call"
    assert choice["message"]["function_call"] == {
        "name": "get_weather",
        "arguments": '{"city": "Paris"}',
    }
    assert choice["message"]["tool_calls"] is None


def test_history_with_calls_and_results_is_sent_as_turns(http, fake):
    messages = [
        *USER,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "21 C"},
    ]
    http.post(CHAT, json={"messages": messages})
    turns = fake.starts[0].chat.messages
    assert turns[1].tool_calls[0] == pb.ToolCall(id="c1", name="f", arguments_json="{}")
    assert (turns[2].role, turns[2].tool_call_id, turns[2].content) == ("tool", "c1", "21 C")


def test_response_formats_become_constraints(http, fake):
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    http.post(CHAT, json={"messages": USER, "response_format": {"type": "json_object"}})
    assert fake.starts[0].constraint.HasField("json_object")
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}}
    http.post(CHAT, json={"messages": USER, "response_format": fmt})
    assert json.loads(fake.starts[1].constraint.json_schema) == schema


def test_n_opens_one_generation_per_sample_and_sums_usage(http, fake):
    fake.script = [delta("Hi", 1), finished(prompt=5, completion=2)]
    reply = http.post(CHAT, json={"messages": USER, "n": 3, "seed": 10, "logit_bias": {"7": -100}})
    body = reply.json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert [s.sampling.seed for s in fake.starts] == [10, 11, 12]
    assert all(dict(s.sampling.logit_bias) == {7: -100.0} for s in fake.starts)
    assert body["usage"] == {
        "prompt_tokens": 5,
        "completion_tokens": 6,
        "total_tokens": 11,
        "prompt_tokens_details": {"cached_tokens": 0},
    }
    chunks = sse_chunks(
        http.post(
            CHAT,
            json={
                "messages": USER,
                "n": 2,
                "stream": True,
                "stream_options": {"include_usage": True},
            },
        )
    )
    indexes = {c["choices"][0]["index"] for c in chunks if c["choices"]}
    assert indexes == {0, 1}
    assert chunks[-1]["usage"] == {
        "prompt_tokens": 5,
        "completion_tokens": 4,
        "total_tokens": 9,
        "prompt_tokens_details": {"cached_tokens": 0},
    }


def test_prefill_options_reach_the_service(http, fake):
    messages = [*USER, {"role": "assistant", "content": "It is"}]
    http.post(
        CHAT,
        json={"messages": messages, "continue_final_message": True, "add_generation_prompt": False},
    )
    chat = fake.starts[0].chat
    assert chat.continue_final_message and chat.HasField("add_generation_prompt")
    assert not chat.add_generation_prompt


def test_completions_list_prompts_n_and_echo(http, fake):
    fake.script = [delta(" there", 1), finished(prompt=3, completion=1)]
    reply = http.post(
        "/v1/completions", json={"prompt": ["Hi", "Yo"], "n": 2, "echo": True, "seed": 1}
    ).json()
    assert [c["text"] for c in reply["choices"]] == ["Hi there", "Hi there", "Yo there", "Yo there"]
    assert [c["index"] for c in reply["choices"]] == [0, 1, 2, 3]
    assert [(s.prompt, s.sampling.seed) for s in fake.starts] == [
        ("Hi", 1),
        ("Hi", 2),
        ("Yo", 1),
        ("Yo", 2),
    ]
    # Two prompts counted once each, four completions.
    assert reply["usage"] == {
        "prompt_tokens": 6,
        "completion_tokens": 4,
        "total_tokens": 10,
        "prompt_tokens_details": {"cached_tokens": 0},
    }
