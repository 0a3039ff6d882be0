"""Constrained decoding: the tokens a grammar allows next, as a mask over the logits.

The grammar engine is llguidance (chosen by measurement, see
bench/grammar_engines.py): a JSON Schema or Lark grammar compiles in about a
millisecond with no per-schema precomputation, and the mask for SmolLM2's
49,152 tokens costs about 0.2 ms per step on this CPU, under 1 % of a decode
step. It also composes literal text and JSON Schemas in one grammar, which is
what tool calls need (`<tool_call>` framing around per-tool argument schemas).

A `Grammar` is compiled once per request on the caller's thread (so a bad
schema is a 400 before admission); each sequence then owns a `TokenMask`, used
on the worker lane only.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import llguidance
import llguidance.hf
import llguidance.torch
import numpy as np
import torch

from inference_service.engine.types import (
    JsonSchema,
    OutputConstraint,
    ToolCalls,
    ToolSpec,
)
from inference_service.errors import InvalidArgumentError

log = logging.getLogger(__name__)

# JSON is written on one line the way json.dumps writes it ({"a": 1, "b": [2]}):
# small models write that best, and free whitespace would let a model pad forever.
_JSON_STYLE: Any = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
TOOL_CALL_OPEN = "<tool_call>\n"
TOOL_CALL_CLOSE = "\n</tool_call>"


@dataclass(frozen=True)
class Grammar:
    """A validated grammar (llguidance's serialised form) for one model's tokenizer."""

    text: str
    tokenizer: llguidance.LLTokenizer

    def new_mask(self) -> TokenMask:
        """A fresh matcher at the grammar's start, for one sequence."""
        return TokenMask(llguidance.LLMatcher(self.tokenizer, self.text), self.tokenizer)


class GrammarCompiler:
    """Compiles constraints against one model's tokenizer."""

    def __init__(self, tokenizer: Any, vocab_size: int) -> None:
        # The mask must cover every logit: some models pad the output layer beyond
        # the tokenizer's vocabulary.
        self._tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size)

    def compile(
        self, constraint: OutputConstraint, tools: Sequence[ToolSpec] = (), *, param: str
    ) -> Grammar:
        """The grammar for `constraint`; InvalidArgumentError naming `param` if it
        cannot be built (a malformed or unsupported schema)."""
        grammar = _grammar(constraint, tools, param)
        failed, messages = llguidance.LLMatcher.validate_grammar_with_warnings(
            grammar, self._tokenizer
        )
        if failed:
            raise InvalidArgumentError(
                f"The grammar for `{param}` cannot be compiled: {'; '.join(messages)}",
                param=param,
            )
        return Grammar(grammar, self._tokenizer)


class TokenMask:
    """One sequence's position in its grammar."""

    def __init__(self, matcher: llguidance.LLMatcher, tokenizer: llguidance.LLTokenizer) -> None:
        self._matcher = matcher
        self._bitmask = llguidance.torch.allocate_token_bitmask(1, tokenizer.vocab_size)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:  # [V] -> [V], disallowed = -inf
        llguidance.torch.fill_next_token_bitmask(self._matcher, self._bitmask, 0)
        # Unpacked and applied in numpy, not with llguidance's torch helper (it goes
        # through torch.compile: seconds on first use and a C++ compiler at run time)
        # nor torch elementwise ops (on a busy 2-core machine their thread pool waits
        # for a core: 10-40 ms where numpy's single thread takes 0.3 ms).
        words = self._bitmask[0].numpy().view(np.uint8)
        allowed = np.unpackbits(words, bitorder="little")[: logits.shape[-1]].astype(bool)
        if logits.device.type == "cpu":
            masked = logits.numpy().copy()  # [V]
            masked[~allowed] = -np.inf
            return torch.from_numpy(masked)
        mask = torch.from_numpy(allowed).to(logits.device)
        return logits.masked_fill(~mask, float("-inf"))

    def accept(self, token_id: int) -> None:
        # A token the mask allowed is always accepted. A refusal would mean the engine
        # and its own mask disagree; the matcher then reports itself stopped, so the
        # sequence ends, and the log says why.
        if not self._matcher.consume_token(token_id):
            log.warning("grammar refused token %d: %s", token_id, self._matcher.get_error())

    @property
    def finished(self) -> bool:
        """The grammar is complete and allows nothing more (not even more JSON)."""
        return self._matcher.is_stopped()


