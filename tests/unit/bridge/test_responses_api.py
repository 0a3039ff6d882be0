# ruff: noqa: E501  (exact protocol bytes read best unwrapped)
"""POST /v1/responses against the fake client: shapes, exact stream bytes, input
translation, refusals naming the field, and the official SDK parsing it all."""

from __future__ import annotations

import asyncio
import json

import grpc
import openai
import pytest

from millm.v1 import inference_service_pb2 as pb
from millm.v1 import steering_pb2 as stpb
from openai_bridge.errors import InferenceError
from openai_bridge.openai_api import responses, responses_translate, tool_calls
from openai_bridge.sse import dumps
from tests.unit.bridge.fakes import HANG, delta, finished
from tests.unit.bridge.test_disconnect import drive

CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}
USAGE = {
    "input_tokens": 5,
    "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
    "output_tokens": 2,
    "output_tokens_details": {"reasoning_tokens": 0},
    "total_tokens": 7,
}
# The request fields a response repeats, for a body that sets none of them.
ECHOED = {
    "instructions": None,
    "max_output_tokens": None,
    "parallel_tool_calls": True,
    "previous_response_id": None,
    "reasoning": {"effort": None, "summary": None},
    "store": False,
    "temperature": None,
    "text": {"format": {"type": "text"}},
    "tool_choice": "auto",
    "tools": [],
    "top_p": None,
    "truncation": "disabled",
    "user": None,
    "metadata": {},
}


def response(status: str, output: list, usage: dict | None, **changes) -> dict:
    incomplete = {"reason": "max_output_tokens"} if status == "incomplete" else None
    return {
        "id": "resp_r1",
        "object": "response",
        "created_at": 1700000000,
        "status": status,
        "background": False,
        "completed_at": 1700000000 if status == "completed" else None,
        "error": None,
        "incomplete_details": incomplete,
        "model": "m",
        "output": output,
        "usage": usage,
        **ECHOED,
        **changes,
    }


def text_part(text: str) -> dict:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message(text: str, status: str = "completed") -> dict:
    return {
        "type": "message",
        "id": "msg_r1",
        "status": status,
        "role": "assistant",
        "content": [text_part(text)],
    }


def call(arguments: str, status: str = "completed") -> dict:
    return {
        "type": "function_call",
        "id": "fc_abc",
        "call_id": "call_abc",
        "name": "get_weather",
        "arguments": arguments,
        "status": status,
    }


def lifecycle(kind: str, sequence: int, body: dict) -> bytes:
    data = {"type": kind, "sequence_number": sequence, "response": body}
    return f"event: {kind}\ndata: {dumps(data)}\n\n".encode()


def events(content: bytes) -> list[dict]:
    """The data of each event, checking each `event:` line names its data's type."""
    out = []
    for block in content.decode().split("\n\n")[:-1]:
        kind, data = block.split("\n")
        out.append(json.loads(data.removeprefix("data: ")))
        assert kind == f"event: {out[-1]['type']}"
    return out


@pytest.fixture
def fixed_call_ids(monkeypatch):
    monkeypatch.setattr(tool_calls.secrets, "token_hex", lambda _: "abc")


@pytest.fixture
def sdk(http):
    return openai.OpenAI(
        base_url="http://testserver/v1", api_key="unused", http_client=http, max_retries=0
    )


# ---------------------------------------------------------------- not streamed


def test_non_streaming_shape_and_request_translation(http, fake):
    fake.script = [delta("Hel", 1), delta("lo", 2), finished(pb.FINISH_REASON_STOP, 5, 2)]
    body = {
        "model": "m",
        "input": "Hi",
        "instructions": "Be brief.",
        "max_output_tokens": 16,
        "temperature": 0.5,
        "top_p": 0.9,
        "metadata": {"k": "v"},
        "user": "u",
    }
    reply = http.post("/v1/responses", json=body)
    assert reply.status_code == 200
    assert reply.json() == response(
        "completed",
        [message("Hello")],
        USAGE,
        instructions="Be brief.",
        max_output_tokens=16,
        temperature=0.5,
        top_p=0.9,
        metadata={"k": "v"},
        user="u",
    )
    start = fake.starts[0]
    assert [(m.role, m.content) for m in start.chat.messages] == [
        ("system", "Be brief."),
        ("user", "Hi"),
    ]
    s = start.sampling
    assert (s.max_tokens, round(s.temperature, 3), round(s.top_p, 3)) == (16, 0.5, 0.9)
    assert start.model == "m"
    assert fake.streams[0].cancelled


