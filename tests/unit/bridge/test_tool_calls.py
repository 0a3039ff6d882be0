"""The tool-call parser: content and calls from text fed whole or in any pieces."""

from __future__ import annotations

import itertools
import json

import pytest

from openai_bridge.openai_api.tool_calls import (
    CallArguments,
    CallStarted,
    Content,
    ToolCallParser,
    parse_whole,
)

TWO_CALLS = (
    "Let me check.\n"
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "n": [1, {"a": "}"}]}}\n'
    "</tool_call>\n"
    '<tool_call>\n{"name": "get_time", "arguments": {"tz": "say \\"hi\\" {"}}\n</tool_call>'
)


def ids() -> itertools.count:
    return itertools.count()


def feed(text: str, sizes: int) -> tuple[list, ToolCallParser]:
    counter = ids()
    parser = ToolCallParser(lambda: f"call_{next(counter)}")
    events = []
    for i in range(0, len(text), sizes):
        events += parser.push(text[i : i + sizes])
    return events + parser.finish(), parser


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
def test_any_split_gives_the_same_calls_and_content(size: int) -> None:
    events, parser = feed(TWO_CALLS, size)
    assert "".join(e.text for e in events if isinstance(e, Content)) == "Let me check."
    assert [(c.id, c.name) for c in parser.calls] == [
        ("call_0", "get_weather"),
        ("call_1", "get_time"),
    ]
    assert json.loads(parser.calls[0].arguments) == {"city": "Paris", "n": [1, {"a": "}"}]}
    assert json.loads(parser.calls[1].arguments) == {"tz": 'say "hi" {'}
    # Each call's header comes before any of its arguments, and pieces add up.
    for index in (0, 1):
        mine = [e for e in events if getattr(e, "index", None) == index]
        assert isinstance(mine[0], CallStarted)
        assert all(isinstance(e, CallArguments) for e in mine[1:])
        assert "".join(e.text for e in mine[1:]) == parser.calls[index].arguments


def test_arguments_stream_before_the_call_is_complete() -> None:
    parser = ToolCallParser(lambda: "call_x")
    assert parser.push('<tool_call>\n{"name": "f", "arguments":') == []
    assert parser.push(" ") == []  # the blank before the arguments belongs to no one
    assert parser.push('{"city": "Pa') == [
        CallStarted(0, "call_x", "f"),
        CallArguments(0, '{"city": "Pa'),
    ]


def test_plain_text_passes_through_and_a_lone_angle_bracket_is_released() -> None:
    content, calls = parse_whole("1 < 2 and <tool is not a tag")
    assert (content, calls) == ("1 < 2 and <tool is not a tag", [])
    parser = ToolCallParser()
    assert parser.push("a <tool_") == [Content("a")]
    assert parser.push("x") == [Content(" <tool_x")]


def test_a_block_that_is_not_a_call_is_content_and_other_key_orders_still_parse() -> None:
    content, calls = parse_whole("<tool_call>\nnot json\n</tool_call>")
    assert calls == [] and content == "<tool_call>\nnot json\n</tool_call>"
    _, calls = parse_whole('<tool_call>{"arguments": {"x": 1}, "name": "f"}</tool_call>')
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("f", {"x": 1})]


def test_a_call_cut_short_keeps_what_was_written() -> None:
    content, calls = parse_whole('<tool_call>\n{"name": "f", "arguments": {"x": "ab')
    assert content == "" and calls[0].name == "f" and calls[0].arguments == '{"x": "ab'
