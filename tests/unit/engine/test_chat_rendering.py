"""How tools, calls, tool results and prefill reach the prompt: through the model's own
template when it renders tools, else through the documented fallback."""

from __future__ import annotations

import copy
import json

import pytest

from inference_service.engine.prompts import FALLBACK_TOOLS_HOWTO, render_chat
from inference_service.engine.types import ChatOptions, ChatTurn, ToolCallRecord, ToolSpec
from inference_service.errors import InvalidArgumentError

TOOL = ToolSpec(0, "get_time", "The time.", json.dumps({"type": "object", "properties": {}}))
CALL = ToolCallRecord("c1", "get_time", '{"tz": "UTC"}')
HISTORY = [
    ChatTurn("user", "Time?"),
    ChatTurn("assistant", "", tool_calls=(CALL,)),
    ChatTurn("tool", "12:00", tool_call_id="c1"),
]
# A template that renders tools itself, the way Qwen's and Llama 3.1's do.
TOOLS_TEMPLATE = (
    "{% if tools %}TOOLS={{ tools | tojson }}\n{% endif %}"
    "{% for m in messages %}<{{ m.role }}>{{ m.content }}"
    "{% for c in m.tool_calls or [] %}CALL {{ c.function.name }} "
    "{{ c.function.arguments | tojson }}{% endfor %}"
    "{% if m.tool_call_id %} for {{ m.tool_call_id }}{% endif %}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def text(tokenizer, turns, options: ChatOptions) -> str:
    return tokenizer.decode(render_chat(tokenizer, turns, options))


@pytest.fixture(scope="module")
def tools_tokenizer(tokenizer):
    own = copy.deepcopy(tokenizer)
    own.chat_template = TOOLS_TEMPLATE
    return own


def test_a_template_that_renders_tools_gets_them_and_the_calls_as_objects(tools_tokenizer):
    rendered = text(tools_tokenizer, HISTORY, ChatOptions(tools=(TOOL,)))
    tools = json.loads(rendered.split("\n")[0].removeprefix("TOOLS="))
    assert tools == [
        {
            "type": "function",
            "function": {
                "name": "get_time",
                "description": "The time.",
                "parameters": {"type": "object", "properties": {}},
            },
        }
    ]
    assert 'CALL get_time {"tz": "UTC"}' in rendered  # arguments as an object
    assert "<tool>12:00 for c1" in rendered
    assert FALLBACK_TOOLS_HOWTO not in rendered and rendered.endswith("<assistant>")


def test_a_template_without_tools_gets_the_fallback_in_a_system_message(tokenizer):
    rendered = text(tokenizer, HISTORY, ChatOptions(tools=(TOOL,)))
    assert rendered.index(FALLBACK_TOOLS_HOWTO) < rendered.index("Time?")
    assert '{"name": "get_time", "description": "The time."' in rendered
    assert '<tool_call>\n{"name": "get_time", "arguments": {"tz": "UTC"}}\n</tool_call>' in rendered
    assert "<tool_response>\n12:00\n</tool_response>" in rendered


def test_continuing_the_last_message_ends_inside_it(tokenizer):
    turns = [ChatTurn("user", "Capital of France?"), ChatTurn("assistant", "It is")]
    rendered = text(tokenizer, turns, ChatOptions(continue_final_message=True))
    assert rendered.endswith("It is")
    with pytest.raises(InvalidArgumentError) as both:
        render_chat(
            tokenizer, turns, ChatOptions(continue_final_message=True, add_generation_prompt=True)
        )
    assert both.value.param == "add_generation_prompt"
    with pytest.raises(InvalidArgumentError) as not_assistant:
        render_chat(tokenizer, turns[:1], ChatOptions(continue_final_message=True))
    assert not_assistant.value.param == "continue_final_message"
    no_cue = text(tokenizer, turns[:1], ChatOptions(add_generation_prompt=False))
    assert not no_cue.rstrip().endswith("<|im_start|>assistant")