def test_cut_short_by_max_output_tokens_is_incomplete(http, fake):
    fake.script = [delta("Hel", 1), finished(pb.FINISH_REASON_LENGTH, 5, 2)]
    reply = http.post("/v1/responses", json={"input": "Hi", "max_output_tokens": 1})
    assert reply.json() == response(
        "incomplete", [message("Hel", "incomplete")], USAGE, max_output_tokens=1
    )


def test_function_call_output_items(http, fake, fixed_call_ids):
    fake.script = [delta("Let me check." + CALL, 1), finished()]
    body = {"input": "Weather?", "tools": [WEATHER], "tool_choice": "auto"}
    reply = http.post("/v1/responses", json=body).json()
    assert reply["output"] == [message("Let me check."), call('{"city": "Paris"}')]
    assert reply["tools"] == [WEATHER] and reply["status"] == "completed"
    # Only a call: no message item at all.
    fake.script = [delta(CALL, 1), finished()]
    only = http.post("/v1/responses", json=body).json()
    assert only["output"] == [call('{"city": "Paris"}')]


def test_empty_reply_is_one_empty_message(http, fake):
    fake.script = [finished(completion=0)]
    reply = http.post("/v1/responses", json={"input": "Hi"}).json()
    assert reply["output"] == [message("")]


# ---------------------------------------------------------------- streamed


def test_streaming_text_exact_bytes(http, fake):
    # The empty delta is text held back for a possible stop string: not sent.
    fake.script = [delta("Hel", 1), delta("", 2), delta("lo", 3), finished()]
    reply = http.post("/v1/responses", json={"model": "m", "input": "Hi", "stream": True})
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/event-stream")
    started = response("in_progress", [], None)
    assert reply.content == (
        lifecycle("response.created", 0, started)
        + lifecycle("response.in_progress", 1, started)
        + b'event: response.output_item.added\ndata: {"type":"response.output_item.added","sequence_number":2,"output_index":0,"item":{"type":"message","id":"msg_r1","status":"in_progress","role":"assistant","content":[]}}\n\n'
        b'event: response.content_part.added\ndata: {"type":"response.content_part.added","sequence_number":3,"item_id":"msg_r1","output_index":0,"content_index":0,"part":{"type":"output_text","text":"","annotations":[],"logprobs":[]}}\n\n'
        b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","sequence_number":4,"item_id":"msg_r1","output_index":0,"content_index":0,"delta":"Hel","logprobs":[]}\n\n'
        b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","sequence_number":5,"item_id":"msg_r1","output_index":0,"content_index":0,"delta":"lo","logprobs":[]}\n\n'
        b'event: response.output_text.done\ndata: {"type":"response.output_text.done","sequence_number":6,"item_id":"msg_r1","output_index":0,"content_index":0,"text":"Hello","logprobs":[]}\n\n'
        b'event: response.content_part.done\ndata: {"type":"response.content_part.done","sequence_number":7,"item_id":"msg_r1","output_index":0,"content_index":0,"part":{"type":"output_text","text":"Hello","annotations":[],"logprobs":[]}}\n\n'
        b'event: response.output_item.done\ndata: {"type":"response.output_item.done","sequence_number":8,"output_index":0,"item":{"type":"message","id":"msg_r1","status":"completed","role":"assistant","content":[{"type":"output_text","text":"Hello","annotations":[],"logprobs":[]}]}}\n\n'
        + lifecycle("response.completed", 9, response("completed", [message("Hello")], USAGE))
    )
    assert b"[DONE]" not in reply.content  # the Responses API sends no terminator
    assert fake.streams[0].cancelled


