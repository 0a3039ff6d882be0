"""Finds tool calls in a completion's text as it streams.

With tools offered, the model writes each call as

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

(the inference service asks for this format, and enforces it when a call is
required). `ToolCallParser` takes text deltas and returns what an OpenAI stream
shows: plain content, then for each call its header (index, id, name) as soon as
the name is known, then its arguments in pieces as the model writes them. Text
that may be the start of a `<tool_call>` tag is held back until it is decided.
A block that is not a call after all is given back as content.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

# Whether a reply is searched for calls, and in which shape they are told: `tools`
# (`tool_calls`), or the legacy single `function_call` of `functions`.
ToolMode = Literal["none", "tools", "functions"]

OPEN = "<tool_call>"
CLOSE = "</tool_call>"
# The call's head, up to where the arguments' JSON begins.
_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*')


def new_call_id() -> str:
    return f"call_{secrets.token_hex(12)}"


@dataclass(frozen=True)
class Content:
    text: str


@dataclass(frozen=True)
class CallStarted:
    index: int
    id: str
    name: str


@dataclass(frozen=True)
class CallArguments:
    index: int
    text: str


Event = Content | CallStarted | CallArguments


class _JsonValueEnd:
    """Finds where one JSON value ends in text fed piece by piece (strings, escapes and
    nesting tracked; the value is assumed well formed, as the model writes it)."""

    def __init__(self) -> None:
        self.depth = 0
        self.started = False
        self._in_string = False
        self._escaped = False

    def feed(self, text: str) -> int | None:
        """Consumes `text`; the offset just past the value's end, or None if it goes on."""
        for i, ch in enumerate(text):
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                elif ch == "\\":
                    self._escaped = True
                elif ch == '"':
                    self._in_string = False
                    if self.depth == 0:
                        return i + 1
                continue
            if ch.isspace() and not self.started:
                continue
            self.started = True
            if ch == '"':
                self._in_string = True
            elif ch in "{[":
                self.depth += 1
            elif ch in "}]":
                self.depth -= 1
                if self.depth <= 0:
                    return i + 1
            elif self.depth == 0 and ch == ",":
                return i  # a bare number or literal ended
        return None


@dataclass
class ParsedCall:
    id: str
    name: str
    arguments: str = ""


@dataclass
class ToolCallParser:
    """Feed `push()` with text deltas, then call `finish()` once."""

    make_id: Callable[[], str] = new_call_id
    calls: list[ParsedCall] = field(default_factory=list)
    _held: str = ""
    _state: str = "content"  # content | head | arguments | tail
    _value: _JsonValueEnd | None = None

    def push(self, text: str) -> list[Event]:
        events: list[Event] = []
        self._held += text
        while self._step(events):
            pass
        return events

    def finish(self) -> list[Event]:
        """The end of the text: whatever is held back is settled."""
        events: list[Event] = []
        held, self._held = self._held, ""
        if self._state == "content":
            if held and not (self.calls and not held.strip()):
                events.append(Content(held))
        elif self._state == "head":
            # A block cut short or not in the expected order: try it as whole JSON.
            self._whole_block(held, events, closed=False)
        elif self._state == "arguments" and held:
            events.append(self._arguments(held))
        self._state = "content"
        return events

    # ---------------------------------------------------------------- states

    def _step(self, events: list[Event]) -> bool:
        """Advances one state on the held text; True if it should run again."""
        if self._state == "content":
            return self._in_content(events)
        if self._state == "head":
            return self._in_head(events)
        if self._state == "arguments":
            return self._in_arguments(events)
        return self._in_tail()

    def _in_content(self, events: list[Event]) -> bool:
        start = self._held.find(OPEN)
        if start >= 0:
            before, self._held = self._held[:start], self._held[start + len(OPEN) :]
            if before.strip():
                events.append(Content(before.rstrip()))
            self._state = "head"
            return True
        # Hold back a possible start of the tag, and trailing blank space, which is
        # dropped if a call follows (OpenAI sends no content beside calls then).
        keep = _partial_suffix(self._held, OPEN)
        ready = self._held[: len(self._held) - keep]
        releasable = ready.rstrip()
        if releasable:
            events.append(Content(releasable))
        self._held = ready[len(releasable) :] + self._held[len(ready) :]
        return False

    def _in_head(self, events: list[Event]) -> bool:
        match = _HEAD.match(self._held)
        # Only once the arguments' first character is in: blank space after the colon
        # may still be arriving, and belongs to no one.
        if match and match.end() < len(self._held):
            call = ParsedCall(self.make_id(), json.loads(f'"{match.group(1)}"'))
            self.calls.append(call)
            events.append(CallStarted(len(self.calls) - 1, call.id, call.name))
            self._held = self._held[match.end() :]
            self._state, self._value = "arguments", _JsonValueEnd()
            return True
        end = self._held.find(CLOSE)
        if end >= 0:
            block, self._held = self._held[:end], self._held[end + len(CLOSE) :]
            self._whole_block(block, events, closed=True)
            self._state = "content"
            return True
        return False

    def _in_arguments(self, events: list[Event]) -> bool:
        assert self._value is not None
        end = self._value.feed(self._held)
        if end is None:
            if self._held:
                events.append(self._arguments(self._held))
            self._held = ""
            return False
        piece, self._held = self._held[:end], self._held[end:]
        if piece:
            events.append(self._arguments(piece))
        self._state = "tail"
        return True

    def _in_tail(self) -> bool:
        """After the arguments: the object's `}` and the closing tag are dropped."""
        end = self._held.find(CLOSE)
        if end < 0:
            return False
        self._held = self._held[end + len(CLOSE) :]
        self._state = "content"
        return True

    # ---------------------------------------------------------------- helpers

    def _arguments(self, text: str) -> CallArguments:
        self.calls[-1].arguments += text
        return CallArguments(len(self.calls) - 1, text)

    def _whole_block(self, block: str, events: list[Event], *, closed: bool) -> None:
        """A block read whole: a call if it is `{"name", "arguments"}` JSON in any order,
        else content as written."""
        try:
            parsed: Any = json.loads(block)
        except json.JSONDecodeError:
            parsed = None
        if isinstance(parsed, dict) and isinstance(parsed.get("name"), str):
            arguments = parsed.get("arguments", parsed.get("parameters", {}))
            call = ParsedCall(self.make_id(), parsed["name"], json.dumps(arguments))
            self.calls.append(call)
            events.append(CallStarted(len(self.calls) - 1, call.id, call.name))
            events.append(CallArguments(len(self.calls) - 1, call.arguments))
        elif block.strip():
            events.append(Content(f"{OPEN}{block}{CLOSE if closed else ''}"))


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of `text` that begins `tag`."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:size]):
            return size
    return 0


def parse_whole(
    text: str, make_id: Callable[[], str] = new_call_id
) -> tuple[str, list[ParsedCall]]:
    """A finished completion split into its content and its calls."""
    parser = ToolCallParser(make_id)
    events = parser.push(text) + parser.finish()
    content = "".join(e.text for e in events if isinstance(e, Content))
    return content, parser.calls