# ---------------------------------------------------------------- grammars


def _json(schema: dict[str, Any]) -> str:
    return json.dumps({**schema, "x-guidance": _JSON_STYLE})


def close_objects(schema: Any) -> Any:
    """The schema with every object that lists its properties, and says nothing of
    others, closed to them (`additionalProperties: false`), as OpenAI's strict outputs
    and xgrammar's strict mode read schemas. Clients rarely write it (pydantic and
    LangChain leave it out), and an open object lets a small model invent keys until
    max_tokens runs out. Members of `allOf` stay open: closing them would refuse each
    other's properties."""
    if isinstance(schema, list):
        return [close_objects(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    closed = {
        key: value if key == "allOf" else _close_children(key, value)
        for key, value in schema.items()
    }
    lists_properties = "properties" in schema or schema.get("type") == "object"
    if (
        lists_properties
        and "properties" in schema
        and not (
            "additionalProperties" in schema
            or "patternProperties" in schema
            or "unevaluatedProperties" in schema
        )
    ):
        closed["additionalProperties"] = False
    return closed


# Keywords whose value is a map of names to schemas, not a schema itself.
_SCHEMA_MAPS = frozenset({"properties", "$defs", "definitions", "patternProperties"})
# Keywords whose value is a schema or a list of schemas.
_SCHEMA_VALUES = frozenset(
    {"items", "prefixItems", "anyOf", "oneOf", "additionalProperties", "not", "if", "then", "else"}
)


def _close_children(key: str, value: Any) -> Any:
    if key in _SCHEMA_MAPS and isinstance(value, dict):
        return {name: close_objects(sub) for name, sub in value.items()}
    if key in _SCHEMA_VALUES:
        return close_objects(value)
    return value


def _schema(text: str, param: str) -> dict[str, Any]:
    try:
        schema = json.loads(text) if text else {"type": "object"}
    except json.JSONDecodeError as exc:
        raise InvalidArgumentError(
            f"`{param}` is not valid JSON: {exc.msg}.", param=param
        ) from None
    if isinstance(schema, bool):
        schema = {} if schema else {"not": {}}
    if not isinstance(schema, dict):
        raise InvalidArgumentError(f"`{param}` must be a JSON Schema object.", param=param)
    return close_objects(schema)


def _grammar(constraint: OutputConstraint, tools: Sequence[ToolSpec], param: str) -> str:
    if isinstance(constraint, ToolCalls):
        return _tool_call_grammar(constraint, tools, param)
    # JsonObject is the empty schema text, which `_schema` reads as any object.
    schema_json = constraint.schema_json if isinstance(constraint, JsonSchema) else ""
    return llguidance.LLMatcher.grammar_from_json_schema(
        json.dumps(_schema(schema_json, param)), defaults=_JSON_STYLE
    )


def _tool_call_grammar(constraint: ToolCalls, tools: Sequence[ToolSpec], param: str) -> str:
    """Lark: one call (or, when parallel, several) of the offered tools, each framed
    as `<tool_call>\\n{"name": ..., "arguments": ...}\\n</tool_call>`."""
    offered = [t for t in tools if not constraint.name or t.name == constraint.name]
    if not offered:
        which = f"a tool named `{constraint.name}`" if constraint.name else "any tool"
        raise InvalidArgumentError(
            f"`tool_choice` asks for {which}, but `tools` does not offer it.", param="tool_choice"
        )
    rules = []
    for i, tool in enumerate(offered):
        arguments = _schema(tool.parameters_json, f"tools[{tool.index}].function.parameters")
        call = {
            "type": "object",
            "properties": {"name": {"const": tool.name}, "arguments": arguments},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        rules.append(f"call_{i}: %json {_json(call)}")
    calls = " | ".join(f"call_{i}" for i in range(len(offered)))
    # Parallel calls: at most as many as tools offered. Made to call, small models
    # otherwise repeat the same call until max_tokens runs out.
    more = ' ("\\n" framed)?' * (len(offered) - 1) if constraint.parallel else ""
    return "\n".join(
        [
            f"start: framed{more}",
            f"framed: {json.dumps(TOOL_CALL_OPEN)} call {json.dumps(TOOL_CALL_CLOSE)}",
            f"call: {calls}",
            *rules,
        ]
    )