def test_streaming_text_then_call_exact_bytes(http, fake, fixed_call_ids):
    cut = CALL.index('ty": ')  # inside the arguments: they come in two pieces
    fake.script = [delta("Sure." + CALL[:cut], 1), delta(CALL[cut:], 2), finished()]
    body = {"model": "m", "input": "Weather?", "stream": True, "tools": [WEATHER]}
    content = http.post("/v1/responses", json=body).content
    head, tail = content.split(b"event: response.output_item.done\n", 1)
    assert tail.split(b"\n\n", 1)[1] == (
        b'event: response.output_item.added\ndata: {"type":"response.output_item.added","sequence_number":8,"output_index":1,"item":{"type":"function_call","id":"fc_abc","call_id":"call_abc","name":"get_weather","arguments":"","status":"in_progress"}}\n\n'
        b'event: response.function_call_arguments.delta\ndata: {"type":"response.function_call_arguments.delta","sequence_number":9,"item_id":"fc_abc","output_index":1,"delta":"{\\"ci"}\n\n'
        b'event: response.function_call_arguments.delta\ndata: {"type":"response.function_call_arguments.delta","sequence_number":10,"item_id":"fc_abc","output_index":1,"delta":"ty\\": \\"Paris\\"}"}\n\n'
        b'event: response.function_call_arguments.done\ndata: {"type":"response.function_call_arguments.done","sequence_number":11,"item_id":"fc_abc","output_index":1,"arguments":"{\\"city\\": \\"Paris\\"}"}\n\n'
        b'event: response.output_item.done\ndata: {"type":"response.output_item.done","sequence_number":12,"output_index":1,"item":{"type":"function_call","id":"fc_abc","call_id":"call_abc","name":"get_weather","arguments":"{\\"city\\": \\"Paris\\"}","status":"completed"}}\n\n'
        + lifecycle(
            "response.completed",
            13,
            response(
                "completed", [message("Sure."), call('{"city": "Paris"}')], USAGE, tools=[WEATHER]
            ),
        )
    )
    # Before the call: the message, closed as the call began.
    assert [e["type"] for e in events(head)[2:]] == [
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
    ]


def test_streaming_and_whole_agree(http, fake, fixed_call_ids):
    fake.script = [delta("Sure." + CALL, 1), finished()]
    body = {"input": "Weather?", "tools": [WEATHER]}
    whole = http.post("/v1/responses", json=body).json()
    streamed = events(http.post("/v1/responses", json={**body, "stream": True}).content)
    assert streamed[-1]["response"] == whole
    assert [e["sequence_number"] for e in streamed] == list(range(len(streamed)))


def test_streaming_cut_short_ends_with_response_incomplete(http, fake):
    fake.script = [delta("Hel", 1), finished(pb.FINISH_REASON_LENGTH, 5, 2)]
    streamed = events(http.post("/v1/responses", json={"input": "Hi", "stream": True}).content)
    assert streamed[-2]["item"] == message("Hel", "incomplete")
    assert streamed[-1] == {
        "type": "response.incomplete",
        "sequence_number": 8,
        "response": response("incomplete", [message("Hel", "incomplete")], USAGE),
    }


def test_error_after_stream_start_is_error_then_response_failed(http, fake):
    boom = InferenceError(grpc.StatusCode.RESOURCE_EXHAUSTED, "OUT_OF_MEMORY", "Out of memory.")
    fake.script = [delta("Hi", 1), boom]
    reply = http.post("/v1/responses", json={"input": "Hi", "stream": True})
    assert reply.status_code == 200
    streamed = events(reply.content)
    assert streamed[-2] == {
        "type": "error",
        "sequence_number": 5,
        "code": "out_of_memory",
        "message": "Out of memory.",
        "param": None,
    }
    assert streamed[-1] == {
        "type": "response.failed",
        "sequence_number": 6,
        "response": response(
            "failed",
            [message("Hi", "incomplete")],
            None,
            error={"code": "server_error", "message": "Out of memory."},
        ),
    }
    assert fake.streams[0].cancelled


def test_unexpected_error_after_stream_start_hides_details(http, fake):
    fake.script = [delta("Hi", 1), RuntimeError("secret stack detail")]
    content = http.post("/v1/responses", json={"input": "Hi", "stream": True}).content
    assert b"secret" not in content
    failed = events(content)[-1]["response"]
    assert failed["error"] == {
        "code": "server_error",
        "message": "Internal server error; the details are in the inference service log.",
    }


