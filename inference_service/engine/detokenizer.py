"""Turns a growing token sequence into text deltas, and finds stop strings.

Decoding the whole completion every step costs O(n) per token; instead only a
short window is decoded (the prefix/read offsets of vLLM and TGI): the tokens
already released plus the new ones, so that tokenizers that merge spaces or
bytes across token boundaries still produce the right text. A delta that ends
in U+FFFD is an incomplete UTF-8 character and waits for the next token.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

_REPLACEMENT = "\ufffd"
# Prompt tokens decoded in front of the first completion token, so a leading
# space or byte merge is rendered as it will be in the full text.
_PROMPT_CONTEXT_TOKENS = 5


class IncrementalDetokenizer:
    """Text of a completion, one token at a time, never re-decoding the whole sequence."""

    def __init__(
        self,
        tokenizer: Any,
        prompt_token_ids: Sequence[int] = (),
        *,
        skip_special_tokens: bool = True,
    ) -> None:
        self._tokenizer = tokenizer
        self._skip_special = skip_special_tokens
        self._ids: list[int] = list(prompt_token_ids[-_PROMPT_CONTEXT_TOKENS:])
        # ids[prefix:read] is already released text kept as context;
        # ids[read:] is not released yet.
        self._prefix = 0
        self._read = len(self._ids)

    def push(self, token_id: int) -> str:
        """Adds a token; returns the text it completes (may be empty)."""
        self._ids.append(token_id)
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        full_text = self._decode(self._ids[self._prefix :])
        if len(full_text) <= len(prefix_text) or full_text.endswith(_REPLACEMENT):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return full_text[len(prefix_text) :]

    def flush(self) -> str:
        """Text of tokens still held back. A character the completion never finished
        (cut by max_tokens mid-character) is dropped, as it is mid-stream: a reply
        never ends in U+FFFD."""
        if self._read == len(self._ids):
            return ""
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        full_text = self._decode(self._ids[self._prefix :])
        self._prefix, self._read = self._read, len(self._ids)
        return full_text[len(prefix_text) :].rstrip(_REPLACEMENT)

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=self._skip_special)


class StopMatcher:
    """Holds back text that may begin a stop string; cuts the text at the first match.

    Released text never contains the start of a match: any match must begin in
    the held-back suffix, because that suffix is the longest one that is a
    prefix of some stop string.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._held = ""
        self.matched: str | None = None

    def push(self, text: str) -> str:
        """Adds text; returns what is safe to release. Check `matched` afterwards."""
        if self.matched is not None:
            return ""
        if not self._stops:
            return text
        buffer = self._held + text
        first = min(
            ((index, stop) for stop in self._stops if (index := buffer.find(stop)) >= 0),
            default=None,
        )
        if first is not None:
            self.matched = first[1]
            self._held = ""
            return buffer[: first[0]]
        keep = self._longest_stop_prefix_suffix(buffer)
        self._held = buffer[len(buffer) - keep :] if keep else ""
        return buffer[: len(buffer) - keep]

    def flush(self) -> str:
        """Releases held-back text when generation ends without a match."""
        held, self._held = self._held, ""
        return "" if self.matched is not None else held

    def _longest_stop_prefix_suffix(self, buffer: str) -> int:
        longest = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(buffer)), longest, -1):
                if buffer.endswith(stop[:size]):
                    longest = size
                    break
        return longest


class CompletionText:
    """Detokenizer and stop matcher together: one call per generated token."""

    def __init__(self, tokenizer: Any, prompt_token_ids: Sequence[int], stops: Sequence[str]):
        self._detokenizer = IncrementalDetokenizer(tokenizer, prompt_token_ids)
        self._stops = StopMatcher(stops)

    @property
    def stopped(self) -> bool:
        return self._stops.matched is not None

    def push(self, token_id: int) -> str:
        return self._stops.push(self._detokenizer.push(token_id))

    def finish(self) -> str:
        """Everything still held back; call once when generation ends for another reason."""
        if self.stopped:
            return ""
        text = self._stops.push(self._detokenizer.flush())
        return text if self.stopped else text + self._stops.flush()
