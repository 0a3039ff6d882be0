"""Pure translation of a streamed chat completion into Responses API events.

Chat chunks go in; events come out in OpenAI's order, numbered by `sequence_number`:

    response.created, response.in_progress,
    per message:  response.output_item.added, response.content_part.added,
                  response.output_text.delta..., response.output_text.done,
                  response.content_part.done, response.output_item.done
    per call:     response.output_item.added, response.function_call_arguments.delta...,
                  response.function_call_arguments.done, response.output_item.done
    response.completed (or response.incomplete when `max_output_tokens` cut it short)

One item is open at a time: a call closes the message before it, and text after a call
(rare: the model wrote between two calls) opens a further message. The non-streamed
response joins all text into one message, so only that case differs between the two.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from openai_bridge.openai_api import responses_translate as rt
from openai_bridge.openai_api.translate import ResponseIds

# The `error` event's code -> the `response.error.code` values the SDK types name.
FAILED_CODES = {"rate_limit_error": "rate_limit_exceeded"}


@dataclass
class _Item:
    """An output item being streamed: a message's text or a call's arguments so far."""

    id: str
    type: str  # message | function_call
    text: str = ""
    call_id: str = ""
    name: str = ""
    status: str = "in_progress"

    def json(self) -> dict[str, Any]:
        if self.type == "message":
            return rt.message_item(self.id, self.text, self.status)
        return rt.call_item(self.call_id, self.name, self.text, self.status)


class ResponseEvents:
    """Feed `push()` each chat chunk, then `finish()` once, or `fail()` on an error."""

    def __init__(self, echoed: dict[str, Any]) -> None:
        self._echoed = echoed
        self._ids: ResponseIds | None = None
        self._sequence = 0
        self._items: list[_Item] = []
        self._open: int | None = None  # the output index of the item being written
        self._calls: dict[int, int] = {}  # a chat tool call's index -> its output index
        self._messages = 0
        self._finish: str | None = None
        self._usage: dict[str, Any] | None = None

    # ---------------------------------------------------------------- input

    def push(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        if self._ids is None:
            # The first chunk names the response; it comes as soon as it is admitted.
            rid = rt.response_id(chunk["id"])
            self._ids = ResponseIds(rid, chunk["created"], chunk["model"])
            events.append(self._lifecycle("response.created", "in_progress"))
            events.append(self._lifecycle("response.in_progress", "in_progress"))
        if chunk.get("usage"):
            self._usage = rt.usage(chunk["usage"])
        for choice in chunk["choices"]:
            delta = choice["delta"]
            if delta.get("content"):
                events += self._text(delta["content"])
            for call in delta.get("tool_calls") or []:
                events += self._call(call)
            if choice["finish_reason"] is not None:
                events += self._finished(choice["finish_reason"])
        if "millm" in chunk:
            # miLLM's per-token activations: an event of their own, after the text they
            # belong to (a call's arguments or held-back text may carry them too).
            events.append(self._event("millm.activations", **chunk["millm"]))
        return events

    def finish(self, completed_at: int) -> list[dict[str, Any]]:
        """The final event, with the whole response."""
        status = rt.status_of(self._finish)
        kind = "response.incomplete" if status == "incomplete" else "response.completed"
        return [self._lifecycle(kind, status, completed_at=completed_at)]

    def fail(self, error: dict[str, Any]) -> list[dict[str, Any]]:
        """An error after the stream began (`error` is the OpenAI error's inner object):
        an `error` event, then `response.failed` with what was written so far."""
        events = [
            self._event("error", code=error["code"], message=error["message"], param=error["param"])
        ]
        if self._ids is not None:
            if self._open is not None:
                self._items[self._open].status = "incomplete"
            failure = {
                "code": FAILED_CODES.get(error["type"], "server_error"),
                "message": error["message"],
            }
            events.append(self._lifecycle("response.failed", "failed", error=failure))
        return events

    # ---------------------------------------------------------------- items

    def _text(self, text: str) -> list[dict[str, Any]]:
        events = []
        if self._open is None or self._items[self._open].type != "message":
            events = self._close("completed") + self._open_message()
        assert self._open is not None
        item = self._items[self._open]
        item.text += text
        events.append(
            self._event("response.output_text.delta", **self._at(), delta=text, logprobs=[])
        )
        return events

    def _call(self, call: dict[str, Any]) -> list[dict[str, Any]]:
        """A chat tool-call delta: its id and name first, then pieces of its arguments."""
        events = []
        function = call.get("function") or {}
        if "id" in call:
            events += self._close("completed")
            self._calls[call["index"]] = self._open = len(self._items)
            self._items.append(
                _Item(
                    id=rt.call_item_id(call["id"]),
                    type="function_call",
                    call_id=call["id"],
                    name=function.get("name", ""),
                )
            )
            events.append(self._added())
        if function.get("arguments"):
            index = self._calls[call["index"]]
            self._items[index].text += function["arguments"]
            events.append(
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=self._items[index].id,
                    output_index=index,
                    delta=function["arguments"],
                )
            )
        return events

    def _finished(self, reason: str) -> list[dict[str, Any]]:
        self._finish = reason
        # A reply with neither text nor calls is still one (empty) message.
        events = self._open_message() if not self._items else []
        return events + self._close(rt.status_of(reason))

    def _open_message(self) -> list[dict[str, Any]]:
        self._open = len(self._items)
        self._items.append(
            _Item(id=rt.message_id(self._ids_now().id, self._messages), type="message")
        )
        self._messages += 1
        return [
            self._added(),
            self._event("response.content_part.added", **self._at(), part=rt.output_text("")),
        ]

    def _added(self) -> dict[str, Any]:
        assert self._open is not None
        item = self._items[self._open].json()
        if item["type"] == "message":
            item["content"] = []  # the part is announced by its own event
        return self._event("response.output_item.added", output_index=self._open, item=item)

    def _close(self, status: str) -> list[dict[str, Any]]:
        if self._open is None:
            return []
        index, item = self._open, self._items[self._open]
        item.status = status
        if item.type == "message":
            events = [
                self._event("response.output_text.done", **self._at(), text=item.text, logprobs=[]),
                self._event(
                    "response.content_part.done", **self._at(), part=rt.output_text(item.text)
                ),
            ]
        else:
            events = [
                self._event(
                    "response.function_call_arguments.done",
                    item_id=item.id,
                    output_index=index,
                    arguments=item.text,
                )
            ]
        self._open = None
        return [
            *events,
            self._event("response.output_item.done", output_index=index, item=item.json()),
        ]

    # ---------------------------------------------------------------- helpers

    def _ids_now(self) -> ResponseIds:
        assert self._ids is not None, "the first chunk names the response"
        return self._ids

    def _at(self) -> dict[str, Any]:
        """Where the open message's text part is."""
        assert self._open is not None
        return {
            "item_id": self._items[self._open].id,
            "output_index": self._open,
            "content_index": 0,
        }

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return event

    def _lifecycle(self, kind: str, status: str, **extra: Any) -> dict[str, Any]:
        done = status != "in_progress"
        response = rt.response_object(
            self._ids_now(),
            self._echoed,
            status=status,
            output=[item.json() for item in self._items] if done else [],
            usage=self._usage if done else None,
            **extra,
        )
        return self._event(kind, response=response)
