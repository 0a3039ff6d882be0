"""The early prompt-length check: a lower bound on tokens from characters alone."""

from __future__ import annotations

import copy
import json
import math
import time

import pytest
from tokenizers import normalizers

from inference_service.engine.engine import longest_token_chars
from inference_service.engine.prompts import encode_text, render_chat
from inference_service.engine.types import ChatTurn, ToolSpec
from inference_service.engine.validation import chat_chars, check_prompt_floor
from inference_service.errors import ContextLengthExceededError, NoModelLoadedError

SAMPLES = [
    "The capital of France is Paris. " * 50,
    " " * 5000,
    "-" * 5000,
    "\n\n\n" * 1000,
    "日本語のテキストと絵文字 🎉🎉 " * 100,
    "<|im_start|>user\nhi<|im_end|>" * 100,
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" * 100,
]


def test_over_the_context_is_refused_with_the_prompts_param():
    # 8192 * 10 characters at no more than 10 per token: at least 8192 tokens.
    with pytest.raises(ContextLengthExceededError) as caught:
        check_prompt_floor(81920, 10, 8192, param="prompt")
    assert caught.value.param == "prompt"
    assert "8192 tokens" in caught.value.message and "at least 8192 tokens" in caught.value.message


def test_a_prompt_that_may_fit_passes():
    check_prompt_floor(81910, 10, 8192, param="messages")  # 8191 tokens at least: may fit


def test_the_floor_rounds_up():
    with pytest.raises(ContextLengthExceededError):
        check_prompt_floor(81911, 10, 8192, param="messages")  # ceil(8191.1) = 8192


def test_chat_chars_counts_trimmed_contents_and_tools():
    turns = [ChatTurn("system", "  be brief  "), ChatTurn("user", "hello\n")]
    params = json.dumps({"type": "object", "properties": {"city": {"type": "string"}}})
    tool = ToolSpec(index=0, name="weather", description=" Weather. ", parameters_json=params)
    solid = len(params) - params.count(" ")
    assert chat_chars(turns) == len("be brief") + len("hello")
    assert chat_chars(turns, [tool]) == 13 + len("weather") + len("Weather.") + solid // 6


def test_padded_tool_parameters_count_little():
    padded = "{" + " " * 100_000 + "}"
    assert chat_chars([], [ToolSpec(index=0, name="f", parameters_json=padded)]) == 1


def test_the_longest_token_bounds_the_real_tokenizer(tokenizer):
    started = time.perf_counter()
    longest = longest_token_chars(tokenizer)
    elapsed = time.perf_counter() - started
    assert longest is not None and 10 <= longest < 1000
    assert elapsed < 5  # about 0.2 s; once per engine, off the event loop
    for text in SAMPLES:
        tokens = len(tokenizer.encode(text, add_special_tokens=False))
        assert tokens >= math.ceil(len(text) / longest), text[:40]


def test_a_normalizing_tokenizer_has_no_bound(tokenizer):
    # Normalizing can shrink text (NFC composes, strip drops), so chars bound nothing.
    normalizing = copy.deepcopy(tokenizer)
    normalizing.backend_tokenizer.normalizer = normalizers.NFC()
    assert longest_token_chars(normalizing) is None


async def test_the_tokenizer_thread_tokenizes_as_the_tokenizer_does(make_engine, tokenizer):
    engine = make_engine()
    turns = [ChatTurn("user", "What is the capital of France?")]
    assert await engine.render_chat_async(turns) == render_chat(tokenizer, turns)
    assert await engine.encode_text_async("Hello world") == encode_text(tokenizer, "Hello world")
    ids = encode_text(tokenizer, "Hello world", add_special_tokens=False)
    assert await engine.encode_texts_async(["Hello world", "x"]) == [
        ids,
        encode_text(tokenizer, "x", add_special_tokens=False),
    ]
    assert await engine.token_strings_async(ids) == [tokenizer.decode([i]) for i in ids]
    assert await engine.decode_async(ids) == "Hello world"


async def test_the_engines_bound_refuses_with_the_context_error(make_engine):
    engine = make_engine()
    await engine.check_prompt_chars(1000, param="prompt")  # may fit
    with pytest.raises(ContextLengthExceededError) as caught:
        await engine.check_prompt_chars(10_000_000, param="messages")
    assert caught.value.param == "messages"


async def test_tokenizing_after_shutdown_says_the_model_is_unloading(make_engine):
    engine = make_engine()
    engine.shutdown()
    with pytest.raises(NoModelLoadedError):
        await engine.encode_text_async("Hello")