def test_admission_error_comes_before_the_stream(http, fake):
    fake.generate_error = InferenceError(
        grpc.StatusCode.RESOURCE_EXHAUSTED, "QUEUE_FULL", "Full.", retry_after_s=2
    )
    reply = http.post("/v1/responses", json={"input": "Hi", "stream": True})
    assert reply.status_code == 429 and reply.headers["retry-after"] == "2"
    assert reply.json()["error"]["code"] == "queue_full"


async def test_keepalive_comment_while_waiting():
    async def slow():
        await asyncio.sleep(0.05)
        yield {"type": "response.created"}

    frames = [f async for f in responses.framed(slow(), keepalive_s=0.02)]
    assert frames[0] == b": keep-alive\n\n"
    assert frames[-1] == b'event: response.created\ndata: {"type":"response.created"}\n\n'


async def test_client_disconnect_cancels_the_generation(app, fake):
    async def at_responses(scope, receive, send):
        # `drive` posts to the chat route; the same request, sent here instead.
        path = {"path": "/v1/responses", "raw_path": b"/v1/responses"}
        await app({**scope, **path}, receive, send)

    fake.script = [delta("Hi", 1), HANG]
    body = {"input": "x", "stream": True}
    sent = await drive(at_responses, body, fake.hanging, after=b"response.output_text.delta")
    assert sent[0]["status"] == 200
    assert b"response.output_text.delta" in b"".join(m.get("body", b"") for m in sent)
    assert fake.streams[0].cancelled


# ---------------------------------------------------------------- input and tools


def test_input_items_become_chat_messages(http, fake):
    body = {
        "input": [
            {"role": "developer", "content": "Use tools."},
            {
                "type": "message",
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "Weather"},
                    {"type": "input_text", "text": "in Paris?"},
                ],
            },
            {"role": "assistant", "content": [{"type": "refusal", "refusal": "No."}]},
            {"role": "user", "content": "Please."},
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Checking.", "annotations": []}],
                "id": "msg_1",
                "status": "completed",
            },
            {
                "type": "function_call",
                "call_id": "call_1",
                "name": "get_weather",
                "arguments": '{"city": "Paris"}',
            },
            {"type": "function_call", "call_id": "call_2", "name": "get_time", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "Sunny"},
            {
                "type": "function_call_output",
                "call_id": "call_2",
                "output": [{"type": "input_text", "text": "noon"}],
            },
            {
                "type": "function_call",
                "call_id": "call_3",
                "name": "get_weather",
                "arguments": "{}",
            },
        ],
        "instructions": "Be brief.",
    }
    assert http.post("/v1/responses", json=body).status_code == 200
    got = [
        (
            m.role,
            m.content,
            [(c.id, c.name, c.arguments_json) for c in m.tool_calls],
            m.tool_call_id,
        )
        for m in fake.starts[0].chat.messages
    ]
    assert got == [
        ("system", "Be brief.", [], ""),
        ("developer", "Use tools.", [], ""),
        ("user", "Weather\nin Paris?", [], ""),
        # A refusal part of an earlier turn is that turn's text.
        ("assistant", "No.", [], ""),
        ("user", "Please.", [], ""),
        # The turn's calls join the assistant's text, as one chat message.
        (
            "assistant",
            "Checking.",
            [("call_1", "get_weather", '{"city": "Paris"}'), ("call_2", "get_time", "{}")],
            "",
        ),
        ("tool", "Sunny", [], "call_1"),
        ("tool", "noon", [], "call_2"),
        # A call after tool results starts a new assistant message.
        ("assistant", "", [("call_3", "get_weather", "{}")], ""),
    ]


def test_function_tools_and_tool_choice(http, fake):
    body = {"input": "x", "tools": [{**WEATHER, "strict": True}], "parallel_tool_calls": False}
    http.post("/v1/responses", json={**body, "tool_choice": "required"})
    http.post(
        "/v1/responses", json={**body, "tool_choice": {"type": "function", "name": "get_weather"}}
    )
    http.post("/v1/responses", json={**body, "tool_choice": "none"})
    required, named, none = fake.starts
    assert [
        (t.name, t.description, json.loads(t.parameters_json)) for t in required.chat.tools
    ] == [("get_weather", "The weather in a city.", WEATHER["parameters"])]
    assert required.constraint.tool_calls == pb.ToolCallConstraint(parallel=False)
    assert named.constraint.tool_calls.name == "get_weather"
    assert not none.chat.tools and not none.HasField("constraint")


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        ({"type": "json_object"}, ("json_object", "")),
        (
            {"type": "json_schema", "name": "a", "schema": {"type": "object"}, "strict": True},
            ("json_schema", '{"type": "object"}'),
        ),
        ({"type": "text"}, (None, "")),
    ],
)
def test_text_format_becomes_the_constraint(http, fake, fmt, expected):
    reply = http.post("/v1/responses", json={"input": "x", "text": {"format": fmt}})
    assert reply.json()["text"] == {"format": fmt}
    constraint = fake.starts[0].constraint
    kind = constraint.WhichOneof("kind") if fake.starts[0].HasField("constraint") else None
    assert (kind, constraint.json_schema) == expected


