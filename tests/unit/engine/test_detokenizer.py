"""Incremental text: multi-byte characters, held-back stop prefixes, cut at the stop."""

from __future__ import annotations

import pytest

from inference_service.engine.detokenizer import (
    CompletionText,
    IncrementalDetokenizer,
    StopMatcher,
)

TEXT = "Hi 😀 there! 👍🏽 Ça va? 日本語のテキスト, done."


def test_streamed_text_equals_full_decode_and_never_shows_partial_characters(tokenizer) -> None:
    ids = tokenizer.encode(TEXT, add_special_tokens=False)
    # The emoji really are split over several byte tokens.
    assert len(ids) > len(TEXT.split())
    detokenizer = IncrementalDetokenizer(tokenizer)
    deltas = [detokenizer.push(i) for i in ids]
    deltas.append(detokenizer.flush())
    assert "".join(deltas) == tokenizer.decode(ids) == TEXT
    assert not any("\ufffd" in d for d in deltas)
    assert "" in deltas  # some bytes were held back until their character completed


def test_decoding_after_a_prompt_keeps_leading_spaces(tokenizer) -> None:
    prompt = tokenizer.encode("The answer is", add_special_tokens=False)
    completion = tokenizer.encode(" forty two", add_special_tokens=False)
    detokenizer = IncrementalDetokenizer(tokenizer, prompt)
    assert "".join(detokenizer.push(i) for i in completion) == " forty two"


def test_flush_drops_a_character_that_never_completed(tokenizer) -> None:
    emoji_ids = tokenizer.encode("a😀", add_special_tokens=False)
    detokenizer = IncrementalDetokenizer(tokenizer)
    assert "".join(detokenizer.push(i) for i in emoji_ids[:-1]) == "a"
    assert detokenizer.flush() == ""


@pytest.mark.parametrize(
    ("chunks", "stops", "released", "matched"),
    [
        (["Hello wor", "ld END", " more"], ["END"], "Hello world ", "END"),
        (["ab", "c<", "|st", "op|>tail"], ["<|stop|>"], "abc", "<|stop|>"),
        (["x <", "y"], ["<|stop|>"], "x <y", None),  # a false start is released later
        (["one two"], ["two", "one"], "", "one"),  # the earliest match wins
        (["aaa", "b"], ["aab"], "a", "aab"),
    ],
)
def test_stop_matcher(
    chunks: list[str], stops: list[str], released: str, matched: str | None
) -> None:
    matcher = StopMatcher(stops)
    out = "".join(matcher.push(c) for c in chunks) + matcher.flush()
    assert out == released
    assert matcher.matched == matched


def test_stop_prefix_is_held_back_until_decided() -> None:
    matcher = StopMatcher(["STOP"])
    assert matcher.push("go ST") == "go "
    assert matcher.push("O") == ""
    assert matcher.push("RM") == "STORM"


def test_stop_split_across_real_tokens(tokenizer) -> None:
    text = "The quick brown fox jumps over the lazy dog."
    ids = tokenizer.encode(text, add_special_tokens=False)
    completion = CompletionText(tokenizer, [], stops=["wn fox ju"])
    released = ""
    for token_id in ids:
        released += completion.push(token_id)
        if completion.stopped:
            break
    assert completion.stopped
    assert released == "The quick bro"
    assert completion.finish() == ""


def test_finish_without_stop_releases_everything(tokenizer) -> None:
    ids = tokenizer.encode("see you lat", add_special_tokens=False)
    completion = CompletionText(tokenizer, [], stops=["later!"])
    released = "".join(completion.push(i) for i in ids)
    assert released == "see you "
    assert completion.finish() == "lat"
    assert not completion.stopped
