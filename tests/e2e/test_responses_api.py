"""The official `openai` SDK's Responses API against the running stack and the
built-in model. Few and short: the model decodes about 20 tokens a second here."""

from __future__ import annotations

import json

import openai
import pytest

MODEL = "smollm2-135m-instruct"
QUESTION = "What is the capital of France?"
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Get the current weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}

pytestmark = pytest.mark.e2e


def test_create_answers_paris_and_streaming_agrees(client):
    reply = client.responses.create(
        model=MODEL, input=QUESTION, temperature=0, max_output_tokens=24
    )
    assert "Paris" in reply.output_text
    assert (reply.status, reply.object, reply.output[0].type) == (
        "completed",
        "response",
        "message",
    )
    assert reply.usage.total_tokens == reply.usage.input_tokens + reply.usage.output_tokens > 0

    with client.responses.stream(
        model=MODEL, input=QUESTION, temperature=0, max_output_tokens=24
    ) as stream:
        seen = list(stream)
        final = stream.get_final_response()
    text = "".join(e.delta for e in seen if e.type == "response.output_text.delta")
    assert text == final.output_text == reply.output_text
    assert [e.type for e in seen[:2]] == ["response.created", "response.in_progress"]
    assert seen[-1].type == "response.completed"
    assert [e.sequence_number for e in seen] == list(range(len(seen)))


def test_instructions_reach_the_prompt_and_a_cut_reply_is_incomplete(client):
    short, long = (
        client.responses.create(
            model=MODEL, input=QUESTION, instructions=instructions, max_output_tokens=1
        )
        for instructions in ("Be brief.", "Be brief. " * 20)
    )
    assert long.instructions == "Be brief. " * 20
    assert long.usage.input_tokens > short.usage.input_tokens + 30
    assert short.status == "incomplete"
    assert short.incomplete_details.reason == "max_output_tokens"
    assert short.usage.output_tokens == 1


def test_required_function_call_and_its_result_fed_back(client):
    question = [{"role": "user", "content": "What is the weather in Paris?"}]
    reply = client.responses.create(
        model=MODEL,
        input=question,
        tools=[WEATHER],
        tool_choice="required",
        temperature=0,
        max_output_tokens=60,
    )
    calls = [item for item in reply.output if item.type == "function_call"]
    assert calls and calls[0].name == "get_weather"
    assert isinstance(json.loads(calls[0].arguments), dict)
    assert calls[0].call_id.startswith("call_")

    # The call and its result, sent back as input items, are the next turn's context.
    result = {"type": "function_call_output", "call_id": calls[0].call_id, "output": "Sunny, 24 C"}
    answer, without = (
        client.responses.create(
            model=MODEL,
            input=turns,
            tools=[WEATHER],
            tool_choice="none",
            temperature=0,
            max_output_tokens=tokens,
        )
        for turns, tokens in (
            ([*question, calls[0].model_dump(exclude_none=True), result], 24),
            (question, 1),
        )
    )
    assert answer.output[0].type == "message" and answer.output_text
    assert answer.usage.input_tokens > without.usage.input_tokens + 10


def test_json_schema_text_format_parses(client):
    schema = {
        "type": "object",
        "properties": {"capital": {"type": "string", "maxLength": 20}},
        "required": ["capital"],
        "additionalProperties": False,
    }
    reply = client.responses.create(
        model=MODEL,
        input=QUESTION,
        text={
            "format": {"type": "json_schema", "name": "answer", "schema": schema, "strict": True}
        },
        temperature=0,
        max_output_tokens=60,
    )
    assert isinstance(json.loads(reply.output_text)["capital"], str)


def test_stored_state_is_refused_naming_the_field(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=MODEL, input=QUESTION, previous_response_id="resp_1")
    assert caught.value.param == "previous_response_id"