def test_harmless_fields_are_accepted_and_echoed_as_they_took_effect(http, fake):
    body = {
        "input": "x",
        "store": True,
        "reasoning": {"effort": "low"},
        "truncation": "auto",
        "include": ["reasoning.encrypted_content"],
        "text": {"verbosity": "low"},
        "service_tier": "auto",
        "max_tool_calls": 3,
        "prompt_cache_key": "k",
        "stream_options": {"include_obfuscation": False},
    }
    reply = http.post("/v1/responses", json=body)
    assert reply.status_code == 200
    got = reply.json()
    assert (got["store"], got["truncation"], got["reasoning"]) == (
        False,
        "disabled",
        {"effort": None, "summary": None},
    )


def test_millm_passes_through(http, fake):
    body = {"input": "x", "millm": {"steering": "off"}}
    assert http.post("/v1/responses", json=body).status_code == 200
    assert fake.starts[0].steering == stpb.RequestSteering(disabled=True)
    bad = http.post("/v1/responses", json={"input": "x", "millm": {"steerng": "off"}})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "millm.steerng"


def _with_activations(text: str, token: str) -> pb.GenerateResponse:
    return pb.GenerateResponse(
        delta=pb.TokenDelta(
            text=text,
            token_ids=[1],
            activations=[
                stpb.TokenActivations(
                    position=3,
                    token_id=1,
                    token=token,
                    top=[stpb.FeatureActivation(index=7, value=1.5)],
                )
            ],
        )
    )


def test_millm_activations_streamed_and_compare_reshaped(http, fake):
    fake.script = [_with_activations("Hi", "Hi"), finished()]
    body = {"input": "x", "stream": True, "millm": {"activations": {"top_k": 1}}}
    streamed = events(http.post("/v1/responses", json=body).content)
    activation = {
        "position": 3,
        "token_id": 1,
        "token": "Hi",
        "features": [],
        "top": [{"index": 7, "value": 1.5}],
        "unedited_features": [],
    }
    # After the text it belongs to.
    assert streamed[4]["delta"] == "Hi"
    assert streamed[5] == {
        "type": "millm.activations",
        "sequence_number": 5,
        "activations": [activation],
    }

    whole = http.post(
        "/v1/responses",
        json={**body, "stream": False, "millm": {"activations": {"top_k": 1}, "compare": True}},
    ).json()
    assert whole["millm"]["activations"] == [activation]
    assert whole["millm"]["default"] == {
        "status": "completed",
        "output": [{**message("Hi"), "id": "msg_r1_default"}],
        "usage": USAGE,
    }


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"previous_response_id": "resp_1"}, "previous_response_id"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"background": True}, "background"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt"),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"tools": [WEATHER, {"type": "custom", "name": "x"}]}, "tools[1].type"),
        ({"tools": [{"type": "function"}]}, "tools[0].name"),
        ({"tool_choice": {"type": "web_search_preview"}}, "tool_choice.type"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice"),
        (
            {
                "input": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "input_text", "text": "a"},
                            {"type": "input_image", "image_url": "http://x/y.png"},
                        ],
                    }
                ]
            },
            "input[0].content[1].type",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
            "input[0].content[0].type",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_text"}]}]},
            "input[0].content[0].text",
        ),
        ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role"),
        (
            {"input": [{"role": "user", "content": "x"}, {"type": "reasoning", "summary": []}]},
            "input[1].type",
        ),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
        (
            {"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]},
            "input[0].call_id",
        ),
        (
            {
                "input": [
                    {
                        "type": "function_call_output",
                        "call_id": "c",
                        "output": [{"type": "input_image", "image_url": "u"}],
                    }
                ]
            },
            "input[0].output[0].type",
        ),
        ({"input": None}, "input"),
        ({"input": []}, "input"),
        ({"input": [], "instructions": "Be brief."}, "input"),
        (
            {"input": [{"role": "user", "content": [{"type": "refusal", "refusal": "x"}]}]},
            "input[0].content[0].type",
        ),
        ({"include": ["message.output_text.logprobs"]}, "include[0]"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"text": {"format": {"type": "json_schema", "name": "a"}}}, "text.format.schema"),
        (
            {"text": {"format": {"type": "json_schema", "schema": {}, "strict": "very"}}},
            "text.format.strict",
        ),
        ({"text": {"format": {"type": "grammar"}}}, "text.format.type"),
        # The chat path's own check, renamed to the field this client sent.
        (
            {
                "tools": [WEATHER],
                "tool_choice": "required",
                "text": {"format": {"type": "json_object"}},
            },
            "text.format",
        ),
        ({"max_output_tokens": 2**40}, "max_output_tokens"),
        ({"max_tokens": 5}, "max_tokens"),
        ({"messages": [{"role": "user", "content": "x"}]}, "messages"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"seed": 1}, "seed"),
        ({"stop": "x"}, "stop"),
        ({"millm": {"compare": True}, "stream": True}, "millm.compare"),
    ],
)
def test_refusals_name_the_field(http, fake, body, param):
    reply = http.post("/v1/responses", json={"model": "m", "input": "x", **body})
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert fake.starts == []


def test_renamed_fields_are_renamed_in_the_message_too(http, fake):
    reply = http.post("/v1/responses", json={"input": "x", "max_output_tokens": 2**40}).json()
    assert reply["error"]["message"] == "`max_output_tokens` is out of range."
    chained = {
        "input": "x",
        "tools": [WEATHER],
        "tool_choice": "required",
        "text": {"format": {"type": "json_object"}},
    }
    message = http.post("/v1/responses", json=chained).json()["error"]["message"]
    assert message.startswith("`text.format` cannot be combined with a `tool_choice`")
    # The chat path's own check, renamed (an empty `input` is refused before it).
    error = InferenceError(
        grpc.StatusCode.INVALID_ARGUMENT, None, "`messages` must not be empty.", "messages"
    )
    responses_translate.rename(error)
    assert (error.param, error.message) == ("input", "`input` must not be empty.")


def test_service_errors_name_max_output_tokens(http, fake):
    fake.generate_error = InferenceError(
        grpc.StatusCode.INVALID_ARGUMENT,
        "CONTEXT_LENGTH_EXCEEDED",
        "The prompt has 5 tokens and max_tokens asks for 9000.",
        param="max_tokens",
    )
    error = http.post("/v1/responses", json={"input": "x", "max_output_tokens": 9000}).json()[
        "error"
    ]
    assert (error["param"], error["message"]) == (
        "max_output_tokens",
        "The prompt has 5 tokens and max_output_tokens asks for 9000.",
    )


# ---------------------------------------------------------------- the official SDK


def test_sdk_parses_responses_and_streams(sdk, fake, fixed_call_ids):
    fake.script = [delta("Hel", 1), delta("lo", 2), finished()]
    reply = sdk.responses.create(model="m", input="Hi", instructions="Be brief.")
    assert (reply.output_text, reply.status, reply.usage.total_tokens) == ("Hello", "completed", 7)
    with sdk.responses.stream(model="m", input="Hi") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert deltas == ["Hel", "lo"] and final.output_text == "Hello" and final.id == "resp_r1"

    fake.script = [delta(CALL, 1), finished()]
    streamed = list(sdk.responses.create(model="m", input="Weather?", tools=[WEATHER], stream=True))
    (item,) = streamed[-1].response.output
    assert (item.type, item.call_id, item.name, json.loads(item.arguments)) == (
        "function_call",
        "call_abc",
        "get_weather",
        {"city": "Paris"},
    )


def test_sdk_sees_a_refusal_as_bad_request(sdk, fake):
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.responses.create(model="m", input="x", previous_response_id="resp_1")
    assert caught.value.param == "previous_response_id"
